"""Access policies: who may do what on which data, compiled to predicates and SQL prefilters."""
