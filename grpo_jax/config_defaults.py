"""The default `loss` ConfigDict (GRPO as in DeepSeekMath / TRL's defaults) and its validation.

Every field of DESIGN.md's `loss.*` schema lives here, with its default and what it means:

  variant            'grpo' | 'gspo' | 'cispo'                      (losses.VARIANTS)
  clip_low           ratio clipped below at 1 - clip_low            (0.2, PPO / GRPO)
  clip_high          ratio clipped above at 1 + clip_high           (0.2; DAPO's clip-higher uses 0.28)
  dual_clip          0 = off, else the constant c > 1 of dual-clip PPO (Ye et al. 2020) for A < 0
  kl_beta            weight of the per-token KL to the reference    (0.04, DeepSeekMath / TRL <= 0.18)
  kl_estimator       'k1' | 'k2' | 'k3'                             (Schulman 2020; k3 is DeepSeekMath's)
  aggregation        'seq_mean_token_mean' | 'token_mean' | 'seq_mean_token_sum' | 'seq_mean_token_sum_norm'
  advantage_scale    'group' | 'batch' | 'none'                     (advantages.SCALES)
  advantage_baseline 'group_mean' | 'rloo'                          (advantages.BASELINES)
  entropy_coef       loss -= entropy_coef * aggregated entropy      (0.0)
  mask_truncated     drop completions that hit the length limit     (False; DAPO's overlong filtering)
  num_iterations     mu: updates per rollout                        (1)
  drop_zero_std_groups  DAPO dynamic-sampling filter: groups with identical rewards leave the update (False)
  std_eps            added to the std before dividing               (1e-4, as TRL)

Clip bounds are deltas from 1 for every variant: the ratio is clipped to [1 - clip_low, 1 + clip_high].
The papers use very different ranges per variant, so `loss_config(variant)` fills in the paper's values
(`PAPER_CLIP_BOUNDS`). Overriding only `--config.loss.variant=...` on the command line keeps the clip values the
config file set; an ablation config for GSPO or CISPO should call `loss_config('gspo')` / `loss_config('cispo')`
or set clip_low / clip_high itself:

  - GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", sec. 5.1): the sequence-level ratio is a
    geometric mean, so it stays close to 1; the paper clips at 3e-4 (left) and 4e-4 (right).
  - CISPO (MiniMax 2025, "MiniMax-M1", sec. 3.1): no lower bound ("we did not impose a lower bound"), only an
    upper bound on the detached importance weight. clip_low = 1.0 makes the lower bound 0 (the ratio is
    positive, so nothing is clipped below). For the upper bound we follow TRL's GRPOConfig documentation, which
    recommends an absolute cap epsilon_max = 5.0 for CISPO (after ScaleRL, Khatri et al. 2025), i.e.
    clip_high = 4.0 in our delta convention. MiniMax-M1 itself does not publish its value.
"""

from __future__ import annotations

import math
import numbers

import ml_collections

# variant -> (clip_low, clip_high) as used in the paper that introduced it; see the module docstring.
PAPER_CLIP_BOUNDS = {
    "grpo": (0.2, 0.2),  # DeepSeekMath (Shao et al. 2024) / PPO (Schulman et al. 2017); DAPO: (0.2, 0.28)
    "gspo": (3e-4, 4e-4),  # Zheng et al. 2025
    "cispo": (1.0, 4.0),  # MiniMax-M1 (no lower bound); ratio cap 5.0 as recommended by TRL for CISPO
}

LOSS_FIELDS = (
    "variant", "clip_low", "clip_high", "dual_clip", "kl_beta", "kl_estimator", "aggregation",
    "advantage_scale", "advantage_baseline", "entropy_coef", "mask_truncated", "num_iterations",
    "drop_zero_std_groups", "std_eps",
)


