"""Experiment configs: one experiment per file, each with `get_config(arg=None)` (big_vision style).

    python -m experiments.train --config configs/default.py --workdir runs/demo
    python -m experiments.train --config configs/countdown.py:0.5b --workdir runs/countdown --config.seed=1
"""
