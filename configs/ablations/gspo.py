"""Loss ablation: GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization").

    python -m experiments.train --config configs/ablations/gspo.py --workdir runs/abl-gspo
    python -m experiments.train --config configs/ablations/gspo.py:countdown --workdir runs/abl-gspo-countdown

Sequence-level importance ratio (the geometric mean of the token ratios) clipped to the paper's small range
[1 - 3e-4, 1 + 4e-4] (sec. 5.1). Everything else as configs/ablations/grpo.py (same wall time).
"""

from grpo_jax import config as config_lib

from configs.ablations import ARGS, base_config  # noqa: F401


def get_config(arg=None):
    c = base_config(arg, name="gspo")
    c.loss.variant = "gspo"
    c.loss.clip_low, c.loss.clip_high = config_lib.PAPER_CLIP_BOUNDS["gspo"]
    return c
