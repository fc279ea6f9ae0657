"""The benchmark suite (issue 7): `tests/sandbox/enter .venv/bin/python -m bench.run` writes docs/benchmarks.md.

One module per scenario (calls, grants, scale, footprint, fleet); stats.py holds the shared numbers, report.py the
Markdown, plot.py a dependency-free PNG renderer.
"""
