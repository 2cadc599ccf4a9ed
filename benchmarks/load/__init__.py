"""`make load`: a mixed workload against the local stack or a deployed API, driven by locust
(`locustfile.py`), run and summarized by `python -m benchmarks.load`. A dev-only tool: nothing here is
imported by the handlers or the core."""
