"""Operations: the API description (/openapi.json, /docs) and the health checks (/health/...)."""
