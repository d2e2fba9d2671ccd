"""The data contracts: trade schema, bar maths, line protocol (standard library only)."""
