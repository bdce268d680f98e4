"""Rollout engine 'jitted': the group sampler `sampling.generate`, one compiled program per shapes and settings
(prefill each prompt once, decode the rows in a `lax.while_loop` that compacts the batch as rows finish and, with
settings.max_decode_rows < N, refills finished rows' slots; see grpo_jax/sampling.py and grpo_jax/decode_loop.py)."""

from __future__ import annotations

from grpo_jax import sampling
from grpo_jax.rollout.engine import Settings, register_engine


class JittedGroupSampler:
    """Every row decoded until it stops or reaches max_new_tokens, at most settings.max_decode_rows at once
    (0 = all); exact log-probs."""

    def __init__(self, model_config, mesh=None):
        self.model_config, self.mesh = model_config, mesh
        self.last_tokens_computed = None  # token positions the last call decoded (see RolloutEngine)

    def generate(self, params, prompt_tokens, prompt_mask, key, settings: Settings) -> sampling.Rollout:
        out, stats = sampling.generate_with_stats(
            self.model_config, params, prompt_tokens, prompt_mask, key, group_size=settings.group_size,
            max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, top_k=settings.top_k,
            top_p=settings.top_p, greedy=settings.greedy, stop_ids=settings.stop_ids, pad_id=settings.pad_id,
            mesh=self.mesh, max_decode_rows=settings.max_decode_rows)
        self.last_tokens_computed = stats.tokens_computed(out.lengths.shape[0])
        return out

    def generate_members(self, params, members, prompt_tokens, prompt_mask, key, settings: Settings
                         ) -> sampling.Rollout:
        """K population members' rows in one decode loop (`sampling.generate(members=)`): `params` the shared
        base, `members` a `lora.Members` of K adapters, settings.temperature / top_p K values (one per member) or
        one for all. -> Rollout of K * P * G rows, member-major; member k's rows are what `generate` gives for
        member k's merged params and settings with the same key. settings.max_decode_rows bounds all K members'
        rows decoded at once."""
        out, stats = sampling.generate_with_stats(
            self.model_config, params, prompt_tokens, prompt_mask, key, group_size=settings.group_size,
            max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, top_k=settings.top_k,
            top_p=settings.top_p, greedy=settings.greedy, stop_ids=settings.stop_ids, pad_id=settings.pad_id,
            mesh=self.mesh, max_decode_rows=settings.max_decode_rows, members=members)
        self.last_tokens_computed = stats.tokens_computed(out.lengths.shape[0])
        return out


@register_engine("jitted")
def jitted(model_config, mesh=None) -> JittedGroupSampler:
    """The jitted group sampler (`sampling.generate`)."""
    return JittedGroupSampler(model_config, mesh)
