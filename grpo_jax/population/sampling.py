"""Each member's completions of the step's prompts: K members, the same prompts, one key.

    samples = sample_members(sampler, model_config, states, frozen, examples, key, group_size=G,
                             max_new_tokens=T, temperature=[...K], top_p=[...K])
    (prompt_tokens, prompt_mask), rollout, completions = samples[k]      # member k's, as Sampler.sample's

Invariants:
- samples[k] is exactly what `sampler.sample` returns for member k alone (its policy params
  `train_step.policy_params(model_config, member(states, k), frozen)`, its temperature[k] and top_p[k]), with the
  SAME `key` for every member: common random numbers. K identical members therefore give K identical rollouts,
  equal to the single policy's, and a member's rollout does not depend on the other members.
- temperature / top_p are one float per member (a member's mutated sampling settings reach its generation).
"""

from __future__ import annotations

from typing import Sequence

from grpo_jax import train_step
from grpo_jax.population.train import member, num_members


def _per_member(name: str, values, k: int) -> list:
    values = [float(v) for v in values]
    if len(values) != k:
        raise ValueError(f"sample_members: {name} must hold one value per member ({k}), got {len(values)}")
    return values


def sample_members(sampler, model_config, states: train_step.TrainState, frozen, examples: Sequence[dict], key, *,
                   group_size: int, max_new_tokens: int, temperature: Sequence[float], top_p: Sequence[float],
                   top_k: int = 0) -> list:
    """K tuples ((prompt_tokens, prompt_mask), rollout, Completions), member k's as `sampler.sample` gives them for
    member k alone with `key` (see the module docstring). states: a TrainState with a leading member axis [K, ...];
    frozen: the LoRA base (None in full finetuning)."""
    k = num_members(states)
    temperature = _per_member("temperature", temperature, k)
    top_p = _per_member("top_p", top_p, k)
    return [sampler.sample(train_step.policy_params(model_config, member(states, i), frozen), examples, key,
                           group_size=group_size, max_new_tokens=max_new_tokens, temperature=temperature[i],
                           top_p=top_p[i], top_k=top_k)
            for i in range(k)]
