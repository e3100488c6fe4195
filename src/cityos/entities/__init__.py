"""NGSI-LD entity rules: parsing and validation, merge semantics, representations. No HTTP here."""
