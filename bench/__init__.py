"""Benchmarks (not tests): `python -m lodestore.bench NAME [--quick]` prints one JSON object with the figures, the baseline
measured in the same run, `ratio` and `target`."""
