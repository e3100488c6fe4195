"""Citizen services (issue 19): a JSON API under /city/api/ and a mobile page at /city/, both
clients of the public NGSI-LD API as the anonymous caller, so only what the policies make public."""
