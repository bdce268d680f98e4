"""Loss ablation: SAPO (Gao et al. 2025, "Soft Adaptive Policy Optimization", arXiv 2511.20347).

    python -m experiments.train --config configs/ablations/sapo.py --workdir runs/abl-sapo
    python -m experiments.train --config configs/ablations/sapo.py:countdown --workdir runs/abl-sapo-countdown

PPO's hard clip replaced by a smooth gate on the token ratio, sigmoid(tau (r - 1)) * 4 / tau, with the paper's
temperatures tau_pos = 1.0 for positive and tau_neg = 1.05 for negative advantages
(`--config.loss.sapo_tau_pos=...`, `--config.loss.sapo_tau_neg=...`; see grpo_jax/losses/sapo.py). Token mean per
sequence, then the mean over sequences, as in the paper. Everything else as configs/ablations/grpo.py (same wall
time).
"""

from configs.ablations import ARGS, base_config  # noqa: F401


def get_config(arg=None):
    c = base_config(arg, name="sapo")
    c.loss.variant = "sapo"
    c.loss.sapo_tau_pos, c.loss.sapo_tau_neg = 1.0, 1.05
    c.loss.aggregation = "seq_mean_token_mean"
    return c
