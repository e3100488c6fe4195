"""Map data for the console: vector tiles of the entities (tiles.py) and the live change stream
(changes.py), both read through the trust layer like any query."""
