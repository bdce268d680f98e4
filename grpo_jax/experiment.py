"""The `Experiment` (mesh, task, rewards, policy, sampler, train step, keys) and one GRPO step's pieces: rewards,
advantages and batch (`member_batch`, `trim_columns`, `with_train_metrics`), the eval row, SIGTERM handling,
progress, export and plots. The loop (`runner.run`) drives an Experiment through a few named methods (`begin`,
`train_results`, `evaluate`, `after_step`, `checkpoint_meta`, `finish`); another kind of experiment (the
population's, grpo_jax/population/experiment.py) overrides them and is registered in `EXPERIMENTS`, so the loop
imports nothing of it. The step itself is described in runner.py's docstring.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable, NamedTuple, Optional

import jax
import numpy as np

from grpo_jax import config as config_lib
from grpo_jax import advantages, distributed, environments, evaluation, registry, rollout, sharding
from grpo_jax.checkpoint import check_workdir, export_policy

# Kinds of experiment besides one policy: name -> an object with `claims(config) -> bool` and `target`
# ('module:ExperimentSubclass', imported by name); the loop runs the first that claims the config (the population's,
# registered by population/config.py, when population.size >= 2).
EXPERIMENTS = registry.kind("experiment")
WIDTH_BUCKET = 16  # the train step's completion width is a multiple of this: a handful of compiled programs
SAMPLE_TAG, EVAL_TAG = 0, 1  # key of a step = fold_in(fold_in(base key = PRNGKey(seed), TAG), step)


@dataclasses.dataclass
class RunResult:
    status: str                    # "completed" | "preempted"
    step: int                      # GRPO steps done
    workdir: str
    first_eval: Optional[dict]     # eval metrics at step 0 (None when resumed past it or eval is off)
    last_eval: Optional[dict]      # the latest eval metrics of this invocation
    plots: list
    export: Optional[str]
    population: Optional[dict] = None  # a population run: the elite member, its final fitness, the generations


class Preemption:
    """SIGTERM sets a flag; the loop checks it at step boundaries."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def say(message: str, enabled: bool = True) -> None:
    if enabled:
        from tqdm import tqdm
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()


def step_key(base_key: jax.Array, tag: int, step: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(base_key, tag), step)


def task_options(config) -> dict:
    """task.* without `name`, as keyword options of tasks.get; '' stands for None (a ConfigDict field keeps its
    type, so optional paths are strings), lists become tuples."""
    def value(v):
        return None if v == "" else (tuple(v) if isinstance(v, list) else v)
    return {k: value(v) for k, v in config.task.to_dict().items() if k != "name"}


def accuracy_fn(config, task) -> Callable:
    """The task's accuracy reward alone, with the config's options for it (reward_options): 1.0 means solved."""
    from grpo_jax import rewards

    accuracy, options = task.accuracy_reward, config.reward_options.to_dict()
    return rewards.combine({accuracy: 1.0}, {accuracy: options[accuracy]} if accuracy in options else {})


class StepResult(NamedTuple):
    """What one GRPO step returns: its metrics row (the one `run` writes to metrics.jsonl) and up to
    logging.num_samples sample completions of this process (prompt, completion, reward, advantage)."""
    row: dict
    samples: list


