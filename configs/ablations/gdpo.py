"""Advantage ablation: GDPO (Liu et al. 2026, "GDPO: Group reward-Decoupled Normalization Policy Optimization for
Multi-reward RL Optimization", arXiv 2601.05242).

    python -m experiments.train --config configs/ablations/gdpo.py --workdir runs/abl-gdpo
    python -m experiments.train --config configs/ablations/gdpo.py:countdown --workdir runs/abl-gdpo-countdown

Each reward is normalised within its group separately, the normalised rewards are summed by their weights and the
sum is normalised over the batch (loss.advantage_estimator 'gdpo', grpo_jax/advantages/gdpo.py), so one reward
cannot flatten another's signal. GDPO needs two or more rewards: no arg adds DAPO's soft overlong penalty
(max_length = rollout.max_new_tokens, buffer a quarter of it) to the demo's arithmetic correctness reward, the
paper's correctness + length setting; 'countdown' keeps the Countdown config's format + correctness rewards.
Everything else as configs/ablations/grpo.py (same wall time).
"""

from configs.ablations import ARGS, base_config  # noqa: F401


def get_config(arg=None):
    c = base_config(arg, name="gdpo")
    c.loss.advantage_estimator = "gdpo"
    if not arg:
        c.rewards = {**c.rewards.to_dict(), "overlong": 1.0}
        # References: --config.rollout.max_new_tokens=N moves the penalty's window with it.
        max_new = c.rollout.get_ref("max_new_tokens")
        c.reward_options = {"overlong": {"max_length": max_new, "buffer_length": max_new // 4}}
    return c
