"""The model path: a leakage-free training set from the minute bars, the price models and their evaluation."""
