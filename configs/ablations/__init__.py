"""Loss ablations: one base experiment, one file per loss variant, so an ablation is one command per file.

    python -m experiments.train --config configs/ablations/grpo.py --workdir runs/abl-grpo
    python -m experiments.train --config configs/ablations/dr_grpo.py --workdir runs/abl-dr_grpo
    ... (dapo, gspo, cispo)

`base_config(arg)` is the shared experiment; each file changes only `loss` (DAPO also adds its overlong reward):
  - no arg: the former CPU demo's experiment (configs/default.py:one_digit: SmolLM2-135M-Instruct on one-digit
    `a OP b`, OP in + - * /, 200 problems held out), with kl_beta 0.04 so the KL switch matters; runs on a laptop;
  - 'countdown': Qwen2.5-0.5B-Instruct on Countdown (configs/countdown.py:0.5b), for a GPU/TPU.
"""

from __future__ import annotations

ARGS = ("", "countdown")


def base_config(arg: str | None = None, *, name: str = "ablation"):
    arg = arg or ""
    if arg not in ARGS:
        raise ValueError(f"configs/ablations/{name}.py: unknown arg {arg!r}; valid: {ARGS}")
    if arg == "countdown":
        from configs import countdown
        return countdown.get_config("0.5b")
    from configs import default
    c = default.get_config("one_digit")
    c.loss.kl_beta = 0.04
    return c
