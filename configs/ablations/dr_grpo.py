"""Loss ablation: Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective").

    python -m experiments.train --config configs/ablations/dr_grpo.py --workdir runs/abl-dr_grpo
    python -m experiments.train --config configs/ablations/dr_grpo.py:countdown --workdir runs/abl-dr_grpo-countdown

GRPO without its two biases: token sums divided by a constant (rollout.max_new_tokens) instead of each sequence's
length (aggregation seq_mean_token_sum_norm), and advantages not divided by the group std (advantage_scale none).
Wall time: as configs/ablations/grpo.py.
"""

from configs.ablations import ARGS, base_config  # noqa: F401


def get_config(arg=None):
    c = base_config(arg, name="dr_grpo")
    c.loss.aggregation = "seq_mean_token_sum_norm"
    c.loss.advantage_scale = "none"
    return c
