"""Plain code with no Dagster in it: schemas, parsers, bar maths, engine clients, the local stack."""
