"""KL estimator 'full': the exact KL(pi || pi_ref) over the whole vocabulary at every completion position.

    kl_t = sum_v pi(v | x, y_<t) (log pi(v | x, y_<t) - log pi_ref(v | x, y_<t))

with both distributions under the rollout temperature, like the log-probs. k1, k2 and k3 (kl.py; Schulman 2020,
"Approximating KL Divergence") estimate this from the sampled token y_t alone: k1 and k3 are unbiased for kl_t
when y_t ~ pi, k3 with lower variance (GRPO's choice, Shao et al. 2024, "DeepSeekMath", eq. 4). 'full' has no
sampling noise at all: it is the quantity those estimate, and its gradient is the gradient of the true KL,

    d kl_t / d theta = sum_v pi(v) (log pi(v) - log pi_ref(v)) d log pi(v) / d theta,

whereas the sampled estimators' gradients are, in expectation over y_t ~ pi, 0 for k1 (E[d log pi(y_t)] = 0) and
-sum_v pi_ref(v) d log pi(v) / d theta for k3 (d k3 = (1 - pi_ref(y_t) / pi(y_t)) d log pi(y_t)): the gradient
of the reverse KL(pi_ref || pi), not of KL(pi || pi_ref).

Cost: the reference's head product next to the policy's in every log-prob chunk. The train step keeps the
reference's final hidden states [N, T, D] (one reference pass per step, as for k1-k3) instead of its log-probs
[N, T], and `logprobs.token_logprobs(reference=(ref_params, ref_hidden))` forms both models' logits in the same
position chunks as the log-probs, rematerialised in the backward pass, so no [N, T, V] tensor exists; autodiff
through that chunked computation is the exact gradient. The train step hands the result to this estimator as the loss input
'token_kl' (`train_step.TOKEN_KL`); `losses.policy_loss` reads it from `inputs=` and needs no ref_logps.

Invariants: kl_t >= 0 (= 0 where the two distributions agree); no gradient reaches the reference; the value equals
the mean of k1 or k3 over tokens sampled from pi, in the limit.
"""

from __future__ import annotations

from grpo_jax.losses.plugins import register_kl_estimator


@register_kl_estimator("full", inputs=("token_kl",))
def kl_full(logps, ref_logps, *, token_kl):
    """The exact per-token KL(pi || pi_ref) [N, T], computed with the log-probs (module docstring); the sampled
    tokens' log-probs are not needed."""
    del logps, ref_logps
    return token_kl
