"""K population members updated side by side in one jitted program: the one train step mapped over members
(`jax.lax.map`, population.members_at_once of them vmapped together).

    states, frozen = init_population_state(model_config, params, config, mesh, size=K)
    step = make_population_train_step(model_config, config, mesh)
    states, metrics = step(states, frozen, ref_params, batches, hyperparameters)   # metrics: [K] each
    states = take_members(states, parents)                                         # after an evolution

- `states` is a `train_step.TrainState` whose leaves carry a leading member axis [K, ...]: each member's trainable
  tree (its LoRA adapters over ONE shared frozen base, or its full params) and its optimizer moments and counter.
  `frozen` (the LoRA base) and `ref_params` (full finetuning's reference) are shared, not mapped.
- `batches` is the train step's batch dict with a leading member axis on every array: member k trains on its own
  completions (and advantages, old log-probs, ...) of the SAME prompts.
- `hyperparameters` is {name: float [K]} of `train_step.TRACED_HYPERPARAMETERS` (lr, temperature, kl_beta,
  clip_low, clip_high, entropy_coef), one traced value per member, so members differ without a recompile; a name
  left out takes the config's value for every member. 'lr' is the member's peak learning rate in place of optim.lr
  (the schedule's shape is the config's; AdamW's decoupled weight decay is scaled by it as by optim.lr).
  'temperature' is the member's sampling temperature, at which its log-probs (and the reference's) are taken. The
  others reach `losses.policy_loss(hyperparameters=)`.

Invariant: member k's result is the single-policy step's on member k's state and batch with member k's
hyperparameters written into the config (`population.with_hyperparameters`), up to float32 rounding: there is one
step function (`train_step.build_program(...).step_fn`) and this module only maps it.

Static choices, fixed per program:
- population.members_at_once = b: the members' updates run b at a time, `jax.lax.map(batch_size=b)` over the
  member axis (1, the default: one member after another, each exactly the single step's program; 0 or >= K: all K
  in one `jax.vmap`, batched matmuls over members' own merged weights). The results are the same either way
  (tests/test_population_train_step.py); what each costs: `python -m benchmarks population` (docs/performance.md).
- the reference pass runs when loss.kl_beta > 0 or, with the population on, when kl_beta is a member hyperparameter
  whose range allows a value > 0 (`reference_needed`); a member with kl_beta = 0 then adds 0 * KL (its `kl` metric
  is still logged). Without the pass every given kl_beta must be 0 (checked on the values).
- packing (optim.pack_completions): each member's plan is made on the host from its own completions, with R (packed
  rows per micro-batch) the largest over members, so the plans stack (`packing.plan(min_rows=)`: padding rows).

The sampler side is `population/sampling.py` (`sample_members`: LoRA members' completions in one decode loop
over the shared base), the loop `population/experiment.py`. top_p is the sampler's alone (log-probs are of the
full softmax); group_size is the loop's (masked rows). Not here yet: a `mesh.member` axis (members are
replicated over the mesh; each member's rows shard over data x fsdp as usual). With LoRA the vmapped step merges
each member's adapters into its own copy of the adapted kernels ([K, ...] merged weights exist in the program,
unlike the sampler's unmerged adapters); the reference pass reads the shared base once for all members' rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from grpo_jax import losses, sharding, train_step
from grpo_jax.models.config import ModelConfig
from grpo_jax.population.config import enabled, member_names

TRAIN_HYPERPARAMETERS = train_step.TRACED_HYPERPARAMETERS


def reference_needed(config) -> bool:
    """Whether the population step runs the reference pass: loss.kl_beta > 0, or (population on) a member's kl_beta
    may leave 0 (kl_beta is a member hyperparameter with population.ranges.kl_beta max > 0)."""
    if float(config.loss.kl_beta) > 0.0:
        return True
    if "population" not in config or not enabled(config):
        return False
    return "kl_beta" in member_names(config.population) and float(config.population.ranges.kl_beta[1]) > 0.0


def traced_loss_fields(config) -> tuple:
    """The loss fields the members carry as traced values (population on): the step treats them as possibly
    non-zero where that decides its structure (e.g. whether zero-advantage completions may be skipped)."""
    if "population" not in config or not enabled(config):
        return ()
    return tuple(name for name in member_names(config.population) if name in losses.TRACEABLE_FIELDS)


def stack_states(states: list) -> train_step.TrainState:
    """K TrainStates (same structure and lora_alpha) -> one with a leading member axis [K, ...] on every leaf."""
    if not states:
        raise ValueError("stack_states needs at least one TrainState")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def member(states: train_step.TrainState, k: int) -> train_step.TrainState:
    """Member k's TrainState (for `train_step.policy_params`, evaluation, export)."""
    return jax.tree.map(lambda x: x[k], states)


def num_members(states: train_step.TrainState) -> int:
    return int(jax.tree.leaves(states)[0].shape[0])


def take_members(states: train_step.TrainState, parents) -> train_step.TrainState:
    """The population after selection: member k becomes a copy of member parents[k] -- its params, optimizer
    moments and update counter (a learning-rate mutation afterwards keeps the moments: lr is a separate input).
    Returns fresh buffers (the step donates its states)."""
    k = num_members(states)
    parents = np.asarray(parents)
    if parents.ndim != 1 or parents.shape[0] != k or not np.issubdtype(parents.dtype, np.integer):
        raise ValueError(f"parents must be {k} integer member indices, got {parents!r}")
    if parents.min() < 0 or parents.max() >= k:
        raise ValueError(f"parents must index members 0..{k - 1}, got {parents.tolist()}")
    index = jnp.asarray(parents, jnp.int32)
    return jax.tree.map(lambda x: jnp.take(x, index, axis=0), states)


