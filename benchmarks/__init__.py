"""Benchmarks (issue 8): figures side by side with baselines that do the least possible work, measured in
the same run and printed as one table. `make bench` runs `python -m benchmarks`. Never a pass/fail test."""
