"""Loss ablation: GRPO as in DeepSeekMath (Shao et al. 2024), the reference point of the other files.

    python -m experiments.train --config configs/ablations/grpo.py --workdir runs/abl-grpo
    python -m experiments.train --config configs/ablations/grpo.py:countdown --workdir runs/abl-grpo-countdown

Token-level ratio clipped to [0.8, 1.2], per-sequence token mean then mean over sequences, group-std advantages,
k3 KL with beta 0.04. Wall time: as configs/default.py:one_digit (no arg, 2-core CPU) or configs/countdown.py:0.5b.
"""

from configs.ablations import ARGS, base_config  # noqa: F401


def get_config(arg=None):
    c = base_config(arg, name="grpo")
    c.loss.variant = "grpo"
    return c
