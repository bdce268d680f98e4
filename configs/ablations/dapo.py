"""Loss ablation: DAPO (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale").

    python -m experiments.train --config configs/ablations/dapo.py --workdir runs/abl-dapo
    python -m experiments.train --config configs/ablations/dapo.py:countdown --workdir runs/abl-dapo-countdown

Token-level loss over the whole batch (aggregation token_mean), clip-higher (ratio in [0.8, 1.28]), dynamic
sampling as a filter (groups whose rewards are all equal leave the update), the soft overlong penalty as an extra
reward (max_length = rollout.max_new_tokens, buffer a quarter of it), and no KL term. Wall time: as
configs/ablations/grpo.py.
"""

from configs.ablations import ARGS, base_config  # noqa: F401


def get_config(arg=None):
    c = base_config(arg, name="dapo")
    c.loss.aggregation = "token_mean"
    c.loss.clip_low, c.loss.clip_high = 0.2, 0.28
    c.loss.drop_zero_std_groups = True
    c.loss.kl_beta = 0.0
    c.rewards = {**c.rewards.to_dict(), "overlong": 1.0}
    # References: --config.rollout.max_new_tokens=N moves the penalty's window with it.
    max_new = c.rollout.get_ref("max_new_tokens")
    c.reward_options = {"overlong": {"max_length": max_new, "buffer_length": max_new // 4}}
    return c