class Experiment:
    """One experiment built once from a validated config: mesh, task, rewards, policy, sampler, train step, and the
    base key every random draw of a step derives from.

        exp = Experiment(config, workdir)
        row, samples = exp.step(0)   # GRPO step 0: the task's training batch 0, its own (seed, step) keys

    `run` is this plus checkpoints, eval, logging and preemption; `step(i)` is the public way to drive the same
    training steps from elsewhere (benchmarks, notebooks). `state` and `base_key` are what a checkpoint holds."""

    def __init__(self, config, workdir: str):
        from grpo_jax.train_step import init_train_state

        policy = self._setup(config, workdir)
        self.state, self.frozen = init_train_state(policy.config, policy.params, config, self.mesh)
        use_ref = float(config.loss.kl_beta) > 0 and int(config.model.lora_rank) == 0
        self.ref = sharding.shard_params(policy.params, policy.config, self.mesh) if use_ref else None
        del policy
        self.train_step = _cached_train_step(self.model_config, config, self.mesh)
        self.base_key = jax.random.PRNGKey(int(config.seed))
        if self.main:
            check_workdir(workdir, config, write=True)

    def _setup(self, config, workdir: str, task=None):
        """Everything but the train state and step (shared with the population's experiment): validation, mesh,
        task (`task`, when the caller made it already), rewards, eval set, tokenizer, sampler. Returns the loaded
        policy (its params seed the state)."""
        from grpo_jax import models, rewards, tasks

        config_lib.validate(config)
        self.config, self.workdir = config, workdir
        self.main = distributed.is_main()
        self.mesh = sharding.make_mesh(config.mesh)
        config_lib.validate_for_mesh(config, self.mesh)
        check_workdir(workdir, config, write=False)
        self.task = task or tasks.get(config.task.name, **task_options(config))
        self.reward_fn = rewards.combine(config.rewards.to_dict(), config.reward_options.to_dict())
        self.accuracy_fn = accuracy_fn(config, self.task)
        self.eval_examples = self.task.eval_set(int(config.eval.num_examples) or None) if config.eval.every else []
        policy = models.load(config.model.path, config.model.dtype, config.model.compute_dtype,
                             with_tokenizer=not config.model.tokenizer)
        self.model_config, self.tokenizer = policy.config, _tokenizer(config, policy)
        scan = bool(config.model.scan_layers) and not bool(config.rollout.unrolled_decode)
        sampler_config = policy.config.replace(attention=str(config.model.attention),  # as the train step's
                                               scan_layers=scan)                       # unless rollout.unrolled_decode
        self.sampler = evaluation.Sampler(sampler_config, self.tokenizer, self.mesh,
                                          settings=rollout.Settings.from_config(config.rollout),
                                          environment=environments.for_task(config.environment, self.task))
        return policy

    def policy_params(self):
        from grpo_jax.train_step import policy_params
        return policy_params(self.model_config, self.state, self.frozen)

    def step(self, step: int) -> StepResult:
        """GRPO step `step` (0-based; its row's `step` is step + 1): sample, reward, advantages, one train step
        (which updates `self.state`). Returns its metrics row and a few sample completions."""
        return _train_one(self, step, int(self.config.rollout.prompts_per_step),
                          int(self.config.rollout.group_size), self.base_key)

    # ------------------------------------------------------------------ what the loop (runner.run) calls
    # A kind of experiment that plugs into the loop (a population) overrides these; the loop knows nothing else.

    description = "GRPO"  # the progress bar's

    def begin(self, start: int, meta: Optional[dict]) -> None:
        """Before the first step of this invocation: `meta` is the restored checkpoint's (None on a fresh start)."""
        if start:
            say(f"resuming from the checkpoint of step {start} in {self.workdir}", self.main)

    def train_results(self, step: int) -> list:
        """GRPO step `step`: the StepResults of every policy it trains (one here)."""
        return [self.step(step)]

    def evaluate(self, step: int, writer) -> dict:
        """The held-out eval at `step` (rows written); returns the run's headline eval metrics."""
        return _eval(self, step, writer)

    def after_step(self, done: int, writer) -> None:
        """After step `done`'s rows and eval (a population's fitness and evolution)."""

    def headline_eval(self, latest: dict) -> dict:
        """The eval metrics a run reports, given the latest `evaluate`'s (a population: its elite's)."""
        return latest

    def checkpoint_meta(self) -> dict:
        """Host state a checkpoint's JSON meta carries besides the train state and the base key."""
        return {}

    def finish(self, workdir: str) -> Optional[str]:
        """After a completed run: the HF export's path (None when checkpoint.export_hf is off)."""
        return export_policy_dir(self, workdir)

    def summary(self) -> Optional[dict]:
        """What RunResult.population carries (None for one policy)."""
        return None


def _tokenizer(config, policy):
    """model.tokenizer: '' = the checkpoint's own (a byte-level one, with a warning, when it has none); 'bytes' =
    the byte-level tokenizer; else a tokenizer dir or hub id."""
    name = config.model.tokenizer
    if name == "bytes" or (not name and policy.tokenizer is None):
        if not name:
            logging.getLogger(__name__).warning(
                "%s has no tokenizer files: using a byte-level tokenizer (token id = byte); fine for test "
                "checkpoints, meaningless for a real model (set model.tokenizer to its tokenizer)", config.model.path)
        return evaluation.byte_tokenizer(policy.config)
    if not name:
        return policy.tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as e:  # noqa: BLE001 - any failure is a bad model.tokenizer value
        raise ValueError(f"model.tokenizer {name!r}: cannot load a tokenizer ({type(e).__name__}: {e})") from None


_PROGRAMS: dict = {}


