"""Plot the learning curves of any workdir: `python -m experiments.plot DIR [DIR ...] [--out OUT]`.

Writes reward, held-out accuracy, KL and completion length vs step as PNGs to DIR/plots (or OUT/<name of DIR>)
and prints their paths.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", help="run directories holding metrics.jsonl")
    parser.add_argument("--out", default=None, help="write to OUT/<workdir name> instead of DIR/plots")
    args = parser.parse_args(argv)
    from grpo_jax.plotting import plot_workdir

    status = 0
    for workdir in args.workdirs:
        if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
            print(f"error: {workdir}: no metrics.jsonl (not a run directory)", file=sys.stderr)
            status = 2
            continue
        out = os.path.join(args.out, os.path.basename(os.path.abspath(workdir))) if args.out else None
        for path in plot_workdir(workdir, out):
            print(path)
    return status


if __name__ == "__main__":
    sys.exit(main())
