"""CityOS: an open smart-city data platform built around an ETSI NGSI-LD context broker."""

__version__ = "0.1.0"
