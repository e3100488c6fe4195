"""The open-data catalogue (docs/open-data.md): datasets the city declares public, described from the
live data as DCAT-AP 3 and through a CKAN-compatible read API."""
