"""City indicators (issue 17): declared as data, computed in the database, written as
KeyPerformanceIndicator entities with their provenance (docs/indicators.md)."""
