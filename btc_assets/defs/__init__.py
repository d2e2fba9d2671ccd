"""Everything Dagster registers, one folder per stage."""
