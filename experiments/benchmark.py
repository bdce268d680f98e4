"""Deprecated: the benchmarks moved to their own package. `python -m experiments.benchmark X ...` runs
`python -m benchmarks X ...` (from a source checkout, after `pip install -e ".[bench]"`)."""

import sys

if __name__ == "__main__":
    print("experiments.benchmark is deprecated: use `python -m benchmarks` (same subcommands and options)",
          file=sys.stderr)
    try:
        from benchmarks.__main__ import main  # the one import of the harness outside benchmarks/ (tested)
    except ImportError:
        sys.exit("error: the benchmark harness is benchmarks/ of a source checkout: run it there")
    main(sys.argv[1:], prog="python -m experiments.benchmark")
