"""The sharded GRPO train step: mu optimizer updates on one rollout, each accumulated over micro-batches.

    state, frozen = init_train_state(model_config, params, config, mesh)
    step = make_train_step(model_config, config, mesh)
    state, metrics = step(state, frozen, ref_params, batch)     # ref_params: see below

One call is one jitted program (buffers of `state` donated), for a rollout of P prompts x G completions, made of
named, module-level parts with explicit arguments (`_build` only binds the config's settings to them):

  plan        host side, before the program: `_check_batch` (shapes, dtypes, divisibility, action_mask's values:
              clear ValueErrors) and `_packing_plan` (`grpo_jax.packing`: which completions share a packed row, by
              the present tokens); `Program.check_batch`
              runs both, `tokens_computed` counts the completion positions the plan makes one pass compute.
  prepare     `prepare_batch` -> `Prepared`, once per call: the batch split into micro-batches of whole prompt
              groups; the loss's denominators over the WHOLE batch (`losses.batch_denominators`); the reference
              pass, only when `use_kl` (default loss.kl_beta > 0): reference log-probs, or for a KL estimator that
              reads the exact per-token KL (`TOKEN_KL`, kl_estimator 'full') the reference's final hidden states
              [N, T, D], from which every micro-batch forms KL(pi || pi_ref) over the whole vocabulary in its
              log-prob chunks (`logprobs.token_logprobs(reference=...)`). With LoRA the reference is the frozen
              base with the adapters off; in full finetuning it is `ref_params`, the caller's untouched initial
              params.
  loss        `micro_batch_loss`: one micro-batch's loss, a local sum over the global denominators, and metrics.
  accumulate  `accumulate_gradient`: the gradient summed over micro-batches (`lax.scan`, float32), so it is the
              full-batch gradient for every aggregation mode (Tunix's (sum, denominator)).
  update      `optimizer_update`: one accumulated gradient, then clip + AdamW. `step_fn` composes the parts:
              prepare once, then mu = loss.num_iterations updates; `grad_fn` is prepare + accumulate (one
              iteration, no update). The old log-probs are the sampler's (`batch['old_logps']`), exact at the
              first iteration and, as GRPO defines (Shao et al. 2024, Alg. 1), the same for every one of the mu
              iterations.

Log-probs come from `logprobs.completion_logprobs`: each prompt's keys/values once per group, logits only at
completion positions and in chunks (never [N, T, V] float32). Sharding: params and optimizer state placed by the
trainer's rules table (`partitioning.rules_for("train")`), every batch array's rows over ('data', 'fsdp'); the step
and gradient functions are traced under that table, so the model's hidden states, attention heads and MLP units
are constrained by their logical names too; XLA inserts the collectives.

batch = dict(prompt_tokens int32 [P, S] (left-padded), prompt_mask bool [P, S], completions int32 [N, T],
             completion_mask float32 [N, T], advantages float32 [N], old_logps float32 [N, T],
             action_mask float32 [N, T] (optional; default completion_mask), truncated bool [N] (optional; used
             by loss.mask_truncated), keep bool [N] (optional; rows in the update, e.g. DAPO's zero-std filter),
             **any other per-row array [N, ...]), N = P * G, rows p-major (row = p * G + g). Every other key
             travels with its rows through the micro-batches and reaches `losses.policy_loss` as `inputs=`, so a
             loss variant that declares it (`register_variant(inputs=...)`) receives it: a new per-row input needs
             no edit here.

completion_mask vs action_mask: completion_mask is 1 on every token PRESENT in the sequence (attended; the packing
plan packs these, and log-probs are computed at all of them); action_mask (values 0 / 1, action_mask <=
completion_mask, checked) is 1 on the present tokens the policy SAMPLED, the ones trained on. A multi-turn rollout's
inserted observation tokens are present but not actions (`Rollout.action_mask`); single-turn the two are equal.
Everything the loss counts reads action_mask only: the loss mask given to `losses.policy_loss` (policy term, KL,
entropy metric and bonus, GSPO's sequence ratio, truncation and keep masks), every aggregation's denominators
(`losses.batch_denominators`), the token metrics' denominator of optim.skip_zero_advantage and logp_mismatch. So
an observation token adds nothing to the loss, the gradient or a metric, and the gradient with respect to its
log-prob is exactly 0; it still shapes the following tokens' log-probs as their context.

Metrics are a `step_metrics.Metrics`: each carries its reduction over micro-batches and iterations, declared
where it is computed (the loss, its variant, this module), so no table here names them.

Traced hyperparameters: the step function (`build_program(...).step_fn`) also takes `hyperparameters`, {name:
scalar} of `TRACED_HYPERPARAMETERS` (lr, temperature, kl_beta, clip_low, clip_high, entropy_coef) used in place of
the config's values without a recompile (temperature: the one the log-probs, the reference's included, are
taken at); `grpo_jax.population.train` vmaps this one function over a population's members. What the config
decides statically stays static: the reference pass runs when `use_kl` (default loss.kl_beta > 0).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from grpo_jax import distributed, logprobs, losses, packing, sharding
from grpo_jax import step_metrics
from grpo_jax.models import lora
from grpo_jax.models.config import ModelConfig
from grpo_jax.models.decoder import init_params, param_logical_axes
from grpo_jax.optim import make_optimizer, make_schedule

PROMPT_KEYS = ("prompt_tokens", "prompt_mask")
REQUIRED_ROW_KEYS = ("completions", "completion_mask", "advantages", "old_logps")
# read by the step itself; other keys go to the loss as `inputs=`
ROW_KEYS = REQUIRED_ROW_KEYS + ("truncated", "keep", "action_mask")
# The loss input this step computes for a KL estimator that declares it: the exact KL(pi || pi_ref) [N, T].
TOKEN_KL = "token_kl"
# The packing plan's arrays laid out per packed row (split into micro-batches by a reshape; pack_unpack is per row).
PACKED_KEYS = ("pack_source", "pack_prompt")
# The hyperparameters `step_fn(hyperparameters=)` takes as traced values (a population's, one per member): the
# optimizer's peak learning rate, the sampling temperature the log-probs are taken at (a member's own
# rollout.temperature), and the loss fields that may be traced (`losses.TRACEABLE_FIELDS`).
TRACED_HYPERPARAMETERS = ("lr", "temperature") + losses.TRACEABLE_FIELDS
_DTYPES = {"prompt_tokens": jnp.int32, "prompt_mask": jnp.bool_, "completions": jnp.int32,
           "completion_mask": jnp.float32, "advantages": jnp.float32, "old_logps": jnp.float32,
           "truncated": jnp.bool_, "keep": jnp.bool_, "action_mask": jnp.float32}


@flax.struct.dataclass
class TrainState:
    """What the optimizer updates. `params` is the trainable tree: the full params, or the LoRA adapters."""
    params: Any
    opt_state: Any
    step: jax.Array                     # int32 scalar: optimizer updates done so far
    lora_alpha: float = flax.struct.field(pytree_node=False, default=0.0)  # 0.0 = full finetuning


class _Settings(NamedTuple):
    group_size: int
    temperature: float
    norm_length: int
    num_iterations: int
    micro_batch_size: int
    lora_rank: int
    lora_alpha: float
    lora_targets: tuple
    kl_beta: float
    use_kl: bool
    exact_kl: bool
    total_updates: int
    remat: bool
    attention: str
    scan_layers: bool
    pack_completions: bool
    skip_zero_advantage: bool
    seed: int


def _settings(config, use_kl=None, traced=()) -> _Settings:
    """use_kl: whether the step runs the reference pass; None = loss.kl_beta > 0 (a population decides it from its
    members' kl_beta range: see `build_program`). traced: the loss fields that may differ per call (a population's
    member hyperparameters), which the zero-advantage skip must treat as possibly non-zero."""
    losses.ensure_valid(config.loss)  # a no-op after the run's validation (config.validate)
    model = config.model
    rank = int(model.lora_rank)
    if rank < 0:
        raise ValueError(f"model.lora_rank must be >= 0 (0 = full finetuning), got {rank}")
    micro = config.optim.micro_batch_size
    if isinstance(micro, bool) or not isinstance(micro, (int, np.integer)) or micro < 0:
        raise ValueError(f"optim.micro_batch_size must be an integer >= 0 (0 = whole batch), got {micro!r}")
    group = int(config.rollout.group_size)
    if micro and micro % group:
        raise ValueError(f"optim.micro_batch_size = {micro} is not a multiple of rollout.group_size = {group}: "
                         "a micro-batch holds whole prompt groups")
    mu = int(config.loss.num_iterations)
    use_kl = float(config.loss.kl_beta) > 0.0 if use_kl is None else bool(use_kl)
    skip = resolve_skip_zero_advantage(config, use_kl, traced)
    return _Settings(
        group_size=group,
        temperature=float(config.rollout.temperature),
        norm_length=int(config.rollout.max_new_tokens),
        num_iterations=mu,
        micro_batch_size=int(micro),
        lora_rank=rank,
        lora_alpha=float(model.lora_alpha or 2.0 * rank),
        lora_targets=tuple(model.lora_targets),
        kl_beta=float(config.loss.kl_beta),
        use_kl=use_kl,
        exact_kl=use_kl and TOKEN_KL in losses.KL_ESTIMATORS.entry(
            config.loss.kl_estimator).inputs,
        total_updates=max(1, int(config.total_steps)) * mu,
        remat=bool(model.remat),
        attention=str(model.attention),
        scan_layers=bool(model.scan_layers),
        pack_completions=bool(config.optim.pack_completions),
        skip_zero_advantage=skip,
        seed=int(config.seed),
    )


def resolve_skip_zero_advantage(config, use_kl: bool, traced=()) -> bool:
    """optim.skip_zero_advantage as the step applies it: 'auto' is on exactly where it is exact -- the completions
    are packed and every term of the loss vanishes at advantage 0 (`losses.terms_alive_at_zero_advantage`, as the
    plug-ins declare) -- and off elsewhere; True where it is not exact is a ValueError naming why; False is off."""
    value = config.optim.skip_zero_advantage
    if value is False:
        return False
    why = losses.terms_alive_at_zero_advantage(config.loss, use_kl=use_kl, traced=traced)
    if not bool(config.optim.pack_completions):
        why.append("optim.pack_completions = False (the skipped completions are left out of the packing plan)")
    if value == "auto":
        return not why
    if why:
        raise ValueError("optim.skip_zero_advantage = True is not exact here: a completion whose advantage is 0 "
                         "still has a loss or gradient from " + "; ".join(why) + " (use 'auto': on where exact)")
    return True


# ------------------------------------------------------------------------------------------------ state


def _trainable_shapes(model_config: ModelConfig, s: _Settings):
    base = jax.eval_shape(lambda: init_params(model_config, jax.random.PRNGKey(0)))
    if not s.lora_rank:
        return base, base
    return jax.eval_shape(lambda: lora.init_lora(base, s.lora_rank, jax.random.PRNGKey(0), s.lora_targets)), base


def _trainable_shardings(model_config: ModelConfig, s: _Settings, mesh: Mesh, trainable_like):
    if not s.lora_rank:
        return sharding.param_shardings(model_config, mesh, trainable_like)
    logical = lora.lora_logical_axes(param_logical_axes(model_config), trainable_like)
    return sharding.shardings_from_logical(logical, trainable_like, mesh)


def state_shardings(model_config: ModelConfig, config, mesh: Mesh):
    """TrainState of NamedShardings (optimizer moments sharded like their params; counters replicated), derived
    from `jax.eval_shape` of the init, as lmpo does."""
    s = _settings(config)
    tx = make_optimizer(config.optim, s.total_updates)
    trainable, _ = _trainable_shapes(model_config, s)
    t_shard = _trainable_shardings(model_config, s, mesh, trainable)
    opt_shapes = jax.eval_shape(tx.init, trainable)
    rep = sharding.replicated(mesh)
    opt_shard = optax.tree_map_params(tx, lambda _, sh: sh, opt_shapes, t_shard,
                                      transform_non_params=lambda _: rep)
    return TrainState(t_shard, opt_shard, rep, s.lora_alpha if s.lora_rank else 0.0)


def init_train_state(model_config: ModelConfig, params, config, mesh: Mesh):
    """(TrainState, frozen), placed on `mesh`.

    Full finetuning: the state holds a *copy* of `params` (its buffers are donated at every step); `frozen` is
    None and the caller's `params` stay untouched, so they can serve as the reference (pass them as `ref_params`
    when loss.kl_beta > 0; drop them otherwise). LoRA (model.lora_rank > 0): the state holds only the adapters
    (A random, B zero: the policy starts as the base) and their optimizer moments; `frozen` is the base, which is
    also the reference (adapters off): no second copy of the weights."""
    s = _settings(config)
    tx = make_optimizer(config.optim, s.total_updates)
    shardings = state_shardings(model_config, config, mesh)
    base = sharding.shard_params(params, model_config, mesh)
    if s.lora_rank:
        key = jax.random.fold_in(jax.random.PRNGKey(s.seed), 0x10A)
        init = jax.jit(lora.init_lora, static_argnums=(1, 3), out_shardings=shardings.params)
        trainable = init(base, s.lora_rank, key, s.lora_targets)
        frozen = base
    else:
        trainable = jax.tree.map(jnp.copy, base)  # a fresh buffer: the step donates it
        frozen = None
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(trainable)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
    return TrainState(trainable, opt_state, step, shardings.lora_alpha), frozen


def policy_params(model_config: ModelConfig, state: TrainState, frozen):
    """The policy's full params (LoRA merged into the base) for the sampler, evaluation or export."""
    del model_config
    if frozen is None:
        return state.params
    return lora.merge(frozen, state.params, state.lora_alpha, lora.lora_rank(state.params))


