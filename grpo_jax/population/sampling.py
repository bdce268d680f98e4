"""Each member's completions of the step's prompts: K members, the same prompts, one key.

    samples = sample_members(sampler, model_config, states, frozen, examples, key, temperature=[...K],
                             top_p=[...K])                     # the sampler's settings, or changes: group_size=G
    (prompt_tokens, prompt_mask), rollout, completions = samples[k]      # member k's, as Sampler.sample's

Invariants:
- samples[k] is what `sampler.sample` returns for member k alone (its policy params
  `train_step.policy_params(model_config, member(states, k), frozen)`, its temperature[k] and top_p[k]), with the
  SAME `key` for every member: common random numbers. K identical members therefore give K identical rollouts,
  equal to the single policy's, and a member's rollout does not depend on the other members (same tokens,
  lengths and truncation; log-probs within float rounding).
- temperature / top_p are one float per member (a member's mutated sampling settings reach its generation);
  they are traced values of the sampler's program, so changing them does not recompile.

How: LoRA members (frozen is not None) with an engine that has `generate_members` (the jitted group sampler) are
decoded together in ONE decode loop over the shared frozen base (`sampling.generate(members=)`): K * P * G rows,
the base's weights read once per step for all of them, each row adding its own member's unmerged adapters.
Full-finetuning members (frozen None: each member has its own full params, nothing to share), engines without
`generate_members`, and a sampler that plays multi-turn episodes (`sampler.environment`) run one `sampler.sample`
per member. Either way, afterwards the engine's
`last_tokens_computed` (where it sets one) counts all members' rows.
"""

from __future__ import annotations

from typing import Sequence

from grpo_jax import train_step
from grpo_jax.models import lora
from grpo_jax.population.train import member, num_members


def _per_member(name: str, values, k: int) -> list:
    values = [float(v) for v in values]
    if len(values) != k:
        raise ValueError(f"sample_members: {name} must hold one value per member ({k}), got {len(values)}")
    return values


def sample_members(sampler, model_config, states: train_step.TrainState, frozen, examples: Sequence[dict], key, *,
                   temperature: Sequence[float], top_p: Sequence[float], **changes) -> list:
    """K tuples ((prompt_tokens, prompt_mask), rollout, Completions), member k's as `sampler.sample` gives them for
    member k alone with `key` (see the module docstring). states: a TrainState with a leading member axis [K, ...];
    frozen: the LoRA base (None in full finetuning). The settings are the sampler's (`sampler.settings_for`) with
    `changes` (e.g. group_size) and the members' temperature and top_p."""
    k = num_members(states)
    temperature = _per_member("temperature", temperature, k)
    top_p = _per_member("top_p", top_p, k)
    engine = sampler.engine
    if frozen is None or not hasattr(engine, "generate_members") or sampler.environment is not None:
        return _one_by_one(sampler, model_config, states, frozen, examples, key, temperature=temperature,
                           top_p=top_p, **changes)
    tokens, mask = sampler.encode(examples)
    settings = sampler.settings_for(**changes, temperature=tuple(temperature), top_p=tuple(top_p))
    out = engine.generate_members(frozen, lora.Members(states.params, states.lora_alpha), tokens, mask, key,
                                  settings)
    n = tokens.shape[0] * settings.group_size
    samples = []
    for i in range(k):
        part = type(out)(*(x[i * n:(i + 1) * n] for x in out))
        samples.append(((tokens, mask), part, sampler.completions(part)))
    return samples


def _one_by_one(sampler, model_config, states, frozen, examples, key, *, temperature, top_p, **changes) -> list:
    """The reference: one `sampler.sample` per member (full finetuning; engines without `generate_members`)."""
    samples, counts = [], []
    for i in range(num_members(states)):
        params = train_step.policy_params(model_config, member(states, i), frozen)
        samples.append(sampler.sample(params, examples, key, temperature=temperature[i], top_p=top_p[i],
                                      **changes))
        counts.append(getattr(sampler.engine, "last_tokens_computed", None))
    if all(c is not None for c in counts):
        sampler.engine.last_tokens_computed = sum(counts)
    return samples