def cached_program(key, build):
    """The compiled step under `key`, built by `build()` once per process (a notebook, a resumed run in tests: a new
    jitted step would compile again); the last 4 are kept."""
    if key not in _PROGRAMS:
        if len(_PROGRAMS) >= 4:
            _PROGRAMS.pop(next(iter(_PROGRAMS)))
        _PROGRAMS[key] = build()
    return _PROGRAMS[key]


def _cached_train_step(model_config, config, mesh):
    from grpo_jax.train_step import make_train_step

    return cached_program((model_config, config_lib.fingerprint(config), mesh),
                          lambda: make_train_step(model_config, config, mesh))


def completion_width(longest: int, max_new_tokens: int, bucket: int = WIDTH_BUCKET, packed: bool = False) -> int:
    """Completion columns the train step needs: the batch's longest completion (stop token included) rounded up to
    a multiple of `bucket` -- with `packed` (optim.pack_completions) to `bucket` times a power of two, since packed
    rows fill a wider width with more completions and fewer widths compile fewer programs -- at most
    max_new_tokens. The columns after it are padding (mask 0) in every row, so dropping them changes no loss term
    -- Dr.GRPO's constant stays rollout.max_new_tokens -- and saves their compute: completions of a batch are often
    far shorter than the limit."""
    units = -(-max(int(longest), 1) // bucket)
    if packed:
        units = 1 << (units - 1).bit_length()
    return int(min(max_new_tokens, units * bucket))


@functools.partial(jax.jit, static_argnums=1)
def _first_columns(arrays: tuple, width: int) -> tuple:
    """[N, T] arrays -> [N, width], on global (sharded, multi-process) arrays too."""
    return tuple(a[:, :width] for a in arrays)


def _gather_scores(total, per_reward: dict, completions: evaluation.Completions) -> np.ndarray:
    """[N, 3 + R] over every process: total reward, length, truncated, then each reward."""
    local = np.stack([np.asarray(total, np.float32), completions.lengths.astype(np.float32),
                      completions.truncated.astype(np.float32)] +
                     [np.asarray(v, np.float32) for v in per_reward.values()], axis=1)
    return distributed.allgather_rows(local)


def _train_samples(examples, completions, scores_local, adv, group_size, limit) -> list[dict]:
    out = []
    for i, text in enumerate(completions.texts[:limit]):
        row = completions.start + i
        out.append({"prompt": examples[row // group_size]["prompt"][-1]["content"], "completion": text,
                    "reward": float(scores_local[i]), "advantage": float(adv[row])})
        if completions.observations is not None:  # episodes: the completion holds them, listed here too
            out[-1]["observations"] = list(completions.observations[i])
            out[-1]["episode"] = completions.marked[i]
    return out


def _eval(exp: Experiment, step: int, writer, params=None, tags: Optional[dict] = None) -> dict:
    """Evaluate `params` (default: the experiment's policy) on the eval set; writes one eval row (with `tags`,
    e.g. a population member's {'member': k, 'hp/lr': ...}) and returns the eval metrics."""
    t0 = time.time()
    result = evaluate_params(exp, step, exp.policy_params() if params is None else params)
    return write_eval(exp, step, writer, result, time.time() - t0, tags)


def evaluate_params(exp: Experiment, step: int, params) -> evaluation.EvalResult:
    """`params`' eval at `step`: greedy accuracy (and pass@k) with the step's eval key, the same for any params."""
    config = exp.config
    return evaluation.evaluate(exp.sampler, params, exp.eval_examples, step_key(exp.base_key, EVAL_TAG, step),
                               reward_fn=exp.reward_fn, accuracy_fn=exp.accuracy_fn, config=config,
                               num_samples_shown=int(config.logging.num_samples), eval_metrics=exp.task.eval_metrics)


def write_eval(exp: Experiment, step: int, writer, result: evaluation.EvalResult, seconds: float,
                tags: Optional[dict] = None, note: str = "") -> dict:
    """Writes an eval's row (metrics, `tags`, eval/time = `seconds`), its samples, and prints them; returns the
    metrics."""
    config = exp.config
    row = {"step": step, **(tags or {}), **result.metrics, "eval/time": seconds}
    writer.write(row)
    shown = ", ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in result.metrics.items()
                      if isinstance(v, float))
    who = f" member {tags['member']}" if tags and "member" in tags else ""
    say(f"[eval step {step}{who}] {len(exp.eval_examples)} held-out problems{note}: {shown}", exp.main)
    if result.samples and config.logging.num_samples:
        table = evaluation.format_table(result.samples, ("prompt", "completion", "reward", "correct"))
        say(table, exp.main)
        writer.write_text("eval/samples" + (f"/member_{tags['member']}" if who else ""), table, step)
        writer.write_samples(step, result.samples, {"member": tags["member"]} if who else None)
    return result.metrics


def progress_bar(start: int, total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, initial=start, disable=not enabled, desc="GRPO", unit="step", dynamic_ncols=True,
                file=sys.stderr)


def _train_one(exp: Experiment, step: int, P: int, G: int, base_key: jax.Array) -> StepResult:
    """One GRPO step (`Experiment.step`): returns (metrics row, a few sample completions of this process)."""
    cfg = exp.config
    t0 = time.time()
    examples = exp.task.train_batch(int(cfg.seed), step, P)
    sampled = exp.sampler.sample(exp.policy_params(), examples, step_key(base_key, SAMPLE_TAG, step), group_size=G)
    t_sample = time.time() - t0
    member = member_batch(exp, examples, sampled, G)
    width = completion_width(member.longest, sampled[1].tokens.shape[1],
                             packed=bool(cfg.optim.pack_completions))
    batch = trim_columns(member.batch, width)
    t1 = time.time()
    prepared = exp.train_step.prepare(exp.state, exp.frozen, exp.ref, batch)
    exp.state, train_metrics = exp.train_step.execute(prepared)
    train_metrics = {k: float(v) for k, v in jax.device_get(train_metrics).items()}
    t_train = time.time() - t1
    row = with_train_metrics({"step": step + 1, **member.row}, train_metrics)
    row["step_time"] = time.time() - t0
    row["sampler/time"], row["train/time"] = t_sample, t_train
    row["train/completion_width"] = width
    row["train/tokens"] = member.tokens  # completion tokens trained on (stop tokens included)
    row["train/tokens_computed"] = prepared.tokens_computed  # the step's own plan, padding included
    row["sampler/tokens_per_s"] = member.generated / max(t_sample, 1e-9)
    episodes = sampled[2].episodes
    computed = (episodes.tokens_computed if episodes is not None
                else getattr(exp.sampler.engine, "last_tokens_computed", None))
    if computed is not None:  # what the decode loop computed, finished rows' steps included
        row["sampler/tokens_computed"] = computed
    return StepResult(row, member.samples)


class MemberBatch(NamedTuple):
    """One policy's scored rollout of a step, ready for the train step: `batch` (all rollout.max_new_tokens
    columns; `trim_columns` cuts them), its metrics `row` so far (step, reward and completion statistics), sample
    completions, the longest completion of any row, the kept completions' token count, and every row's."""
    batch: dict
    row: dict
    samples: list
    longest: int
    tokens: float
    generated: float


def member_batch(exp, examples, sampled, G: int, group: int = 0) -> MemberBatch:
    """Rewards, advantages and statistics of one policy's sampled completions (`Sampler.sample`'s return) of the
    step's `examples`, G per prompt.

    group: the effective group size g (a population member's `group_size`; 0 = G): only completions 0..g-1 of
    each group count -- advantages and reward statistics are those of the [P, g] rewards, the other rows get
    advantage 0 and keep = False (in no loss term or denominator), and the completion statistics and token
    counts are over the kept rows. g = G is exactly the unmasked computation.

    Episodes (the sampler has an environment): the batch also carries `action_mask` (1 on the model's tokens, 0 on
    inserted observations; the train step passes keys it does not read to the loss as `inputs=`), the completion
    statistics count the model's tokens, `longest` is the longest whole episode (the columns the train step
    keeps), and the row gets the episodes' env/* metrics (`evaluation.episode_metrics`)."""
    cfg = exp.config
    (prompt_tokens, prompt_mask), rollout, completions = sampled
    P = len(examples)
    g = int(group) or G
    if not 2 <= g <= G:
        raise ValueError(f"effective group size {g} must be in 2..rollout.group_size = {G}")
    total, per_reward, num_errors = evaluation.score(exp.reward_fn, examples, completions, G)
    scores = _gather_scores(total, per_reward, completions)
    kept = scores.reshape(P, G, -1)[:, :g]                     # [P, g, 3 + R]
    rewards_pg = kept[:, :, 0]
    per_reward_pgr = kept[:, :, 3:]  # unweighted, in config.rewards' order
    weights = np.asarray([float(cfg.rewards[name]) for name in per_reward], np.float32)
    adv_pg = np.zeros((P, G), np.float32)
    adv_pg[:, :g] = np.asarray(advantages.group_advantages(rewards_pg, cfg.loss, per_reward=per_reward_pgr,
                                                           reward_weights=weights), np.float32)
    adv = adv_pg.reshape(-1)
    stats = advantages.group_stats(rewards_pg, cfg.loss)
    keep = np.repeat(np.asarray(stats["keep_mask"]), G)
    if g < G:
        keep = keep & (np.arange(P * G) % G < g)
    batch = dict(prompt_tokens=prompt_tokens, prompt_mask=prompt_mask, completions=rollout.tokens,
                 completion_mask=rollout.mask, old_logps=rollout.logps, advantages=adv, truncated=rollout.truncated,
                 keep=keep)
    if completions.episodes is not None:
        batch["action_mask"] = rollout.action_mask
    kept = kept.reshape(P * g, -1)
    lengths, truncated = kept[:, 1], kept[:, 2]
    errors = np.asarray([num_errors[k] for k in per_reward], np.float32)
    errors = distributed.allgather_rows(errors[None]).sum(axis=0)
    row = {"reward": float(stats["reward"]), "reward_std": float(stats["reward_std"])}
    for i, name in enumerate(per_reward):
        row[f"rewards/{name}/mean"] = float(kept[:, 3 + i].mean())
        row[f"rewards/{name}/std"] = float(kept[:, 3 + i].std())
        if errors[i]:
            row[f"rewards/{name}/errors"] = int(errors[i])
    row.update({
        "frac_reward_zero_std": float(stats["frac_reward_zero_std"]),
        "completions/mean_length": float(lengths.mean()),
        "completions/min_length": float(lengths.min()),
        "completions/max_length": float(lengths.max()),
        "completions/clipped_ratio": float(truncated.mean()),
    })
    longest = int(scores[:, 1].max())
    if completions.episodes is not None:  # one process holds every row (evaluation.Sampler.episodes)
        row.update(evaluation.episode_metrics(completions.episodes))
        longest = completions.columns
    samples = _train_samples(examples, completions, total, adv, G, int(cfg.logging.num_samples))
    return MemberBatch(batch, row, samples, longest, float(lengths.sum()), float(scores[:, 1].sum()))


def trim_columns(batch: dict, width: int) -> dict:
    """The batch with its completion columns cut to the first `width` (see `completion_width`): completions,
    completion_mask, old_logps and, when present, action_mask."""
    if width >= np.shape(batch["completions"])[1]:
        return batch
    names = [k for k in ("completions", "completion_mask", "old_logps", "action_mask") if k in batch]
    columns = _first_columns(tuple(batch[k] for k in names), width)
    return dict(batch, **dict(zip(names, columns)))


def with_train_metrics(row: dict, train_metrics: dict) -> dict:
    """The row plus every metric the train step returns (the loss's, its plug-ins', the step's own) under its own
    name (train/<name> where the row already has it), and logp_mismatch."""
    row = dict(row)
    row.update({(f"train/{k}" if k in row else k): v for k, v in train_metrics.items()})
    if "logp_mismatch/max" in train_metrics:
        row["logp_mismatch"] = train_metrics["logp_mismatch/max"]
    return row


def restore_checkpoint(ckpt, step: int, state, base_key, data_position: int, workdir: str) -> tuple:
    """(state, base key, meta) of checkpoint `step`, checked to hold `data_position` (the loop's step * P)."""
    state, base_key, meta = ckpt.restore(step, state, base_key)
    if meta.get("data_position") != data_position:
        raise ValueError(f"checkpoint {step} in {workdir} holds data position {meta.get('data_position')}, "
                         f"expected {data_position}; the workdir is inconsistent")
    return state, base_key, meta


def export_policy_dir(exp: Experiment, workdir: str) -> Optional[str]:
    if not exp.config.checkpoint.export_hf:
        return None
    params = distributed.to_host(exp.policy_params())
    path = os.path.join(workdir, "export")
    if exp.main:
        export_policy(path, exp.model_config, params, exp.tokenizer)
        say(f"exported the final policy (HF checkpoint dir) to {path}")
    distributed.barrier("export")
    return path


def write_plots(workdir: str, enabled: bool) -> list:
    if not enabled:
        return []
    from grpo_jax.plotting import plot_workdir
    return plot_workdir(workdir)
