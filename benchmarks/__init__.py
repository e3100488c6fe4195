"""CityOS benchmarks: the broker against its own ceilings, side by side, in one run.

python -m benchmarks            the full run (7 to 10 minutes on 2 cores)
python -m benchmarks --smoke    tiny sizes, every scenario once (run by `make test`)

See docs/performance.md for the latest table and how to read it.
"""
