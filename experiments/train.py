"""Train one experiment: `python -m experiments.train --config configs/X.py --workdir DIR [--config.k=v ...]`.

  --config configs/default.py[:arg]   the experiment file and its get_config arg (e.g. configs/countdown.py:3b)
  --config.a.b=value                  override any config key (an unknown key or a bad value is an error)
  --workdir DIR                       metrics.jsonl, TensorBoard events, checkpoints/, plots/, export/
  --coordinator_address HOST:PORT --num_processes N --process_id I
                                      multi-host: start jax.distributed (also started automatically on a multi-host
                                      TPU slice, SLURM, Open MPI, or when JAX_COORDINATOR_ADDRESS is set)

Running the same command again resumes from the last checkpoint in DIR. SIGTERM saves a checkpoint at the next
step boundary and exits 0. A bad input (unknown config key or value, missing model, group_size < 2, a batch that
does not divide over the mesh, a workdir holding another config's run) is one line on stderr and exit status 2;
set GRPO_JAX_TRACEBACK=1 to see the traceback.
"""

from __future__ import annotations

import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run (resumed when it holds one).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")

EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT):
    """One line on stderr, no traceback, non-zero exit."""
    line = " ".join(str(message).split())
    print(f"error: {line}", file=sys.stderr, flush=True)
    sys.exit(code)


def _traceback_wanted() -> bool:
    return os.environ.get("GRPO_JAX_TRACEBACK", "") not in ("", "0")


def _unknown_key_message(key: str, argv) -> str:
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    culprit = next((o for o in overrides if key in o[len("--config."):].split(".")), None)
    where = f" in {culprit}" if culprit else ""
    return f"unknown config key {key!r}{where}; the config file defines the keys that may be overridden"


def _flag_prefix(message: str) -> str:
    match = re.match(r"(flag --config=\S+): ", message)
    return f"{match.group(1)}: " if match else ""


def parse_flags(argv):
    """absl's parser, but a bad flag / config key / config value is one line on stderr."""
    try:
        rest = flags.FLAGS(argv)
    except (flags.Error, ValueError, KeyError, AttributeError, TypeError, OSError) as e:
        if _traceback_wanted():
            raise
        message = str(e).strip() or type(e).__name__
        if "Traceback (most recent call last)" in message:  # get_config raised: keep its own message
            lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
            message = f"{_flag_prefix(message)}{lines[-1]}"
        quoted = re.fullmatch(r"""["']*([^"']+)["']*""", message)
        if isinstance(e, (KeyError, AttributeError)) and quoted:
            message = _unknown_key_message(quoted.group(1), argv)
        fail(message)
    global _QUIET
    _QUIET = not flags.FLAGS["verbosity"].present  # absl turns INFO on after parsing; orbax is chatty at INFO
    return rest


_QUIET = True


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; use --config.key=value to change the config")
    if _CONFIG.value is None:
        fail("--config is required, e.g. --config configs/default.py")
    if not _WORKDIR.value:
        fail("--workdir is required (the directory of the run)")
    if _QUIET:
        from absl import logging
        logging.set_verbosity(logging.WARNING)
    try:
        from grpo_jax import distributed, runner

        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        result = runner.run(_CONFIG.value, _WORKDIR.value)
    except (ValueError, OSError) as e:  # CheckpointError, WorkdirMismatchError, config errors are ValueErrors
        if _traceback_wanted():
            raise
        fail(f"{e}" if str(e) else type(e).__name__)
    if distributed.is_main():
        _summary(result)


def _summary(result) -> None:
    if result.status == "preempted":
        print(f"preempted after step {result.step}; checkpoint saved in {result.workdir}/checkpoints "
              "(run the same command to resume)", flush=True)
        return
    print(f"done: {result.step} steps in {result.workdir}", flush=True)
    if result.first_eval and result.last_eval and result.first_eval is not result.last_eval:
        print(f"held-out accuracy: {result.first_eval['eval/accuracy']:.3f} -> "
              f"{result.last_eval['eval/accuracy']:.3f}", flush=True)
    if result.plots:
        print(f"plots: {os.path.dirname(result.plots[0])}", flush=True)
    if result.export:
        print(f"HF export: {result.export}", flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
