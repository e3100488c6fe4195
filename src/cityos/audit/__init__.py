"""The tamper-evident audit trail: a hash-chained, signed record of who did what."""
