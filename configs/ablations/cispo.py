"""Loss ablation: CISPO (MiniMax 2025, "MiniMax-M1", sec. 3.1).

    python -m experiments.train --config configs/ablations/cispo.py --workdir runs/abl-cispo
    python -m experiments.train --config configs/ablations/cispo.py:countdown --workdir runs/abl-cispo-countdown

The importance weight is clipped and detached, and multiplies the token log-prob, so no token's gradient is dropped
by clipping; no lower bound, upper cap 5 (clip_high 4.0: grpo_jax.config.PAPER_CLIP_BOUNDS); token-level
normalisation over the batch (aggregation token_mean) as in the paper. Wall time: as configs/ablations/grpo.py.
"""

from grpo_jax import config as config_lib

from configs.ablations import ARGS, base_config  # noqa: F401


def get_config(arg=None):
    c = base_config(arg, name="cispo")
    c.loss.variant = "cispo"
    c.loss.clip_low, c.loss.clip_high = config_lib.PAPER_CLIP_BOUNDS["cispo"]
    c.loss.aggregation = "token_mean"
    return c
