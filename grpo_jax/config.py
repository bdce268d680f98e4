"""The full experiment config: every key of the schema with its default, and `validate(config)`, once per run.

An experiment file (configs/*.py) starts from `base_config()` and changes what it needs:

    def get_config(arg=None):
        c = config_lib.base_config()       # from grpo_jax import config as config_lib
        c.task.name = "countdown"
        ...
        return c

`base_config()` is assembled from what is registered when it runs (grpo_jax.registry): the `loss` section holds
the core fields declared by `grpo_jax.losses` and `grpo_jax.advantages` plus every registered loss variant's,
KL estimator's, aggregation's and advantage plug-in's own fields; `rollout` the registered engines' fields. So a
plug-in with a new hyperparameter declares it in its own module and `--config.loss.<name>=...` sets it; import a
plug-in module of your own before building the config (e.g. at the top of the experiment file). The `optim` and
`mesh` sections come from `optim.optim_config` and `sharding.mesh_config`; `population` (evolutionary
hyperparameter optimisation, off by default) from `population.config.population_config`, whose docstring holds its
keys. The other sections are defined here:

  seed                      one integer; every random stream of a run (data order, sampling, eval) derives from it
  total_steps               GRPO steps (one rollout + `loss.num_iterations` updates each)
  model.path                HF checkpoint dir | hub id | .gguf file | alias 'smollm2-135m-instruct'
  model.dtype               parameter dtype ('float32' | 'bfloat16')
  model.compute_dtype       activation / matmul dtype ('float32' | 'bfloat16'); on CPU keep float32: XLA:CPU
                            (jaxlib 0.10.2) runs bfloat16 matmuls slower than float32
  model.lora_rank           0 = full finetuning, else the LoRA rank (lora_alpha scales it, lora_targets: which
                            projections get adapters)
  model.remat               rematerialise each decoder layer in the backward pass
  model.attention           the attention implementation of the train step and the sampler ('xla' |
                            'dot_product' | 'cudnn'; models.layers.attention)
  model.scan_layers         run the decoder's layers as one scanned loop (True: compile time independent of
                            depth) or unrolled, each layer on its own weights and KV-cache buffer (False)
  model.tokenizer           '' = the checkpoint's own (byte-level when it has none, e.g. tiny test checkpoints);
                            'bytes'; or a tokenizer dir / hub id
  task.name                 'countdown' | 'arithmetic' | 'gsm8k'; the other task.* keys are the task's options
                            (tasks.get(name, **options)); '' stands for None (e.g. task.source = '')
  rewards                   reward name -> weight; reward_options: reward name -> dict of its options
  rollout.*                 prompts_per_step (P), group_size (G), max_new_tokens, temperature, top_p, top_k
  rollout.engine            the rollout engine plug-in that samples completions (grpo_jax.rollout; 'jitted')
  rollout.unrolled_decode   sample with the decoder's layers unrolled even when model.scan_layers is True (the train
                            step keeps scanning): the same rollout, no per-step copy of each layer's weight slice
                            out of the stacked params on XLA:CPU, at about twice the sampler's compile time
  rollout.max_decode_rows   rows the engine decodes at once (0 = all rows): with fewer slots than rows, a finished
                            row's slot takes the next waiting one (continuous refill; grpo_jax/rollout/decode_loop.py);
                            multi-turn episodes are played in waves of whole groups of at most that many rows
  environment.*            multi-turn rollouts (grpo_jax.environments; with a name set the sampler plays episodes,
                            grpo_jax/evaluation.py `Sampler`):
                            name (a registered environment; '' = the task's default, single-turn for the
                            built-in tasks; 'none' = single-turn), max_turns,
                            max_turn_tokens, max_observation_tokens, timeout_s, observation_role, plus the
                            registered environments' own fields (e.g. environment.call_format of 'calculator');
                            the meaning of each is in grpo_jax/environments/base.py
  eval.every                held-out eval at the start, every N steps and at the end (0 = no eval)
  eval.num_examples         held-out problems evaluated (0 = the whole eval split)
  eval.pass_k               k of pass@k (0 = off); eval.num_samples samples per problem (>= pass_k)
  checkpoint.every / keep   save every N steps (0 = only at the end / on SIGTERM); keep the last `keep`
  logging.*                 tensorboard, wandb (a project name, '' = off), progress bar, sample table size

`loss_config(variant)` is the `loss` section alone (every declared field with its default: GRPO as in DeepSeekMath
/ TRL) with `loss.variant = variant` and that variant's presets (its paper's clip bounds, PAPER_CLIP_BOUNDS)
applied:

  - GRPO (DeepSeekMath, Shao et al. 2024) / PPO (Schulman et al. 2017): (0.2, 0.2); DAPO's clip-higher (0.2, 0.28);
  - GSPO (Zheng et al. 2025, sec. 5.1): the sequence-level ratio is a geometric mean, so it stays close to 1; the
    paper clips at 3e-4 (left) and 4e-4 (right);
  - CISPO (MiniMax 2025, sec. 3.1): no lower bound, clip_low = 1.0; clip_high = 4.0, i.e. the absolute cap 5.0
    TRL's documentation recommends (see grpo_jax/losses/cispo.py).

Overriding only `--config.loss.variant=...` on the command line keeps the clip values the config file set; an
ablation config for GSPO or CISPO sets the clip values from PAPER_CLIP_BOUNDS (configs/ablations/gspo.py). Each
loss field's meaning is documented where it is declared: grpo_jax/losses/objective.py (core), losses/ppo.py
(clip_low, clip_high, dual_clip), grpo_jax/advantages/__init__.py (advantage_*, std_eps, drop_zero_std_groups),
and each plug-in's module for its own fields.
"""

