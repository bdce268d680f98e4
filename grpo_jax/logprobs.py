"""Per-token log-probs of completions that share a prompt: the one code path of the sampler and the trainer.

A step holds P prompts and G completions each (rows p-major: row = p * G + g). Under causal attention the prompt's
hidden states do not depend on what follows it, so the prompt is run once per group and its keys/values are read
by all G completions (`PrefixKV`); gradients through the prompt are summed over the group. Logits are formed
chunk by chunk over completion positions only, so no [N, T, V] float32 tensor ever exists.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from grpo_jax import packing
from grpo_jax.models.config import ModelConfig
from grpo_jax.models.decoder import PrefixKV, causal_mask, hidden_states, padded_positions, unembed


class Prompt(NamedTuple):
    prefix: PrefixKV          # keys/values of the prompts, k/v [L, P, S, Hkv, hd]
    last_hidden: jax.Array    # [P, D] final hidden state at each prompt's last token (predicts completion token 0)
    length: jax.Array         # int32 [P] real prompt tokens (completion token j sits at position length + j)


def encode_prompt(config: ModelConfig, params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                  adapters=None) -> Prompt:
    """Prefill: run the left-padded prompts [P, S] once. adapters: None, or a `lora.MemberAdapters` whose member
    [P] says whose unmerged adapters each prompt row runs (a population's per-member prefill)."""
    mask = prompt_mask.astype(bool)
    positions = padded_positions(mask)
    hidden, (k, v) = hidden_states(config, params, prompt_tokens, positions, causal_mask(mask), adapters=adapters)
    return Prompt(PrefixKV(k, v, mask, positions), hidden[:, -1], jnp.sum(mask, axis=-1).astype(jnp.int32))


def token_logprobs(config: ModelConfig, params, hidden: jax.Array, targets: jax.Array, temperature: float = 1.0,
                   chunk_size: int = 0, with_entropy: bool = True, reference=None):
    """log p(target) and entropy under softmax(logits / temperature), for hidden [N, T, D], targets [N, T].

    Computed over chunks of T positions with the chunk's logits rematerialised in the backward pass, so memory is
    O(N * chunk * V) instead of O(N * T * V).

    reference: None, or (ref_params, ref_hidden [N, T, D]): the reference policy's params and its final hidden
    states at the same positions. Then a third output, the exact per-token KL(pi || pi_ref) [N, T] over the whole
    vocabulary, sum_v pi(v) (log pi(v) - log pi_ref(v)) under the same temperature, formed in the same chunks from
    both models' logits (the chunk holds two [N, chunk, V] logit blocks, so the default chunk is half as long; still
    never [N, T, V]). The reference is a constant: no gradient reaches ref_params or ref_hidden; the gradient with
    respect to the policy is the exact one (autodiff through the rematerialised chunk).
    Returns (logp, entropy), or (logp, entropy, kl) with a reference."""
    n, t, d = hidden.shape
    heads = 1 if reference is None else 2
    if chunk_size <= 0:
        # ~32M float32 logits per chunk (the policy's and, with a reference, the reference's).
        chunk_size = max(1, min(t, (32 * 1024 * 1024) // max(1, heads * n * config.vocab_size)))
    num_chunks = -(-t // chunk_size)
    pad = num_chunks * chunk_size - t

    def chunked(x):  # [N, T, ...] -> [num_chunks, N, chunk, ...]
        x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
        return jnp.swapaxes(x.reshape((n, num_chunks, chunk_size) + x.shape[2:]), 0, 1)

    xs = (chunked(hidden), chunked(targets))
    if reference is not None:
        ref_params, ref_hidden = reference
        if ref_hidden.shape != hidden.shape:
            raise ValueError(f"the reference's hidden states have shape {ref_hidden.shape}, expected the policy's "
                             f"{hidden.shape}")
        xs = xs + (chunked(ref_hidden),)

    @jax.checkpoint
    def one_chunk(chunk):
        hc, yc = chunk[0], chunk[1]
        logits = unembed(config, params, hc) / temperature
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, yc[..., None], axis=-1)[..., 0]
        if with_entropy or reference is not None:
            probs = jnp.exp(logits - lse[..., None])
        if with_entropy:
            ent = lse - jnp.sum(probs * logits, axis=-1)
        else:
            ent = jnp.zeros_like(lse)
        if reference is None:
            return picked - lse, ent
        ref_logits = unembed(config, ref_params, chunk[2]) / temperature
        ref_logp = jax.lax.stop_gradient(jax.nn.log_softmax(ref_logits, axis=-1))
        kl = jnp.sum(probs * (logits - lse[..., None] - ref_logp), axis=-1)
        return picked - lse, ent, kl

    outs = jax.lax.map(one_chunk, xs)
    return tuple(jnp.swapaxes(o, 0, 1).reshape(n, -1)[:, :t] for o in outs)


def completion_hidden(config: ModelConfig, params, prompt: Prompt, completions: jax.Array, group_size: int,
                      layout: Optional[packing.Layout] = None):
    """Final hidden states that predict each completion token: [N, T, D] for completions [N, T], N = P * G; with a
    packing `layout`, those of the packed tokens instead, [R, T, D] (see `grpo_jax.packing`)."""
    if layout is not None:
        return _packed_hidden(config, params, prompt, completions, group_size, layout)
    n, t = completions.shape
    last = jnp.repeat(prompt.last_hidden, group_size, axis=0)[:, None, :]
    if t == 1:
        return last
    inputs = completions[:, :-1]
    lengths = jnp.repeat(prompt.length, group_size)
    positions = lengths[:, None] + jnp.arange(t - 1, dtype=jnp.int32)[None, :]
    own_mask = causal_mask(jnp.ones(inputs.shape, bool))
    hidden, _ = hidden_states(config, params, inputs, positions, own_mask, prefix=prompt.prefix)
    return jnp.concatenate([last.astype(hidden.dtype), hidden], axis=1)


def _packed_hidden(config: ModelConfig, params, prompt: Prompt, completions: jax.Array, group_size: int,
                   layout: packing.Layout):
    """Packed rows [R, T]: each reads its one prompt's keys/values (gathered per packed row), each segment itself
    causally; the hidden state at a segment's column j - 1 predicts its token j, the prompt's last one token 0."""
    del group_size  # the layout names each packed row's prompt
    t = completions.shape[1]
    offsets = layout.offsets(t)
    pk = prompt.prefix
    prefix = PrefixKV(jnp.take(pk.k, layout.prompt, axis=1), jnp.take(pk.v, layout.prompt, axis=1),
                      jnp.take(pk.mask, layout.prompt, axis=0), jnp.take(pk.positions, layout.prompt, axis=0))
    positions = jnp.take(prompt.length, layout.prompt)[:, None] + offsets
    hidden, _ = hidden_states(config, params, layout.tokens(completions), positions, layout.own_mask(t),
                              prefix=prefix)
    last = jnp.take(prompt.last_hidden, layout.prompt, axis=0)[:, None, :].astype(hidden.dtype)
    previous = jnp.concatenate([last, hidden[:, :-1]], axis=1)
    return jnp.where((offsets == 0)[..., None], last, previous)


def completion_logprobs(config: ModelConfig, params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                        completions: jax.Array, group_size: int, temperature: float = 1.0, chunk_size: int = 0,
                        with_entropy: bool = True, reference=None, layout: Optional[packing.Layout] = None):
    """log p(completion token | prompt, earlier completion tokens) and per-token entropy, both [N, T] float32.

    prompt_tokens/prompt_mask [P, S] left-padded; completions int32 [N, T] with N = P * group_size, p-major.
    reference: None or (ref_params, ref_hidden) (`completion_hidden` of the reference on the same batch and
    layout): adds the exact per-token KL(pi || pi_ref) [N, T] as a third output (see `token_logprobs`).
    layout: a `packing.Layout` of the completions: computed packed, returned in the same [N, T] layout (values
    after a row's length are then arbitrary; they are masked everywhere)."""
    p = prompt_tokens.shape[0]
    if completions.shape[0] != p * group_size:
        raise ValueError(f"completions has {completions.shape[0]} rows, expected prompts x group_size = "
                         f"{p} x {group_size}")
    prompt = encode_prompt(config, params, prompt_tokens, prompt_mask)
    hidden = completion_hidden(config, params, prompt, completions, group_size, layout)
    if layout is None:
        return token_logprobs(config, params, hidden, completions, temperature, chunk_size, with_entropy, reference)
    outs = token_logprobs(config, params, hidden, layout.tokens(completions), temperature, chunk_size, with_entropy,
                          reference)
    return tuple(layout.unpacked(o) for o in outs)