# ------------------------------------------------------------------------------------------------ plan


def _check_batch(batch: dict, s: _Settings, mesh: Mesh, packed_rows: int = 0) -> dict:
    required = PROMPT_KEYS + REQUIRED_ROW_KEYS
    missing = [k for k in required if k not in batch]
    if missing:
        raise ValueError(f"train step batch lacks {missing}; it needs {list(required)} "
                         "(+ optional 'action_mask', 'truncated', 'keep', and per-row inputs of the loss variant)")
    p, s_len = np.shape(batch["prompt_tokens"])
    n, t = np.shape(batch["completions"])
    if n != p * s.group_size:
        raise ValueError(f"batch has {n} completions for {p} prompts; expected prompts x rollout.group_size = "
                         f"{p} x {s.group_size} = {p * s.group_size}")
    want = {"prompt_mask": (p, s_len), "completion_mask": (n, t), "old_logps": (n, t), "advantages": (n,),
            "truncated": (n,), "keep": (n,), "action_mask": (n, t)}
    for k, shape in want.items():
        if k in batch and tuple(np.shape(batch[k])) != shape:
            raise ValueError(f"batch['{k}'] has shape {tuple(np.shape(batch[k]))}, expected {shape}")
    extra = {k: v for k, v in batch.items() if k not in PROMPT_KEYS + ROW_KEYS}
    for k, v in extra.items():
        if np.ndim(v) < 1 or np.shape(v)[0] != n:
            raise ValueError(f"batch['{k}'] has shape {tuple(np.shape(v))}: a per-row input of the loss needs one "
                             f"row per completion, [{n}, ...]")
    micro = s.micro_batch_size or n
    if n % micro:
        raise ValueError(f"optim.micro_batch_size = {micro} does not divide the step's {n} sequences "
                         f"({p} prompts x {s.group_size})")
    sharding.check_batch_divisible(p, mesh, "batch size (prompts in the step)")
    sharding.check_batch_divisible(micro, mesh, "micro-batch size (optim.micro_batch_size, sequences)")
    out = {k: batch[k] for k in required}
    out["truncated"] = batch.get("truncated", np.zeros((n,), bool))
    out["keep"] = batch.get("keep", np.ones((n,), bool))
    if "action_mask" in batch:
        out["action_mask"] = batch["action_mask"]
    out = {k: (v.astype(_DTYPES[k]) if isinstance(v, jax.Array) else np.asarray(v, _DTYPES[k]))
           for k, v in out.items()}
    if "action_mask" in out:
        _check_action_mask(out["action_mask"], out["completion_mask"])
    else:  # single-turn: every present token is the policy's
        out["action_mask"] = out["completion_mask"]
    out.update({k: (v if isinstance(v, jax.Array) else np.asarray(v)) for k, v in extra.items()})
    if s.pack_completions:
        out.update(_packing_plan(out["completion_mask"], s, n // micro, mesh, packed_rows,
                                 out["advantages"] if s.skip_zero_advantage else None))
    return out


