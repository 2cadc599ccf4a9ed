"""Benchmarks: figures side by side with baselines that do the least possible work, measured in the same
run and printed as one table, so a figure is read against what the machine allows, not in isolation.
`make bench` runs `python -m benchmarks`. Never a pass/fail test."""
