"""The default `loss` section for a given variant, and the names older code imports.

`loss_config(variant)` is `config.base_config().loss` (every declared field with its default: GRPO as in
DeepSeekMath / TRL) with `loss.variant = variant` and that variant's presets (its paper's clip bounds) applied:

  - GRPO (DeepSeekMath, Shao et al. 2024) / PPO (Schulman et al. 2017): (0.2, 0.2); DAPO's clip-higher (0.2, 0.28);
  - GSPO (Zheng et al. 2025, sec. 5.1): the sequence-level ratio is a geometric mean, so it stays close to 1; the
    paper clips at 3e-4 (left) and 4e-4 (right);
  - CISPO (MiniMax 2025, sec. 3.1): no lower bound, clip_low = 1.0; clip_high = 4.0, i.e. the absolute cap 5.0
    TRL's documentation recommends (see grpo_jax/losses/cispo.py).

Overriding only `--config.loss.variant=...` on the command line keeps the clip values the config file set; an
ablation config for GSPO or CISPO calls `loss_config('gspo')` / `loss_config('cispo')` or sets the clip values.
Each field's meaning is documented where it is declared: grpo_jax/losses/objective.py (core), losses/ppo.py
(clip_low, clip_high, dual_clip), grpo_jax/advantages/__init__.py (advantage_*, std_eps, drop_zero_std_groups),
and each plug-in's module for its own fields.
"""

from __future__ import annotations

import ml_collections

from grpo_jax import registry
from grpo_jax.config import loss_section
from grpo_jax.losses import VARIANTS, validate_loss_config

__all__ = ["loss_config", "validate_loss_config", "PAPER_CLIP_BOUNDS", "LOSS_FIELDS"]


def _paper_clip_bounds() -> dict:
    out = {}
    for entry in VARIANTS.entries():
        if "clip_low" in entry.presets and "clip_high" in entry.presets:
            out[entry.name] = (entry.presets["clip_low"], entry.presets["clip_high"])
    return out


# variant -> (clip_low, clip_high) as used in the paper that introduced it (the built-in variants' presets).
PAPER_CLIP_BOUNDS = _paper_clip_bounds()
LOSS_FIELDS = tuple(registry.section_fields("loss"))


def loss_config(variant: str = "grpo") -> ml_collections.ConfigDict:
    """The `loss` ConfigDict: every declared field's default, `variant`, and the variant's presets."""
    if variant not in VARIANTS:
        raise ValueError(f"loss_config: unknown variant {variant!r}; known: {VARIANTS.names()}")
    cfg = loss_section()
    cfg.variant = variant
    for field, value in VARIANTS.entry(variant).presets.items():
        cfg[field] = value
    return cfg