def _check_action_mask(action_mask, completion_mask) -> None:
    """ValueError unless action_mask (shape already checked) is 0 / 1 and 0 wherever completion_mask is 0."""
    action, present = distributed.to_host((action_mask, completion_mask))
    bad = ~((action == 0) | (action == 1)) | ((action > 0) & ~(present > 0))
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"batch['action_mask'] must be 0 or 1, and 0 wherever completion_mask is 0 (a trained token "
                         f"is a present token): at row {r}, column {c} action_mask = {float(action[r, c])!r}, "
                         f"completion_mask = {float(present[r, c])!r} ({int(bad.sum())} such positions)")


def _packing_plan(completion_mask, s: _Settings, num_micro: int, mesh: Mesh, min_rows: int = 0,
                  advantages=None) -> dict:
    """The batch's packing plan (`grpo_jax.packing`) as batch arrays whose leading axis splits over the data
    shards: pack_source [M * R, T], pack_prompt [M * R], pack_unpack [N, T]; R at least `min_rows`. It packs the
    PRESENT tokens (lengths from completion_mask, observation tokens included: they are attended). With
    `advantages` [N] (optim.skip_zero_advantage) rows whose advantage is exactly 0 get no packed slot."""
    mask = distributed.to_host(completion_mask)
    lengths = packing.lengths_from_mask(mask)
    if advantages is not None:
        lengths = np.where(distributed.to_host(advantages) != 0, lengths, 0)
    plan = packing.plan(lengths, s.group_size, num_micro, mask.shape[1], sharding.batch_shards(mesh),
                        min_rows=min_rows, geometric=advantages is not None)  # R ranges from 1 row to all
    m, r, t = plan.source.shape
    return {"pack_source": plan.source.reshape(m * r, t), "pack_prompt": plan.prompt.reshape(m * r),
            "pack_unpack": plan.unpack}


