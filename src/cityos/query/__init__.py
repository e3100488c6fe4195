"""Query languages of NGSI-LD that CityOS evaluates itself (the `q` language, clause 4.9)."""