def _stacked_sharding(sh):
    """A sharding of a member's array -> the same with an unsharded leading member axis."""
    return NamedSharding(sh.mesh, PartitionSpec(None, *sh.spec))


def population_state_shardings(model_config: ModelConfig, config, mesh):
    """`train_step.state_shardings` with a leading (replicated) member axis on every leaf."""
    return jax.tree.map(_stacked_sharding, train_step.state_shardings(model_config, config, mesh))


def init_population_state(model_config: ModelConfig, params, config, mesh, size: int = 0):
    """(states [K, ...], frozen): K copies of `train_step.init_train_state`'s state -- members start as one policy
    (the same adapters and zero moments; AgileRL's clones) -- and the shared frozen base (None in full finetuning).
    size: K; 0 = population.size."""
    k = int(size or config.population.size)
    if k < 1:
        raise ValueError(f"a population needs size >= 1 members, got {k} (set population.size or pass size=)")
    state, frozen = train_step.init_train_state(model_config, params, config, mesh)
    shardings = population_state_shardings(model_config, config, mesh)
    states = jax.device_put(jax.tree.map(lambda x: jnp.broadcast_to(x, (k,) + x.shape), state), shardings)
    return states, frozen


def _stack(values: list):
    if any(isinstance(v, jax.Array) for v in values):
        return jnp.stack(values)
    return np.stack(values)


def _check_hyperparameters(hyperparameters, k: int, use_kl: bool) -> dict:
    out = {}
    for name, value in dict(hyperparameters or {}).items():
        if name not in TRAIN_HYPERPARAMETERS:
            raise ValueError(f"the population train step carries {list(TRAIN_HYPERPARAMETERS)} per member, not "
                             f"{name!r} (top_p is the sampler's, group_size the runner's)")
        v = np.asarray(jax.device_get(value), np.float32)
        if v.shape != (k,):
            raise ValueError(f"hyperparameters[{name!r}] must hold one value per member, shape ({k},), got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"hyperparameters[{name!r}] must be finite, got {v.tolist()}")
        if name in ("lr", "kl_beta", "clip_high", "entropy_coef") and np.any(v < 0):
            raise ValueError(f"hyperparameters[{name!r}] must be >= 0, got {v.tolist()}")
        if name == "temperature" and np.any(v <= 0):
            raise ValueError(f"hyperparameters['temperature'] must be > 0, got {v.tolist()}")
        if name == "clip_low" and np.any((v < 0) | (v > 1)):
            raise ValueError(f"hyperparameters['clip_low'] must lie in [0, 1], got {v.tolist()}")
        if name == "kl_beta" and not use_kl and np.any(v > 0):
            raise ValueError(f"hyperparameters['kl_beta'] = {v.tolist()} but this step runs no reference pass "
                             "(loss.kl_beta = 0 and no population.ranges.kl_beta above 0)")
        out[name] = v
    return out


def make_population_train_step(model_config: ModelConfig, config, mesh, compiler_options=None):
    """A `train_step.TrainStep`: step(states, frozen, ref_params, batches, hyperparameters) -> (states, metrics),
    every member's loss.num_iterations updates in one jitted call (`states` donated); metrics as the single
    step's, each [K].
    See the module docstring for the arguments."""
    program = train_step.build_program(model_config, config, mesh, use_kl=reference_needed(config),
                                       traced=traced_loss_fields(config))
    use_kl = program.settings.use_kl
    states_sh = population_state_shardings(model_config, config, mesh)
    batch_sh = _stacked_sharding(program.batch_sharding)  # [K, rows, ...]: rows over data x fsdp
    rep = sharding.replicated(mesh)

    at_once = int(config.population.members_at_once)

    def population_fn(states, frozen, ref_params, batches, hyperparameters):
        def one(args):
            state, batch, values = args
            return program.step_fn(state, frozen, ref_params, batch, values)
        k = num_members(states)
        if at_once <= 0 or at_once >= k:  # every member in one vmapped step
            return jax.vmap(lambda *a: one(a))(states, batches, hyperparameters)
        return jax.lax.map(one, (states, batches, hyperparameters), batch_size=at_once)

    jitted = jax.jit(population_fn, in_shardings=(states_sh, program.frozen_sharding, program.ref_sharding,
                                                  batch_sh, rep),
                     out_shardings=(states_sh, None), donate_argnums=(0,), compiler_options=compiler_options)

    def prepare(states, frozen, ref_params, batches: dict, hyperparameters=None) -> train_step.PreparedStep:
        """Checks the arguments (clear ValueErrors), makes each member's packing plan with a common R, and places
        everything on the mesh: the jitted program's inputs."""
        k = num_members(states)
        ref_params = program.check_ref(ref_params)
        program.check_frozen(frozen)
        for key, v in batches.items():
            if np.ndim(v) < 1 or np.shape(v)[0] != k:
                raise ValueError(f"batches[{key!r}] has shape {tuple(np.shape(v))}: every array needs a leading "
                                 f"member axis of the {k} members")
        members = [{key: v[i] for key, v in batches.items()} for i in range(k)]
        checked = [program.check_batch(m) for m in members]
        rows = max(program.packed_rows(c) for c in checked)
        checked = [c if program.packed_rows(c) == rows else program.check_batch(m, packed_rows=rows)
                   for m, c in zip(members, checked)]
        stacked = {key: _stack([c[key] for c in checked]) for key in checked[0]}
        values = _check_hyperparameters(hyperparameters, k, use_kl)
        args = (states, *program.place(frozen, ref_params), jax.device_put(stacked, batch_sh),
                jax.device_put(values, rep))
        return train_step.PreparedStep(args, train_step.tokens_computed(checked[0]))

    return train_step.TrainStep(jitted, prepare)
