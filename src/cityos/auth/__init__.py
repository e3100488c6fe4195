"""Identity: who is calling (API keys, local users, OpenID Connect bearer tokens) as a Principal."""