from __future__ import annotations

import hashlib
import json
import numbers

import ml_collections

from grpo_jax import advantages, environments, losses, registry, rewards, rollout, tasks  # noqa: F401  (built-ins)
from grpo_jax.models.layers import ATTENTION_IMPLEMENTATIONS
from grpo_jax.optim import optim_config, validate_optim_config
from grpo_jax.population.config import population_config, validate_population_config
from grpo_jax.sharding import mesh_config, validate_mesh_config

DTYPES = ("float32", "bfloat16")
ATTENTION = ATTENTION_IMPLEMENTATIONS  # model.attention: 'xla' | 'dot_product' | 'cudnn' (models.layers)

# Sections and keys that do not change what a run computes: a workdir may be resumed with other values of these.
RESUMABLE_KEYS = ("checkpoint", "logging", "eval.every")


def loss_section() -> ml_collections.ConfigDict:
    """The `loss` section: every field declared for it (core and registered plug-ins), with its default."""
    return ml_collections.ConfigDict(registry.section_fields("loss"))


def _paper_clip_bounds() -> dict:
    out = {}
    for entry in losses.VARIANTS.entries():
        if "clip_low" in entry.presets and "clip_high" in entry.presets:
            out[entry.name] = (entry.presets["clip_low"], entry.presets["clip_high"])
    return out


# variant -> (clip_low, clip_high) as used in the paper that introduced it (the built-in variants' presets).
PAPER_CLIP_BOUNDS = _paper_clip_bounds()


def loss_config(variant: str = "grpo") -> ml_collections.ConfigDict:
    """The `loss` ConfigDict: every declared field's default, `variant`, and the variant's presets."""
    if variant not in losses.VARIANTS:
        raise ValueError(f"loss_config: unknown variant {variant!r}; known: {losses.VARIANTS.names()}")
    cfg = loss_section()
    cfg.variant = variant
    for field, value in losses.VARIANTS.entry(variant).presets.items():
        cfg[field] = value
    return cfg