def loss_config(variant: str = "grpo") -> ml_collections.ConfigDict:
    """The `loss` ConfigDict: GRPO as in DeepSeekMath / TRL, with `variant`'s paper clip bounds."""
    if variant not in PAPER_CLIP_BOUNDS:
        raise ValueError(f"loss_config: unknown variant {variant!r}; known: {sorted(PAPER_CLIP_BOUNDS)}")
    clip_low, clip_high = PAPER_CLIP_BOUNDS[variant]
    cfg = ml_collections.ConfigDict()
    cfg.variant = variant
    cfg.clip_low = clip_low
    cfg.clip_high = clip_high
    cfg.dual_clip = 0.0
    cfg.kl_beta = 0.04
    cfg.kl_estimator = "k3"
    cfg.aggregation = "seq_mean_token_mean"
    cfg.advantage_scale = "group"
    cfg.advantage_baseline = "group_mean"
    cfg.entropy_coef = 0.0
    cfg.mask_truncated = False
    cfg.num_iterations = 1
    cfg.drop_zero_std_groups = False
    cfg.std_eps = 1e-4
    return cfg


def _field(cfg, name):
    try:
        return cfg[name]
    except (KeyError, AttributeError, TypeError):
        raise ValueError(f"loss config has no field {name!r}; expected fields: {', '.join(LOSS_FIELDS)}") from None


def _number(cfg, name) -> float:
    value = _field(cfg, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"loss.{name} must be a finite number, got {value!r}")
    return float(value)


def _choice(cfg, name, valid) -> None:
    value = _field(cfg, name)
    if value not in valid:
        raise ValueError(f"unknown loss.{name} {value!r}; valid: {', '.join(repr(v) for v in sorted(valid))}")


def _flag(cfg, name) -> None:
    value = _field(cfg, name)
    if not isinstance(value, bool):
        raise ValueError(f"loss.{name} must be True or False, got {value!r}")


def validate_loss_config(cfg) -> None:
    """Raise ValueError naming the bad field and value; valid names come from the registries."""
    from grpo_jax import advantages, losses  # late: both modules call this function

    _choice(cfg, "variant", losses.VARIANTS)
    _choice(cfg, "kl_estimator", losses.KL_ESTIMATORS)
    _choice(cfg, "aggregation", losses.AGGREGATIONS)
    _choice(cfg, "advantage_scale", advantages.SCALES)
    _choice(cfg, "advantage_baseline", advantages.BASELINES)
    _flag(cfg, "mask_truncated")
    _flag(cfg, "drop_zero_std_groups")

    clip_low, clip_high = _number(cfg, "clip_low"), _number(cfg, "clip_high")
    if not 0.0 <= clip_low <= 1.0:
        raise ValueError(f"loss.clip_low must be in [0, 1] (ratio clipped below at 1 - clip_low), got {clip_low!r}")
    if clip_high < 0.0:
        raise ValueError(f"loss.clip_high must be >= 0 (ratio clipped above at 1 + clip_high), got {clip_high!r}")
    dual_clip = _number(cfg, "dual_clip")
    if dual_clip != 0.0 and dual_clip <= 1.0:
        raise ValueError(f"loss.dual_clip must be 0 (off) or a constant > 1 (Ye et al. 2020 use 3), got {dual_clip!r}")
    if dual_clip != 0.0 and _field(cfg, "variant") == "cispo":
        raise ValueError("loss.dual_clip must be 0 with variant 'cispo': CISPO has no unclipped branch to bound")
    kl_beta = _number(cfg, "kl_beta")
    if kl_beta < 0.0:
        raise ValueError(f"loss.kl_beta must be >= 0, got {kl_beta!r}")
    if _number(cfg, "std_eps") < 0.0:
        raise ValueError(f"loss.std_eps must be >= 0, got {_field(cfg, 'std_eps')!r}")
    _number(cfg, "entropy_coef")
    num_iterations = _field(cfg, "num_iterations")
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, numbers.Integral) or num_iterations < 1:
        raise ValueError(f"loss.num_iterations must be an integer >= 1, got {num_iterations!r}")
