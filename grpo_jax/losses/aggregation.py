"""Aggregations of a per-token loss [N, T] into the step's scalar, each a local sum over a GLOBAL denominator
(`objective.batch_denominators`: num_tokens, num_sequences, and norm_length for the modes that declare it), so
micro-batches and shards add up to the full-batch loss."""

from __future__ import annotations

import jax.numpy as jnp

from grpo_jax.losses.plugins import register_aggregation


def masked_sum(x, mask, axis=None):
    return jnp.sum(jnp.where(mask > 0, x * mask, 0.0), axis=axis)


@register_aggregation("seq_mean_token_mean")
def seq_mean_token_mean(per_token, mask, dens):
    """GRPO (Shao et al. 2024, eq. 3): mean over sequences of each sequence's token mean. The token mean is
    local to a sequence; the sequence count is global."""
    seq = masked_sum(per_token, mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    return jnp.sum(seq) / jnp.maximum(dens["num_sequences"], 1.0)


@register_aggregation("token_mean")
def token_mean(per_token, mask, dens):
    """DAPO's token-level loss (Yu et al. 2025, eq. 8; TRL 'dapo'/'bnpo'): sum over all tokens of the batch /
    total token count, so long completions are not down-weighted."""
    return masked_sum(per_token, mask) / jnp.maximum(dens["num_tokens"], 1.0)


@register_aggregation("seq_mean_token_sum")
def seq_mean_token_sum(per_token, mask, dens):
    """Sum over each sequence's tokens, mean over sequences (verl's 'seq-mean-token-sum')."""
    return masked_sum(per_token, mask) / jnp.maximum(dens["num_sequences"], 1.0)


@register_aggregation("seq_mean_token_sum_norm", inputs=("norm_length",))
def seq_mean_token_sum_norm(per_token, mask, dens):
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", sec. 3.1): sum over all tokens /
    (number of sequences * a CONSTANT length), the max completion length (`norm_length`), never the token
    count, so no length bias. Same as TRL's 'dr_grpo'. (verl's 'seq-mean-token-sum-norm' omits the sequence
    count.)"""
    return masked_sum(per_token, mask) / (jnp.maximum(dens["num_sequences"], 1.0) * dens["norm_length"])
