"""The rollout-engine protocol: prompts, a `Settings` and a key in, a `Rollout` out.

    engine = rollout.make(settings.engine, model_config, mesh)      # an engine registered by name
    out = engine.generate(params, prompt_tokens, prompt_mask, key, settings)

prompt_tokens / prompt_mask [P, S]: left-padded (`batching.left_pad`). settings: a `rollout.Settings`, passed
whole (group size, length, sampling knobs, stop and pad ids, and the engine's own declared settings). The result
is a `rollout.Rollout(tokens [N, T], mask [N, T], logps [N, T], lengths [N], truncated [N], action_mask [N, T])`,
N = P * G rows p-major (row = p * G + g), T = settings.max_new_tokens, logps the log-probs of the sampled tokens
under the policy at `settings.temperature` (exact, as the trainer computes them: the train step uses them as the
old log-probs); action_mask 1 on the tokens the policy sampled (single-turn engines: action_mask = mask).
With a mesh the rows are global arrays split over ('data', 'fsdp'). The runner and `evaluation.Sampler` get every
completion through this protocol, so a second engine (continuous batching, a served model) is one module in this
package, registered with `@register_engine("name", fields={...})` on a factory `(model_config, mesh) -> engine`,
and chosen with `rollout.engine`. Its fields become `rollout.<field>` config keys, validated by its `validate`
when it is the selected engine, and reach its `generate` in `settings.options` (`settings.option(name)`).
"""

from __future__ import annotations

from typing import Protocol

from grpo_jax import registry

ENGINES = registry.kind("rollout_engine", factory=True, section="rollout", selector="engine")


def register_engine(name: str, *, fields=None, validate=None):
    """Decorator: register a rollout-engine factory `(model_config, mesh) -> RolloutEngine` under `name`;
    `fields` ({name: default}) become `rollout.<field>` config keys and the engine's `Settings.options`."""
    return ENGINES.register(name, fields=fields, validate=validate)


class RolloutEngine(Protocol):
    """An engine may also set `last_tokens_computed`: the token positions its last call decoded, padding and
    finished rows' steps included (the runner logs it as sampler/tokens_computed), and may offer
    `generate_members(base_params, members, prompt_tokens, prompt_mask, key, settings)`: K LoRA population members
    (`lora.Members`) in one call, settings.temperature / top_p one per member, rows member-major, member k's rows
    those `generate` gives for member k alone (`population.sampling.sample_members` uses it when present)."""

    def generate(self, params, prompt_tokens, prompt_mask, key, settings):
        """settings: a `rollout.Settings`, whole -> rollout.Rollout of all P * settings.group_size rows."""


def make(name: str, model_config, mesh=None):
    """The engine `name` for this model and mesh; ValueError naming the known engines."""
    return ENGINES.get(name, model_config=model_config, mesh=mesh)