def tokens_computed(checked: dict) -> int:
    """Completion positions one pass computes for a batch `Program.check_batch` returned (without a member axis)."""
    return int(np.size(checked.get("pack_source", checked["completions"])))


# ------------------------------------------------------------------------------------------------ prepare


def _row_constraint(x, mesh: Mesh, axis: int):
    """Keep dim `axis` (rows) split over ('data', 'fsdp') when it divides; otherwise let XLA choose."""
    if x.shape[axis] % sharding.batch_shards(mesh):
        return x
    spec = [None] * x.ndim
    spec[axis] = sharding.BATCH_AXES
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*spec)))


def _split(x, num_micro: int, group: int, mesh: Mesh):
    """[P * group, ...] p-major -> [M, P / M * group, ...]; micro-batch m holds prompts m, M + m, 2M + m, ...

    Strided so that, with rows held in contiguous blocks per device and P / M a multiple of the data shards, every
    micro-batch is spread evenly over the devices without moving data."""
    prompts = x.shape[0] // group
    y = x.reshape((prompts // num_micro, num_micro, group) + x.shape[1:])
    y = jnp.swapaxes(y, 0, 1).reshape((num_micro, (prompts // num_micro) * group) + x.shape[1:])
    return _row_constraint(y, mesh, 1)


def _layout(mb: dict):
    """The micro-batch's `packing.Layout`, or None when the batch is not packed (optim.pack_completions False)."""
    if packing.KEYS[0] not in mb:
        return None
    return packing.Layout(*(mb[k] for k in packing.KEYS))


def reference_logprobs(model_config: ModelConfig, ref_params, micro_batches: dict, group_size: int,
                       temperature: float):
    """Reference log-probs [M, rows, T] of every micro-batch (no gradient, no entropy). Module-level so that a test
    can count its calls."""
    def one(mb):
        lp, _ = logprobs.completion_logprobs(model_config, ref_params, mb["prompt_tokens"], mb["prompt_mask"],
                                             mb["completions"], group_size, temperature, with_entropy=False,
                                             layout=_layout(mb))
        return lp
    if jax.tree.leaves(micro_batches)[0].shape[0] == 1:  # one micro-batch: no loop
        return jax.lax.stop_gradient(one(jax.tree.map(lambda x: x[0], micro_batches))[None])
    return jax.lax.stop_gradient(jax.lax.map(one, micro_batches))


def reference_hidden(model_config: ModelConfig, ref_params, micro_batches: dict, group_size: int):
    """The reference's final hidden states [M, rows, T, D] at every completion position of every micro-batch (no
    gradient), for the exact per-token KL; packed, [M, R, T, D] at the packed positions. Module-level so that a
    test can count its calls."""
    def one(mb):
        prompt = logprobs.encode_prompt(model_config, ref_params, mb["prompt_tokens"], mb["prompt_mask"])
        return logprobs.completion_hidden(model_config, ref_params, prompt, mb["completions"], group_size,
                                          _layout(mb))
    if jax.tree.leaves(micro_batches)[0].shape[0] == 1:  # one micro-batch: no loop
        return jax.lax.stop_gradient(one(jax.tree.map(lambda x: x[0], micro_batches))[None])
    return jax.lax.stop_gradient(jax.lax.map(one, micro_batches))


def _reference_source(s: _Settings, frozen, ref_params):
    """The reference policy's params: with LoRA the frozen base (the adapters off), else `ref_params`."""
    return frozen if s.lora_rank else ref_params


class Prepared(NamedTuple):
    """What every one of a step's mu iterations reads, computed once from the batch by `prepare_batch`."""
    micro_batches: dict  # every batch array split into M micro-batches of whole prompt groups: [M, rows, ...]
    reference: Any       # reference log-probs [M, rows, T]; with the exact KL its hidden states; None without KL
    denominators: Any    # the loss's denominators over the whole batch (`losses.batch_denominators`)
    num_valid: jax.Array  # float32 scalar: the tokens trained on (action_mask) (the token metrics' denominator)


def prepare_batch(model_config: ModelConfig, s: _Settings, loss_cfg, mesh: Mesh, batch: dict, frozen, ref_params,
                  temperature) -> Prepared:
    """Split into micro-batches, global denominators, reference log-probs (once, at `temperature`) or, for the exact
    KL, the reference's hidden states; no reference pass unless `s.use_kl`."""
    n = batch["completions"].shape[0]
    num_micro = n // (s.micro_batch_size or n)
    action = batch["action_mask"]  # the trained tokens: every denominator counts these only
    dens = losses.batch_denominators(action, loss_cfg, s.norm_length, batch["truncated"], batch["keep"])
    valid = action > 0
    if s.skip_zero_advantage:  # the token metrics' denominator: the completions trained on
        valid = valid & (batch["advantages"] != 0)[:, None]
    num_valid = jnp.sum(valid.astype(jnp.float32))
    mbs = {k: (_split(v, num_micro, 1 if k in PROMPT_KEYS else s.group_size, mesh) if k not in PACKED_KEYS
               else _row_constraint(v.reshape((num_micro, -1) + v.shape[1:]), mesh, 1))
           for k, v in batch.items()}
    ref = None
    if s.use_kl:
        ref_source = _reference_source(s, frozen, ref_params)
        rows = {k: mbs[k] for k in PROMPT_KEYS + ("completions",) + packing.KEYS if k in mbs}
        if s.exact_kl:
            ref = reference_hidden(model_config, ref_source, rows, s.group_size)
        else:
            ref = reference_logprobs(model_config, ref_source, rows, s.group_size, temperature)
    return Prepared(mbs, ref, dens, num_valid)


# ------------------------------------------------------------------------------------------------ loss


def _full_params(s: _Settings, trainable, frozen):
    """The policy's params: the trainable tree, or with LoRA the adapters merged into the frozen base."""
    return lora.merge(frozen, trainable, s.lora_alpha, s.lora_rank) if s.lora_rank else trainable


def micro_batch_loss(model_config: ModelConfig, s: _Settings, loss_cfg, trainable, frozen, mb: dict, ref_mb,
                     denominators, num_valid, ref_params, loss_hp: dict, temperature):
    """(loss, metrics) of one micro-batch: a local sum over the whole batch's `denominators`, so that the sum over
    micro-batches is the full-batch loss. The loss mask is mb['action_mask'] (the policy's tokens; log-probs are
    taken at every present token, observations included). ref_mb: the micro-batch's reference log-probs [rows, T],
    or with the exact KL its hidden states (`ref_params`: the reference whose head reads them). loss_hp: the loss's
    traced hyperparameters ({} = the config's); temperature: the log-probs' (rollout.temperature or a member's)."""
    params = _full_params(s, trainable, frozen)
    reference = (ref_params, ref_mb) if s.exact_kl else None
    out = logprobs.completion_logprobs(model_config, params, mb["prompt_tokens"], mb["prompt_mask"],
                                       mb["completions"], s.group_size, temperature, reference=reference,
                                       layout=_layout(mb))
    logps, entropy = out[0], out[1]
    skipped_entropy = None
    if s.skip_zero_advantage:  # rows without a packed slot: ratio exactly 1, so their loss is -0 * f(1) = 0
        trained = (mb["advantages"] != 0)[:, None]
        logps = jnp.where(trained, logps, mb["old_logps"])
        skipped_entropy, entropy = jnp.where(trained & (mb["action_mask"] > 0), entropy, 0.0), None
    inputs = {k: v for k, v in mb.items() if k not in PROMPT_KEYS + ROW_KEYS + packing.KEYS}
    if s.exact_kl:
        inputs[TOKEN_KL] = out[2]
    ref_lp = None if s.exact_kl else ref_mb
    loss, metrics = losses.policy_loss(logps, mb["old_logps"], ref_lp, mb["advantages"], mb["action_mask"],
                                       loss_cfg, norm_length=s.norm_length, truncated=mb["truncated"],
                                       entropy=entropy, denominators=denominators, keep=mb["keep"], inputs=inputs,
                                       hyperparameters=loss_hp or None)
    # Sampler-vs-trainer mismatch (Tunix logs it every step): exact sampling gives 0 at the first iteration,
    # so it is reported for the first iteration (params = the sampler's).
    valid = mb["action_mask"] > 0
    gap = jnp.where(valid, jnp.abs(mb["old_logps"] - jax.lax.stop_gradient(logps)), 0.0)
    metrics.add("logp_mismatch/max", jnp.max(gap), "max", iterations="first")
    metrics.add("logp_mismatch/mean", jnp.sum(gap) / jnp.maximum(num_valid, 1.0), "sum", iterations="first")
    if skipped_entropy is not None:  # the token mean over the completions trained on
        metrics.add("entropy", jnp.sum(skipped_entropy) / jnp.maximum(num_valid, 1.0))
    return loss, metrics


# The gradient of `micro_batch_loss` with respect to `trainable` (argument 3), with its metrics.
_micro_batch_grad = jax.grad(micro_batch_loss, argnums=3, has_aux=True)


# ------------------------------------------------------------------------------------------------ accumulate


def accumulate_gradient(model_config: ModelConfig, s: _Settings, loss_cfg, trainable, frozen, prepared: Prepared,
                        ref_params, loss_hp=None, temperature=None):
    """(gradient, metrics): the sum of the micro-batch gradients (= the full-batch gradient, accumulated in
    float32 and returned in the params' dtypes) and the metrics combined over micro-batches by their reductions.
    temperature None: rollout.temperature."""
    loss_hp = loss_hp or {}
    temperature = s.temperature if temperature is None else temperature
    ref_params = _reference_source(s, frozen, ref_params) if s.exact_kl else None  # its head, for the exact KL

    def grad_of(mb, ref_mb):
        return _micro_batch_grad(model_config, s, loss_cfg, trainable, frozen, mb, ref_mb, prepared.denominators,
                                 prepared.num_valid, ref_params, loss_hp, temperature)

    mbs, ref = prepared.micro_batches, prepared.reference
    num_micro = jax.tree.leaves(mbs)[0].shape[0]
    first = jax.tree.map(lambda x: x[0], (mbs, ref))
    if num_micro == 1:  # one micro-batch: no loop
        return grad_of(*first)
    metric_shapes = jax.eval_shape(lambda: grad_of(*first))[1]
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
    init = (zeros, step_metrics.identity(metric_shapes))

    def body(carry, xs):
        g_sum, m_sum = carry
        g, m = grad_of(*xs)
        g_sum = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_sum, g)  # accumulate in float32
        return (g_sum, step_metrics.combine_micro_batches(m_sum, m)), None

    (grads, metrics), _ = jax.lax.scan(body, init, (mbs, ref))
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trainable)
    return grads, step_metrics.finish_micro_batches(metrics, num_micro)


# ------------------------------------------------------------------------------------------------ update


def optimizer_update(model_config: ModelConfig, s: _Settings, loss_cfg, tx, schedule, frozen, ref_params,
                     prepared: Prepared, loss_hp: dict, temperature, params, opt_state, step):
    """One optimizer update: ((params, opt_state, step + 1), metrics), with grad_norm (before clipping) and the
    update's learning_rate added to the accumulated gradient's metrics."""
    grads, metrics = accumulate_gradient(model_config, s, loss_cfg, params, frozen, prepared, ref_params, loss_hp,
                                         temperature)
    metrics.add("grad_norm", optax.tree.norm(grads), "mean")
    metrics.add("learning_rate", jnp.asarray(schedule(step), jnp.float32), "mean")
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, step + 1), metrics


def step_fn(model_config: ModelConfig, s: _Settings, loss_cfg, optim_cfg, mesh: Mesh, state: TrainState, frozen,
            ref_params, batch: dict, hyperparameters=None):
    """(state, metrics): the batch prepared once, then mu = loss.num_iterations optimizer updates on it, their
    metrics reduced over the iterations. `hyperparameters`: {name: scalar} of `TRACED_HYPERPARAMETERS` (may be
    traced), each in place of the config's value: 'lr' the optimizer's peak learning rate
    (`optim.make_optimizer(lr=)`), 'temperature' the log-probs', the others the loss's
    (`losses.policy_loss(hyperparameters=)`)."""
    loss_hp = dict(hyperparameters or {})
    bad = sorted(set(loss_hp) - set(TRACED_HYPERPARAMETERS))
    if bad:
        raise ValueError(f"the train step carries the hyperparameters {list(TRACED_HYPERPARAMETERS)} as traced "
                         f"values, not {bad}")
    lr = loss_hp.pop("lr", None)
    temperature = loss_hp.pop("temperature", s.temperature)
    if not s.use_kl:  # no reference pass in this program: every kl_beta is 0 (checked by the caller, on values)
        loss_hp.pop("kl_beta", None)
    if s.skip_zero_advantage and "entropy_coef" in loss_hp:
        raise ValueError("this step skips zero-advantage completions, so it cannot take a traced entropy_coef: "
                         "build it with traced=('entropy_coef',)")
    tx = make_optimizer(optim_cfg, s.total_updates, lr)
    schedule = make_schedule(optim_cfg, s.total_updates, lr)
    prepared = prepare_batch(model_config, s, loss_cfg, mesh, batch, frozen, ref_params, temperature)

    def iteration(carry, _):  # lax.scan's body
        return optimizer_update(model_config, s, loss_cfg, tx, schedule, frozen, ref_params, prepared, loss_hp,
                                temperature, *carry)

    carry = (state.params, state.opt_state, state.step)
    if s.num_iterations == 1:
        carry, metrics = iteration(carry, None)
        per_iter = jax.tree.map(lambda x: x[None], metrics)
    else:
        carry, per_iter = jax.lax.scan(iteration, carry, None, length=s.num_iterations)
    params, opt_state, step = carry
    return state.replace(params=params, opt_state=opt_state, step=step), step_metrics.reduce_iterations(per_iter)


def grad_fn(model_config: ModelConfig, s: _Settings, loss_cfg, mesh: Mesh, trainable, frozen, ref_params,
            batch: dict):
    """(gradient, metrics) of one iteration at the config's hyperparameters, as `step_fn` accumulates it."""
    prepared = prepare_batch(model_config, s, loss_cfg, mesh, batch, frozen, ref_params, s.temperature)
    return accumulate_gradient(model_config, s, loss_cfg, trainable, frozen, prepared, ref_params)


# ------------------------------------------------------------------------------------------------ build


class Built(NamedTuple):
    """The step's functions with the config's settings bound (unjitted, traced under the trainer's rules table)."""
    step_fn: Any    # (state, frozen, ref_params, batch, hyperparameters=None) -> (state, metrics)
    grad_fn: Any    # (trainable, frozen, ref_params, batch) -> (gradient, metrics)
    settings: _Settings
    tx: optax.GradientTransformation  # the optimizer at the config's learning rate


def _build(model_config: ModelConfig, config, mesh: Mesh, use_kl=None, traced=()) -> Built:
    """The `Built` of this config: `step_fn` and `grad_fn` with the model config (model.remat, .attention,
    .scan_layers applied), the settings, the loss and optim configs and the mesh bound."""
    s = _settings(config, use_kl, traced)
    model_config = model_config.replace(remat=s.remat, attention=s.attention, scan_layers=s.scan_layers)
    tx = make_optimizer(config.optim, s.total_updates)
    step = functools.partial(step_fn, model_config, s, config.loss, config.optim, mesh)
    grad = functools.partial(grad_fn, model_config, s, config.loss, mesh)
    train_rules = sharding.rules_for("train")  # traced under the trainer's table: activations constrained by name
    return Built(sharding.with_rules(step, mesh, train_rules), sharding.with_rules(grad, mesh, train_rules), s, tx)


def _arg_shardings(model_config: ModelConfig, config, mesh: Mesh, s: _Settings):
    base_like = jax.eval_shape(lambda: init_params(model_config, jax.random.PRNGKey(0)))
    params_sh = sharding.param_shardings(model_config, mesh, base_like)
    frozen_sh = params_sh if s.lora_rank else None
    ref_sh = params_sh if (s.use_kl and not s.lora_rank) else None
    batch_sh = sharding.batch_sharding(mesh)  # a prefix: every batch array's rows, whatever its keys
    return frozen_sh, ref_sh, batch_sh


def _check_ref(s: _Settings, ref_params):
    if not s.use_kl:
        return None  # kl_beta = 0: the reference is never read (and never computed)
    if s.lora_rank:
        if ref_params is not None:
            raise ValueError("with LoRA (model.lora_rank > 0) the reference is the frozen base with the adapters "
                             "off; pass ref_params=None (no second copy of the weights)")
        return None
    if ref_params is None:
        why = (f"loss.kl_beta = {s.kl_beta} > 0" if s.kl_beta > 0 else
               "a member's kl_beta that may be > 0 (population.ranges.kl_beta)")
        raise ValueError(f"{why} needs the reference params: pass the initial params as ref_params (or set "
                         "loss.kl_beta = 0)")
    return ref_params


def _place(tree, shardings):
    return None if tree is None else jax.device_put(tree, shardings)


class Program(NamedTuple):
    """The step's unjitted pieces, for a caller that wraps the one step function (`grpo_jax.population.train` vmaps
    it over members): `step_fn(state, frozen, ref_params, batch, hyperparameters=None) -> (state, metrics)`, the
    settings, the arguments' shardings, and the host-side checks (clear ValueErrors) that `make_train_step` runs."""
    step_fn: Any
    settings: _Settings
    state_shardings: TrainState
    frozen_sharding: Any
    ref_sharding: Any
    batch_sharding: Any
    mesh: Mesh

    def check_ref(self, ref_params):
        """`ref_params` as the step reads them (None when never read); ValueError when missing or misplaced."""
        return _check_ref(self.settings, ref_params)

    def check_frozen(self, frozen) -> None:
        s = self.settings
        if (frozen is None) != (not s.lora_rank):
            raise ValueError(f"frozen must be {'the LoRA base params' if s.lora_rank else 'None'} for "
                             f"model.lora_rank = {s.lora_rank} (use what init_train_state returned)")

    def check_batch(self, batch: dict, packed_rows: int = 0) -> dict:
        """The batch checked, typed and with its packing plan (R at least `packed_rows`), still on the host."""
        return _check_batch(batch, self.settings, self.mesh, packed_rows)

    def packed_rows(self, checked: dict) -> int:
        """R, the packed rows per micro-batch of a batch `check_batch` returned (0 when it is not packed)."""
        if "pack_source" not in checked:
            return 0
        n = np.shape(checked["completions"])[0]
        return int(np.shape(checked["pack_source"])[0]) // (n // (self.settings.micro_batch_size or n))

    def place(self, frozen, ref_params) -> tuple:
        """(frozen, ref_params) placed on the mesh by their shardings (None stays None)."""
        return _place(frozen, self.frozen_sharding), _place(ref_params, self.ref_sharding)


def build_program(model_config: ModelConfig, config, mesh: Mesh, use_kl=None, traced=()) -> Program:
    """The `Program` of this config. use_kl: whether the step runs the reference pass (None: loss.kl_beta > 0); a
    population sets it when any member's kl_beta may be > 0, and names its members' traced loss fields."""
    built = _build(model_config, config, mesh, use_kl, traced)
    s = built.settings
    frozen_sh, ref_sh, batch_sh = _arg_shardings(model_config, config, mesh, s)
    return Program(built.step_fn, s, state_shardings(model_config, config, mesh), frozen_sh, ref_sh, batch_sh, mesh)


def make_train_step(model_config: ModelConfig, config, mesh: Mesh, compiler_options=None):
    """A `TrainStep`: step(state, frozen, ref_params, batch) -> (state, metrics), one jitted call =
    loss.num_iterations updates.

    `frozen`: None (full finetuning) or the LoRA base from `init_train_state`. `ref_params`: the reference policy's
    params in full finetuning with loss.kl_beta > 0, else None (ignored when kl_beta = 0). `state` is donated.
    Metrics (a `step_metrics.Metrics` of scalars): those of `losses.policy_loss` (loss, policy_loss, kl,
    entropy, clip_ratio/*, ratio/*, and the variant's own), combined over micro-batches and the mu iterations by
    each one's declared reduction (ratio/max and ratio/min: max / min), plus grad_norm (before clipping),
    learning_rate, and logp_mismatch/max, logp_mismatch/mean = max / mean |old_logps - trainer log-probs| over
    trained tokens (action_mask) at the first iteration. `compiler_options` go to `jax.jit` (the tests pass
    {'xla_backend_optimization_level': 0, 'xla_cpu_use_fusion_emitters': False} so that their tiny programs
    compile quicker on CPU)."""
    program = build_program(model_config, config, mesh)

    def step_fn(state, frozen, ref_params, batch):
        return program.step_fn(state, frozen, ref_params, batch)

    batch_sh = program.batch_sharding
    jitted = jax.jit(step_fn, in_shardings=(program.state_shardings, program.frozen_sharding, program.ref_sharding,
                                            batch_sh),
                     out_shardings=(program.state_shardings, None), donate_argnums=(0,),
                     compiler_options=compiler_options)

    def prepare(state: TrainState, frozen, ref_params, batch: dict) -> PreparedStep:
        """Checks the arguments (clear ValueErrors) and places them on the mesh: the jitted program's inputs."""
        ref_params = program.check_ref(ref_params)
        program.check_frozen(frozen)
        checked = program.check_batch(batch)
        args = (state, *program.place(frozen, ref_params), jax.device_put(checked, batch_sh))
        return PreparedStep(args, tokens_computed(checked))

    return TrainStep(jitted, prepare)


class PreparedStep(NamedTuple):
    """A train step's checked, placed inputs (`args`, for `jitted(*args)` or ahead-of-time `jitted.lower(*args)`) and
    the completion positions one pass of its program computes (`tokens_computed`, padding included: the packed
    rows' M * R * T, else N * T; one member's with a population)."""
    args: tuple
    tokens_computed: int


class TrainStep:
    """A jitted train step: `step(*inputs) -> (state, metrics)` is `step.execute(step.prepare(*inputs))`; a caller that
    logs what the step computed calls the two (`PreparedStep.tokens_computed`)."""

    def __init__(self, jitted, prepare):
        self.jitted = jitted
        self.prepare = prepare

    def execute(self, prepared: PreparedStep):
        return self.jitted(*prepared.args)

    def __call__(self, *inputs, **keywords):
        return self.execute(self.prepare(*inputs, **keywords))


def make_grad_fn(model_config: ModelConfig, config, mesh: Mesh, compiler_options=None):
    """fn(trainable, frozen, ref_params, batch) -> (gradient, metrics) of one iteration, accumulated over
    micro-batches exactly as the train step does (for tests and inspection; not donated)."""
    built = _build(model_config, config, mesh)
    s = built.settings
    frozen_sh, ref_sh, batch_sh = _arg_shardings(model_config, config, mesh, s)
    jitted = jax.jit(built.grad_fn, compiler_options=compiler_options)

    def fn(trainable, frozen, ref_params, batch):
        ref_params = _check_ref(s, ref_params)
        b = jax.device_put(_check_batch(batch, s, mesh), batch_sh)
        return jitted(trainable, _place(frozen, frozen_sh), _place(ref_params, ref_sh), b)

    return fn
