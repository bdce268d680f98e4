"""Loss ablation: the exact KL to the reference (kl_estimator 'full', grpo_jax/losses/kl_full.py) in place of
GRPO's sampled k3 estimate (Shao et al. 2024, "DeepSeekMath", eq. 4; Schulman 2020, "Approximating KL Divergence").

    python -m experiments.train --config configs/ablations/kl_full.py --workdir runs/abl-kl_full
    python -m experiments.train --config configs/ablations/kl_full.py:countdown --workdir runs/abl-kl_full-countdown

The per-token KL(pi || pi_ref) summed over the whole vocabulary at every completion position, with its exact
gradient, computed in the log-probs' chunks from the reference's hidden states; beta 0.04 as in
configs/ablations/grpo.py. Everything else as there: each step adds the reference's head product in every
log-prob chunk (a second [rows, chunk, V] logit block) and keeps the reference's hidden states instead of its
log-probs.
"""

from configs.ablations import ARGS, base_config  # noqa: F401


def get_config(arg=None):
    c = base_config(arg, name="kl_full")
    c.loss.kl_estimator = "full"
    c.loss.kl_beta = 0.04
    return c
