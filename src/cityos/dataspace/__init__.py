"""The data channel between cities: keys, partners, offers, agreements, signed exchanges (docs/federation.md)."""
