"""The NGSI-LD HTTP API: handlers parse the request, call the core, and render the result."""
