"""CityOS benchmarks: the broker against its own ceilings, side by side, in one run, on SQLite and PostgreSQL.

python -m benchmarks                    the full run, on both back-ends
python -m benchmarks --smoke            tiny sizes, every scenario once on each back-end (run by `make test`)
python -m benchmarks --backend sqlite   one back-end (sqlite, postgres, or both)

See docs/performance.md for the latest tables and how to read them.
"""
