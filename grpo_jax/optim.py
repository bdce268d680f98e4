"""The optimizer: global-norm clipping then AdamW (Loshchilov & Hutter 2019) on a warmup + constant/cosine schedule.

`optim` ConfigDict fields (defaults are GRPO-typical, as TRL's GRPOConfig / DeepSeekMath):

  lr               peak learning rate                        (1e-6; DeepSeekMath sec. 4.2 uses 1e-6)
  warmup_steps     linear warmup from 0 over this many updates (0; HF's convention: lr 0 at update 0)
  schedule         'constant' | 'cosine' after warmup        ('constant'; cosine decays to 0 at the last update)
  weight_decay     decoupled weight decay, not on norm scales or biases (0.0, TRL's default)
  max_grad_norm    clip the global gradient norm to this      (1.0, TRL's default; 0 = no clipping)
  b1, b2           Adam moments                               (0.9, 0.99)
  micro_batch_size sequences per gradient-accumulation micro-batch, a multiple of the group size; 0 = whole batch
  pack_completions pack each group's completions end to end into rows of the batch's width (True; grpo_jax.packing):
                   the step computes the tokens the rollout has; False computes every row at the full width (the
                   same results, for comparison)
  skip_zero_advantage  leave completions whose advantage is exactly 0 out of the packed train step ('auto'):
                   where every term of the loss vanishes at advantage 0 (as the loss plug-ins declare: e.g. no KL
                   term, no entropy bonus, a variant whose term is A * f(ratio)) they add nothing to the loss or
                   the gradient, while the aggregation's denominators still count them, so the loss and gradient
                   are the full batch's. 'auto' applies it exactly there and stands aside elsewhere; True insists
                   (a ValueError naming the live terms where it is not exact); False never skips. When it
                   applies, the token metrics entropy and logp_mismatch/mean are over the completions trained
                   on; the ratio and clip metrics count a skipped token at ratio 1 (what it is at the first
                   iteration, up to the sampler's 1e-5).

The schedule counts optimizer *updates*: a train step with `loss.num_iterations = mu` makes mu of them, so the
train step passes `total_steps * mu`.

`make_schedule` / `make_optimizer` take an optional `lr`: the peak learning rate in place of optim.lr, which may be
a traced scalar (a population member's, one per member under `jax.vmap`). The schedule's shape (warmup, decay) is
the config's, and since optax's adamw multiplies the decoupled weight decay by the learning rate too, the result is
exactly the optimizer of a config with optim.lr = lr (same state structure, so moments carry over when lr changes).
"""

from __future__ import annotations

import jax
import ml_collections
from ml_collections import config_dict
import optax

SCHEDULES = ("constant", "cosine")


def optim_config() -> ml_collections.ConfigDict:
    """The `optim` ConfigDict with its defaults."""
    return ml_collections.ConfigDict({
        "lr": 1e-6,
        "warmup_steps": 0,
        "schedule": "constant",
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "b1": 0.9,
        "b2": 0.99,
        "micro_batch_size": 0,
        "pack_completions": True,
        # 'auto' | True | False: an object-typed field, so a config file may assign a bool and the command line
        # parses True / False / auto alike
        "skip_zero_advantage": config_dict.FieldReference("auto", field_type=object),
    })


def _nonneg(cfg, name, integer=False):
    value = cfg[name]
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value < 0:
        raise ValueError(f"optim.{name} must be a non-negative {'integer' if integer else 'number'}, got {value!r}")
    return value


def validate_optim_config(optim_cfg) -> None:
    """ValueError naming the bad `optim.*` field and value."""
    for name in ("lr", "weight_decay", "max_grad_norm"):
        _nonneg(optim_cfg, name)
    for name in ("warmup_steps", "micro_batch_size"):
        _nonneg(optim_cfg, name, integer=True)
    if not isinstance(optim_cfg.get("pack_completions", True), bool):
        raise ValueError(f"optim.pack_completions must be true or false, got {optim_cfg.pack_completions!r}")
    skip = optim_cfg.skip_zero_advantage
    if not (isinstance(skip, bool) or skip == "auto"):
        raise ValueError(f"optim.skip_zero_advantage must be 'auto', true or false, got "
                         f"{optim_cfg.skip_zero_advantage!r}")
    if optim_cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown optim.schedule {optim_cfg.schedule!r}; valid: {', '.join(map(repr, SCHEDULES))}")
    for name in ("b1", "b2"):
        value = optim_cfg[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"optim.{name} must be in [0, 1), got {value!r}")


def make_schedule(optim_cfg, total_steps: int, lr=None) -> optax.Schedule:
    """Learning rate as a function of the update count: linear warmup 0 -> lr, then constant or cosine to 0.
    `lr`: the peak in place of optim.lr (a Python number or a traced scalar; not validated here)."""
    lr = float(_nonneg(optim_cfg, "lr")) if lr is None else lr
    warmup = int(_nonneg(optim_cfg, "warmup_steps", integer=True))
    kind = optim_cfg.schedule
    if kind not in SCHEDULES:
        raise ValueError(f"unknown optim.schedule {kind!r}; valid: {', '.join(map(repr, SCHEDULES))}")
    if kind == "cosine":
        if total_steps <= warmup:
            raise ValueError(f"cosine schedule needs total updates ({total_steps}) > optim.warmup_steps ({warmup})")
        decay = optax.cosine_decay_schedule(lr, total_steps - warmup, alpha=0.0)
    else:
        decay = optax.constant_schedule(lr)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def _decay_mask(params):
    """Weight decay on matrices only: not on norm scales or biases (as HF Trainer / TRL)."""
    def keep(path, _):
        name = getattr(path[-1], "key", str(path[-1]))
        return name not in ("scale", "bias")

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(optim_cfg, total_steps: int, lr=None) -> optax.GradientTransformation:
    """optax.chain(clip_by_global_norm(max_grad_norm), adamw(schedule, b1, b2, weight_decay)); `lr` as in
    `make_schedule` (weight decay is scaled by it, as by optim.lr)."""
    validate_optim_config(optim_cfg)
    max_norm = float(_nonneg(optim_cfg, "max_grad_norm"))
    wd = float(_nonneg(optim_cfg, "weight_decay"))
    clip = optax.clip_by_global_norm(max_norm) if max_norm > 0 else optax.identity()
    adam = optax.adamw(make_schedule(optim_cfg, total_steps, lr), b1=float(optim_cfg.b1),
                       b2=float(optim_cfg.b2), weight_decay=wd, mask=_decay_mask if wd else None)
    return optax.chain(clip, adam)
