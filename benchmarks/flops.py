"""The one FLOP model of the benchmarks' rooflines: matmul FLOPs of grpo_jax's decoder (a ModelConfig `c`).

A multiply-add is 2 FLOPs. Per token through the decoder layers: 2 x `layer_params(c)` (the q/k/v/o projections,
L D hd (2 H + 2 K), and the gated MLP, 3 L D F); per LM-head position: 2 x V D; per (query, key) pair of
attention: 4 L H hd (scores q.k and the weighted sum of values, 2 FLOPs per head dimension each). Norms, rope,
softmax and the embedding lookup are left out (a few percent), so a roofline is a lower bound on the time.
Attention is counted over every key (the saving of a sliding-window layer is not modelled).

The workloads, with P prompts of S tokens (a mean may be fractional), G completions each, T new tokens, N = P G:
  * `sampling`: each prompt prefilled once (P S tokens, causal attention ~ P S^2 / 2 pairs, the head at the last
    prompt position), then T - 1 decode steps of N rows (layers and head; attention over S + t keys at step t);
  * `train_step`: what the jitted train step executes -- the prompt once per group (grpo_jax's shared-prompt
    pass), completion tokens 0 .. T - 2 as inputs (N (T - 1) tokens), the head on the N T completion positions,
    dense attention (P S S + N (T - 1) (S + T - 1) pairs); forward + backward = 3 forwards, plus one forward for the
    reference when kl_beta > 0. `nominal` is the textbook 6 n D (+ 2 n D for the reference) over all n parameters
    and D = N (S + T) tokens;
  * `grpo_step`: `sampling` + `train_step`'s executed FLOPs (one full GRPO step).
"""

from __future__ import annotations


def layer_params(c) -> int:
    """Matmul parameters of all decoder layers: attention projections and the gated MLP."""
    attention = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    return c.num_layers * (attention + 3 * c.hidden_size * c.intermediate_size)


def head_params(c) -> int:
    return c.vocab_size * c.hidden_size


def matmul_params(c) -> int:
    """Parameters in matmuls per token: every layer projection plus the LM head (tied or not; the embedding
    lookup costs no FLOPs)."""
    return layer_params(c) + head_params(c)


def all_params(c) -> int:
    """Every parameter: the matmul ones plus an untied input embedding."""
    return matmul_params(c) + (0 if c.tie_word_embeddings else head_params(c))


def forward(c, *, layer_tokens: float, head_positions: float, attention_pairs: float) -> float:
    """FLOPs of one forward pass over `layer_tokens` tokens, the head at `head_positions`, and `attention_pairs`
    (query, key) pairs."""
    return (2 * layer_params(c) * layer_tokens + 2 * head_params(c) * head_positions
            + 4 * c.num_layers * c.num_heads * c.head_dim * attention_pairs)


def sampling(c, prompts: int, group: int, prompt_tokens: float, new_tokens: int) -> dict:
    """FLOPs of generating `new_tokens` for `group` completions of each of `prompts` prompts."""
    n = prompts * group
    prefill = forward(c, layer_tokens=prompts * prompt_tokens, head_positions=prompts,
                      attention_pairs=prompts * prompt_tokens ** 2 / 2)
    contexts = sum(prompt_tokens + t for t in range(1, new_tokens))
    decode = forward(c, layer_tokens=n * (new_tokens - 1), head_positions=n * (new_tokens - 1),
                     attention_pairs=n * contexts)
    return {"matmul_params": matmul_params(c), "prefill": prefill, "decode": decode, "total": prefill + decode}


def train_step(c, prompts: int, group: int, prompt_tokens: float, new_tokens: int, with_reference: bool) -> dict:
    """Nominal and executed FLOPs of one train step over `prompts` x `group` completions of `new_tokens`."""
    n = prompts * group
    tokens = n * (prompt_tokens + new_tokens)
    nominal = (6 + (2 if with_reference else 0)) * all_params(c) * tokens
    pairs = prompts * prompt_tokens * prompt_tokens + n * (new_tokens - 1) * (prompt_tokens + new_tokens - 1)
    one = forward(c, layer_tokens=prompts * prompt_tokens + n * (new_tokens - 1), head_positions=n * new_tokens,
                  attention_pairs=pairs)
    executed = (3 + (1 if with_reference else 0)) * one
    return {"params": all_params(c), "tokens": tokens, "nominal": nominal, "executed": executed,
            "executed_forward": one}


def grpo_step(c, prompts: int, group: int, prompt_tokens: float, new_tokens: int, with_reference: bool) -> dict:
    """FLOPs of one GRPO step: sampling, then the train step (executed)."""
    sample = sampling(c, prompts, group, prompt_tokens, new_tokens)["total"]
    train = train_step(c, prompts, group, prompt_tokens, new_tokens, with_reference)["executed"]
    return {"matmul_params": matmul_params(c), "sampling": sample, "train": train, "total": sample + train}
