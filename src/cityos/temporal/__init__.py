"""Temporal evolution of entities (history): parsing, rendering, query parameters and recording."""
