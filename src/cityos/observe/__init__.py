"""Observability: Prometheus metrics, the access log and optional OpenTelemetry traces
(docs/operations.md)."""