def base_config() -> ml_collections.ConfigDict:
    """Every key of the schema, with defaults that run (slowly) on a CPU; experiment files override them."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 100

    c.model = ml_collections.ConfigDict()
    c.model.path = "smollm2-135m-instruct"
    c.model.dtype = "float32"
    c.model.compute_dtype = "float32"
    c.model.lora_rank = 0
    c.model.lora_alpha = 0.0          # LoRA scale alpha (adapter update * alpha / rank); 0 = 2 * lora_rank
    c.model.lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    c.model.remat = False
    c.model.attention = "xla"
    c.model.scan_layers = True
    c.model.tokenizer = ""            # '' = the checkpoint's own; 'bytes' = byte-level; or a tokenizer dir / hub id

    c.task = ml_collections.ConfigDict()
    c.task.name = "arithmetic"
    c.rewards = ml_collections.ConfigDict({"arithmetic": 1.0})
    c.reward_options = ml_collections.ConfigDict()

    c.rollout = ml_collections.ConfigDict()
    c.rollout.prompts_per_step = 8
    c.rollout.group_size = 8
    c.rollout.max_new_tokens = 64
    c.rollout.temperature = 1.0
    c.rollout.top_p = 1.0
    c.rollout.top_k = 0
    c.rollout.engine = "jitted"
    c.rollout.max_decode_rows = 0
    c.rollout.unrolled_decode = False
    for name, default in registry.section_fields("rollout").items():
        c.rollout[name] = default

    c.environment = environments.environment_config()
    c.loss = loss_section()
    c.optim = optim_config()
    c.mesh = mesh_config()
    c.population = population_config()

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 0
    c.eval.num_examples = 0
    c.eval.batch_size = 64
    c.eval.pass_k = 0
    c.eval.num_samples = 0          # samples per problem for pass@k; 0 = pass_k
    c.eval.temperature = 1.0        # sampling temperature of the pass@k samples (accuracy is greedy)
    c.eval.max_new_tokens = 0       # 0 = rollout.max_new_tokens

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 50
    c.checkpoint.keep = 2
    c.checkpoint.export_hf = True   # write the final policy as an HF checkpoint dir to DIR/export

    c.logging = ml_collections.ConfigDict()
    c.logging.tensorboard = True
    c.logging.wandb = ""            # a wandb project name turns wandb on (pip install wandb)
    c.logging.progress = True
    c.logging.num_samples = 4       # sample completions shown in the table at each eval
    c.logging.plots = True
    return c


def smoke_test(c, *, steps: int = 2, prompts: int = 2, max_new_tokens: int = 64, eval_examples: int = 8):
    """Shrink experiment `c` in place to a minutes-long CPU run (an experiment file's 'cpu' / 'tiny' arg): float32,
    `steps` steps of `prompts` prompts, eval of `eval_examples` problems at the start and the end, no pass@k,
    no gradient accumulation or warmup, a checkpoint only at the end. Returns `c`."""
    c.model.dtype = c.model.compute_dtype = "float32"
    c.model.remat = False
    c.total_steps = steps
    c.rollout.prompts_per_step = prompts
    c.rollout.max_new_tokens = max_new_tokens
    c.optim.warmup_steps = 0
    c.optim.micro_batch_size = 0
    c.eval.every = steps
    c.eval.num_examples = eval_examples
    c.eval.batch_size = eval_examples
    c.eval.pass_k = c.eval.num_samples = 0
    c.checkpoint.every = 0
    return c


# ------------------------------------------------------------------------------------------------ validation


def _get(config, path: str):
    node = config
    for part in path.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            raise ValueError(f"config has no key {path!r} (every experiment file starts from base_config())") from None
    return node


def _int(config, path: str, low: int | None = None) -> int:
    value = _get(config, path)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{path} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{path} must be >= {low}, got {value!r}")
    return int(value)


def _float(config, path: str, low: float | None = None, high: float | None = None, open_low=False) -> float:
    value = _get(config, path)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{path} must be a number, got {value!r}")
    value = float(value)
    if low is not None and (value < low or (open_low and value == low)):
        raise ValueError(f"{path} must be {'>' if open_low else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{path} must be <= {high}, got {value!r}")
    return value


def _choice(config, path: str, valid) -> None:
    value = _get(config, path)
    if value not in valid:
        raise ValueError(f"unknown {path} {value!r}; valid: {', '.join(repr(v) for v in valid)}")


def validate(config) -> None:
    """Raise ValueError with one clear message naming the first bad key and value. Checks that need the devices
    (the batch dividing over the mesh) are in `validate_for_mesh`; the model path is checked when it is loaded.

    The runner calls this once per run, before anything is traced. The sections it accepted are remembered by
    content (`registry.validate_section`), so the functions that take a section later (`losses.policy_loss`,
    `advantages.group_advantages`, the train step) find it validated and do not check it again."""
    _int(config, "seed")
    _int(config, "total_steps", 0)

    path = _get(config, "model.path")
    if not isinstance(path, str) or not path:
        raise ValueError(f"model.path must be a non-empty string, got {path!r}")
    _choice(config, "model.dtype", DTYPES)
    _choice(config, "model.compute_dtype", DTYPES)
    _int(config, "model.lora_rank", 0)
    if not isinstance(_get(config, "model.remat"), bool):
        raise ValueError(f"model.remat must be True or False, got {_get(config, 'model.remat')!r}")
    _choice(config, "model.attention", ATTENTION)
    if not isinstance(_get(config, "model.scan_layers"), bool):
        raise ValueError(f"model.scan_layers must be True or False, got {_get(config, 'model.scan_layers')!r}")

    _choice(config, "task.name", tuple(tasks.names()))
    weights = _get(config, "rewards")
    if not len(weights):
        raise ValueError("rewards is empty: give at least one reward name -> weight, e.g. {'arithmetic': 1.0}")
    known = tuple(rewards.names())
    for name in weights:
        if name not in known:
            raise ValueError(f"unknown reward {name!r} in config.rewards; known rewards: {', '.join(known)}")
        _float(config, f"rewards.{name}")
    for name in _get(config, "reward_options"):
        if name not in weights:
            raise ValueError(f"reward_options.{name} is set but {name!r} is not in config.rewards")

    group = _int(config, "rollout.group_size")
    if group < 2:
        raise ValueError(f"rollout.group_size must be >= 2 (GRPO compares completions within a group), got {group}")
    _int(config, "rollout.prompts_per_step", 1)
    _int(config, "rollout.max_new_tokens", 1)
    _float(config, "rollout.temperature", 0.0, open_low=True)
    _float(config, "rollout.top_p", 0.0, 1.0, open_low=True)
    _int(config, "rollout.top_k", 0)
    _int(config, "rollout.max_decode_rows", 0)
    if not isinstance(_get(config, "rollout.unrolled_decode"), bool):
        raise ValueError(f"rollout.unrolled_decode must be True or False, got "
                         f"{_get(config, 'rollout.unrolled_decode')!r}")
    registry.validate_section("rollout", _get(config, "rollout"))
    registry.validate_section("environment", _get(config, "environment"))
    registry.validate_section("loss", _get(config, "loss"))
    _validate_optim_and_mesh(config)
    validate_population_config(config)

    _int(config, "eval.every", 0)
    _int(config, "eval.num_examples", 0)
    _int(config, "eval.batch_size", 1)
    pass_k = _int(config, "eval.pass_k", 0)
    samples = _int(config, "eval.num_samples", 0)
    if pass_k and samples and samples < pass_k:
        raise ValueError(f"eval.num_samples ({samples}) must be >= eval.pass_k ({pass_k}) for the pass@k estimator")
    _float(config, "eval.temperature", 0.0, open_low=True)
    _int(config, "eval.max_new_tokens", 0)

    _int(config, "checkpoint.every", 0)
    _int(config, "checkpoint.keep", 1)
    wandb = _get(config, "logging.wandb")
    if not isinstance(wandb, str):
        raise ValueError(f"logging.wandb must be a project name or '' (off), got {wandb!r}")
    _int(config, "logging.num_samples", 0)


def _validate_optim_and_mesh(config) -> None:
    validate_optim_config(_get(config, "optim"))
    validate_mesh_config(_get(config, "mesh"))


def validate_for_mesh(config, mesh) -> None:
    """The batch must split evenly over the devices that hold it (the mesh's data x fsdp axes)."""
    shards = int(mesh.shape["data"]) * int(mesh.shape["fsdp"])
    prompts = int(config.rollout.prompts_per_step)
    if prompts % shards:
        raise ValueError(
            f"rollout.prompts_per_step = {prompts} does not divide over the mesh's data x fsdp = {shards} devices "
            f"(mesh {dict(mesh.shape)}); use a multiple of {shards}")
    sequences = prompts * int(config.rollout.group_size)
    micro = int(config.optim.micro_batch_size)
    if micro and sequences % micro:
        raise ValueError(f"optim.micro_batch_size = {micro} does not divide the step's {sequences} sequences "
                         f"(prompts_per_step x group_size)")
    if micro and micro % shards:
        raise ValueError(f"optim.micro_batch_size = {micro} does not divide over the mesh's data x fsdp = {shards} "
                         f"devices (mesh {dict(mesh.shape)})")


# ------------------------------------------------------------------------------------------------ fingerprint


def _drop(d: dict, path: str) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        d = d.get(p, {})
    d.pop(leaf, None)


def trajectory_dict(config) -> dict:
    """The config as a plain dict without the keys that do not change what a run computes (RESUMABLE_KEYS)."""
    d = json.loads(config.to_json_best_effort(sort_keys=True))
    for path in RESUMABLE_KEYS:
        _drop(d, path)
    size = d.get("population", {}).get("size", 0)
    if not isinstance(size, int) or size < 2:
        d.pop("population", None)  # off: no population key changes what the run computes (validate: none is set)
    if not d.get("environment", {}).get("name"):
        d.pop("environment", None)  # single-turn: no environment key changes what the run computes
    return d


def fingerprint(config) -> str:
    """sha256 of the config's trajectory-defining keys: a workdir holding another fingerprint is another run."""
    blob = json.dumps(trajectory_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested dicts, e.g. ["optim.lr: 1e-05 -> 2e-05"]."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
