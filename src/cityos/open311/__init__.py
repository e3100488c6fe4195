"""Open311 GeoReport v2 (docs/citizens.md): citizens' reports as NGSI-LD Open311ServiceRequest
entities written through the one write path, so they are queryable, subscribable and on the map.

services.py  the service catalogue, declared as data (TOML)
media.py     photo checks (Pillow), EXIF stripping, the media directory
model.py     request entity bodies, their Open311 view, the status lifecycle
service.py   the core: submit, search, status changes, duplicates, nearest asset
render.py    JSON and XML renderings of the spec's documents and errors
http.py      thin Starlette handlers under /open311/v2 and /cityos/v1/open311
"""
