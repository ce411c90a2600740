"""``python -m benchmarks SCENARIO [options]``: every benchmark, one command (benchmarks/cli.py)."""

from benchmarks.cli import main

main()
