"""CityOS benchmarks: the broker against its own ceilings, side by side, in one run, on SQLite and PostgreSQL.

python -m benchmarks                    the full run, on both back-ends: the main table, then the scaling table
python -m benchmarks --smoke            tiny sizes, every scenario once on each back-end (run by `make test`)
python -m benchmarks --backend sqlite   one back-end (sqlite, postgres, or both)
python -m benchmarks --scale 10000,100000,1000000   the scaling table only (scale.py)
python -m benchmarks --url http://host:port         load a server started elsewhere (a bigger machine)

See docs/performance.md for the latest tables and how to read them.
"""
