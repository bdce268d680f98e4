"""The population's experiment: K members trained side by side, evaluated on a shared held-out subset, evolved.

    result = runner.run(config, workdir)      # the loop runs this experiment when population.size >= 2

One step (`PopulationExperiment.step`), the single run's step with a leading member axis (runner.py, "One step"):
  1. the step's P prompts, the same for every member (`task.train_batch(seed, step, P)`);
  2. every member's G completions per prompt (`population.sampling.sample_members`), each member drawing with the
     single run's key fold_in(fold_in(PRNGKey(seed), SAMPLE_TAG), step) (common random numbers) at its own
     temperature / top_p;
  3. rewards, advantages and statistics per member (`experiment.member_batch`); a member whose effective group_size
     g < rollout.group_size = G counts completions 0..g-1 of each group only (the others: advantage 0, keep False);
  4. the population train step (`population.train.make_population_train_step`): every member's update with its
     own traced hyperparameters (those of its dict named in `population.train.TRAIN_HYPERPARAMETERS`);
  5. one metrics row PER MEMBER: the single run's names plus `member` and `hp/<name>` for each member
     hyperparameter; the completion columns are cut to the width the longest completion of any member needs.

Every population.evolve_every steps (not at the last step): the fitness (`population.fitness`, an eval metric) of
every member on the same first `population.fitness_examples` held-out problems with the same key
fold_in(fold_in(PRNGKey(seed), FITNESS_TAG), step); `population.evolve` (selection + mutation, one generator);
`take_members` (each slot copies its parent's params / adapters, optimizer moments and counter); the lineage rows
appended to DIR/population.jsonl; one metrics row per member with `population/fitness` (its fitness before the
evolution, with the hyperparameters it was measured with) and `population/generation` (evolutions before it).
At the last step the same fitness is measured once more (rows as above, no evolution): its best member
(`selection.best`, ties to the lower index) is the elite, exported as the HF checkpoint dir.

eval.every: every member is evaluated as a single run is (rows carry `member` and its hyperparameters).

Checkpoints hold the stacked states (all members' params and optimizer state) and, in their JSON meta under
`population`, the members' hyperparameters, the generation counter, the selection generator's state
(`population.rng_state`) and the elite, so a resumed run continues the same evolutions: on resume the lineage file
is cut to the checkpoint's generation (`truncate_lineage`) and metrics.jsonl to its step, and the run writes
exactly the rows an uninterrupted run writes (up to the wall-clock fields). SIGTERM saves and returns as for one
policy.

Not yet: more than one process (each member's sampling and fitness would need its rows gathered; refused with a
clear error), a `mesh.member` axis (members are replicated over the mesh; each member's rows shard over
data x fsdp as in a single run).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import config as config_lib
from grpo_jax import evaluation, experiment as shared, sharding
from grpo_jax.checkpoint import check_workdir
from grpo_jax.population.evolve import Evolution, evolve
from grpo_jax.population import lineage, selection
from grpo_jax.population.config import member_names
from grpo_jax.population.init import initial_hyperparameters
from grpo_jax.population.rng import population_rng, rng_from_state, rng_state
from grpo_jax.population.sampling import sample_members
from grpo_jax.population import train as population_train

FITNESS_TAG = 2  # key of a fitness evaluation = fold_in(fold_in(PRNGKey(seed), FITNESS_TAG), step)
HP_PREFIX = "hp/"  # a member row's hyperparameter columns: hp/lr, hp/kl_beta, ...
FITNESS_KEY, GENERATION_KEY = "population/fitness", "population/generation"
META_KEY = "population"  # the checkpoint meta's entry holding the population's host state
BUILTIN_EVAL_METRICS = tuple(f"eval/{name}" for name in evaluation.BUILTIN_METRICS)


def check_population_run(config, task) -> None:
    """The runner's own checks of a population run (population/config.py checks the section itself): one
    ValueError naming the key. Called with the config already validated."""
    if jax.process_count() > 1:
        raise ValueError(f"population.size = {int(config.population.size)} with {jax.process_count()} processes: "
                         "a population runs in one process for now (its members are replicated over that "
                         "process's devices); run it on one host, or set population.size = 0")
    wanted = str(config.population.fitness)
    available = list(BUILTIN_EVAL_METRICS) + [f"eval/{name}" for name in (task.eval_metrics or {})]
    if int(config.eval.pass_k):
        available.append(f"eval/pass@{int(config.eval.pass_k)}")
    if wanted not in available:
        raise ValueError(f"population.fitness = {wanted!r} is not a metric this run's evaluation gives; it gives: "
                         f"{', '.join(available)} (pass@k needs eval.pass_k = k)")
    n = int(config.population.fitness_examples) or int(config.eval.num_examples)
    size = len(task.eval_set())
    if n > size:
        raise ValueError(f"population.fitness_examples = {n} but task {task.name!r} has {size} held-out problems "
                         "(0 = eval.num_examples; 0 there = the whole eval set)")


def _population_step(model_config, config, mesh):
    """The jitted population train step, cached (`experiment.cached_program`). Its key leaves out the population
    section (the program reads only `reference_needed` and members_at_once from it), so runs differing only in
    population settings (selection, mutation, init) share one compilation."""
    from grpo_jax.population.config import population_config

    plain = config.copy_and_resolve_references()
    plain.population = population_config()
    key = ("population", model_config, config_lib.fingerprint(plain), population_train.reference_needed(config),
           population_train.traced_loss_fields(config), int(config.population.members_at_once), mesh)
    return shared.cached_program(key, lambda: population_train.make_population_train_step(model_config, config, mesh))


class PopulationExperiment(shared.Experiment):
    """K members built once from a validated config: the single run's mesh, task, rewards, sampler (shared), the
    stacked states over one frozen base, the population train step, the members' hyperparameters, the selection
    generator and the generation counter.

        exp = PopulationExperiment(config, workdir)
        rows = exp.step(0)                        # K metrics rows of GRPO step 0
        fitness, rows = exp.fitness(10)           # [K] and the K fitness rows
        evo = exp.evolve(fitness, 10)             # selection, copies, mutation; lineage rows in evo.rows
    """

    def __init__(self, config, workdir: str):
        from grpo_jax import tasks

        config_lib.validate(config)
        if not config.population.size >= 2:
            raise ValueError(f"PopulationExperiment needs population.size >= 2, got {config.population.size}")
        task = tasks.get(config.task.name, **shared.task_options(config))
        check_population_run(config, task)  # before loading the model
        policy = self._setup(config, workdir, task)
        self.size = int(config.population.size)
        self.names = member_names(config.population)
        self.states, self.frozen = population_train.init_population_state(
            policy.config, policy.params, config, self.mesh, size=self.size)
        use_ref = population_train.reference_needed(config) and int(config.model.lora_rank) == 0
        self.ref = sharding.shard_params(policy.params, policy.config, self.mesh) if use_ref else None
        del policy
        self.train_step = _population_step(self.model_config, config, self.mesh)
        self.base_key = jax.random.PRNGKey(int(config.seed))
        self.hyperparameters = initial_hyperparameters(config)
        self.rng = population_rng(int(config.seed))
        self.generation = 0
        self.elite = 0
        self.final_fitness = None
        self.last_evals = []
        n = int(config.population.fitness_examples) or int(config.eval.num_examples)
        self.fitness_examples = self.task.eval_set(n or None)
        self.fitness_config = config.copy_and_resolve_references()
        if not str(config.population.fitness).startswith("eval/pass@"):
            self.fitness_config.eval.pass_k = 0  # greedy only: the sampled pass@k draws are not needed
        if self.main:
            check_workdir(workdir, config, write=True)

    # ---------------------------------------------------------------------------------------- members

    @property
    def state(self):
        return self.states

    @state.setter
    def state(self, states):
        self.states = states

    def member_params(self, k: int):
        """Member k's full params (LoRA merged into the base)."""
        from grpo_jax.train_step import policy_params
        return policy_params(self.model_config, population_train.member(self.states, k), self.frozen)

    def policy_params(self):
        """The elite's params (what `experiment._export` writes)."""
        return self.member_params(self.elite)

    def tags(self, k: int) -> dict:
        """Member k's columns of a metrics row: member and hp/<name>."""
        return {"member": k, **{HP_PREFIX + name: v for name, v in self.hyperparameters[k].items()}}

    def _value(self, k: int, name: str, default):
        return self.hyperparameters[k].get(name, default)

    # ---------------------------------------------------------------------------------------- one step

    def step(self, step: int) -> list[shared.StepResult]:
        """GRPO step `step` of every member (see the module docstring): K StepResults, member order."""
        cfg = self.config
        P, G = int(cfg.rollout.prompts_per_step), int(cfg.rollout.group_size)
        t0 = time.time()
        examples = self.task.train_batch(int(cfg.seed), step, P)
        sampled = sample_members(
            self.sampler, self.model_config, self.states, self.frozen, examples,
            shared.step_key(self.base_key, shared.SAMPLE_TAG, step), group_size=G,
            temperature=[float(self._value(k, "temperature", cfg.rollout.temperature)) for k in range(self.size)],
            top_p=[float(self._value(k, "top_p", cfg.rollout.top_p)) for k in range(self.size)])
        t_sample = time.time() - t0
        members = [shared.member_batch(self, examples, s, G, int(self._value(k, "group_size", G)))
                   for k, s in enumerate(sampled)]
        columns = int(np.shape(sampled[0][1].tokens)[1])
        width = shared.completion_width(max(m.longest for m in members), columns,
                                        packed=bool(cfg.optim.pack_completions))
        batches = _stack_batches([m.batch for m in members], width)
        traced = {name: np.asarray([h[name] for h in self.hyperparameters], np.float32)
                  for name in self.names if name in population_train.TRAIN_HYPERPARAMETERS}
        t1 = time.time()
        prepared = self.train_step.prepare(self.states, self.frozen, self.ref, batches, traced)
        self.states, train_metrics = self.train_step.execute(prepared)
        train_metrics = {k: np.asarray(v, np.float64) for k, v in jax.device_get(train_metrics).items()}
        t_train = time.time() - t1
        generated = sum(m.generated for m in members)
        computed = getattr(self.sampler.engine, "last_tokens_computed", None)  # all members' decode rows
        out = []
        for k, m in enumerate(members):
            row = shared.with_train_metrics({"step": step + 1, **self.tags(k), **m.row},
                                            {name: float(v[k]) for name, v in train_metrics.items()})
            row["step_time"] = time.time() - t0
            row["sampler/time"], row["train/time"] = t_sample, t_train  # the population's joint calls
            row["train/completion_width"] = width
            row["train/tokens"] = m.tokens
            row["train/tokens_computed"] = prepared.tokens_computed  # one member's positions per pass
            row["sampler/tokens_per_s"] = generated / max(t_sample, 1e-9)  # all members' tokens, one call
            if computed is not None:
                row["sampler/tokens_computed"] = computed
            out.append(shared.StepResult(row, m.samples))
        return out

    # ---------------------------------------------------------------------------------------- evolution

    def fitness(self, step: int) -> tuple[np.ndarray, list[dict]]:
        """Every member's `population.fitness` on the shared fitness problems with the same key: ([K], K rows)."""
        name = str(self.config.population.fitness)
        key = shared.step_key(self.base_key, FITNESS_TAG, step)
        values, rows = [], []
        for k in range(self.size):
            result = evaluation.evaluate(self.sampler, self.member_params(k), self.fitness_examples, key,
                                         reward_fn=self.reward_fn, accuracy_fn=self.accuracy_fn,
                                         config=self.fitness_config, num_samples_shown=0,
                                         eval_metrics=self.task.eval_metrics)
            value = float(result.metrics[name])
            values.append(value)
            rows.append({"step": step, **self.tags(k), FITNESS_KEY: value, GENERATION_KEY: self.generation})
        return np.asarray(values, np.float64), rows

    def evolve(self, fitness, step: int) -> Evolution:
        """One evolution after step `step`: selection and mutation (`population.evolve`, drawing from `self.rng`),
        the members' states copied from their parents, the generation counted. Returns the Evolution (its rows are
        the lineage rows; the caller appends them)."""
        evo = evolve(fitness, self.hyperparameters, self.rng, self.config.population,
                                generation=self.generation + 1, step=step)
        if np.any(evo.parents != np.arange(self.size)):
            self.states = population_train.take_members(self.states, evo.parents)
        self.hyperparameters = [dict(h) for h in evo.hyperparameters]
        self.generation += 1
        return evo

    # ---------------------------------------------------------------------------------------- checkpoint meta

    def checkpoint_meta(self) -> dict:
        """The population's host state for a checkpoint's JSON meta."""
        return {META_KEY: {"generation": self.generation, "hyperparameters": self.hyperparameters,
                           "rng": rng_state(self.rng), "elite": self.elite, "size": self.size}}

    def restore_meta(self, meta: dict, where: str) -> None:
        """Take the population's host state back from a checkpoint's meta (`where` names it in errors)."""
        saved = meta.get(META_KEY)
        if not isinstance(saved, dict):
            raise ValueError(f"{where} holds no population state (a single-policy checkpoint?); the workdir is "
                             "inconsistent")
        if int(saved["size"]) != self.size or len(saved["hyperparameters"]) != self.size:
            raise ValueError(f"{where} holds {saved['size']} members, the config {self.size}")
        self.generation = int(saved["generation"])
        self.hyperparameters = [dict(h) for h in saved["hyperparameters"]]
        self.rng = rng_from_state(saved["rng"])
        self.elite = int(saved["elite"])


    # ---------------------------------------------------------------------------------------- the loop's calls

    @property
    def description(self) -> str:
        return f"GRPO x{self.size}"

    def begin(self, start: int, meta) -> None:
        """On resume: the population's host state from the checkpoint's meta, the lineage file cut to its
        generation; on a fresh start: the lineage file begun with the initial members."""
        if start:
            self.restore_meta(meta, f"checkpoint {start} in {self.workdir}")
            if self.main:
                lineage.truncate_lineage(self.workdir, self.generation)
            shared.say(f"resuming the population of {self.size} (generation {self.generation}) from the checkpoint "
                       f"of step {start} in {self.workdir}", self.main)
        elif self.main:
            lineage.truncate_lineage(self.workdir, None)
            lineage.append_rows(self.workdir, lineage.initial_rows(self.hyperparameters,
                                                                   init=str(self.config.population.init)))

    def train_results(self, step: int) -> list:
        return self.step(step)

    def evaluate(self, step: int, writer) -> dict:
        """Every member's eval rows; returns the elite's metrics (at a fresh start every member is the same policy)."""
        self.last_evals = _evals(self, step, writer)
        return self.last_evals[self.elite]

    def headline_eval(self, latest: dict) -> dict:
        return self.last_evals[self.elite]

    def after_step(self, done: int, writer) -> None:
        """Every population.evolve_every steps: fitness, selection and mutation, the lineage rows; at the last step
        the final fitness, which names the elite."""
        total_steps = int(self.config.total_steps)
        if not (done == total_steps or done % int(self.config.population.evolve_every) == 0):
            return
        fitness, rows = self.fitness(done)
        for row in rows:
            writer.write(row)
        if done == total_steps:
            self.elite = selection.best(fitness)
            self.final_fitness = float(fitness[self.elite])
            shown = " ".join(f"{f:.3f}" for f in fitness)
            shared.say(f"[population step {done}] final fitness [{shown}]; elite: member {self.elite}", self.main)
            return
        evo = self.evolve(fitness, done)
        if self.main:
            lineage.append_rows(self.workdir, evo.rows)
        shared.say(f"[population step {done}] generation {self.generation}: {_describe(evo, fitness)}", self.main)

    def finish(self, workdir: str):
        if self.config.checkpoint.export_hf:
            shared.say(f"exporting the elite, member {self.elite}", self.main)
        return shared.export_policy_dir(self, workdir)

    def summary(self) -> dict:
        return {"elite": self.elite, "fitness": self.final_fitness, "generation": self.generation}

def _stack_batches(batches: list[dict], width: int) -> dict:
    """K members' batches (same prompts) -> one dict with a leading member axis, completion columns cut to
    `width` (host arrays: the population runs in one process)."""
    cut = ("completions", "completion_mask", "old_logps", "action_mask")
    return {key: np.stack([np.asarray(b[key])[:, :width] if key in cut else np.asarray(b[key]) for b in batches])
            for key in batches[0]}


def _describe(evo: Evolution, fitness) -> str:
    parts = []
    for r in evo.rows:
        j, parent, m = r["member"], r["parent"], r["mutation"]
        what = m["kind"]
        if what == "hyperparameter":
            what = f"{m['name']} {m['from']:.4g} -> {m['to']:.4g}"
        parts.append(f"{j} <- {parent} ({what})" if parent != j else f"{j} kept ({what})")
    shown = " ".join(f"{f:.3f}" for f in np.asarray(fitness))
    return f"fitness [{shown}]; " + "; ".join(parts)


def _evals(exp: PopulationExperiment, step: int, writer) -> list[dict]:
    """Every member's eval row. A member whose trainable params equal an earlier member's bit for bit (all of them
    at a fresh start: clones of one policy) is not evaluated again: the eval's key and its greedy decoding are the
    same for every member, so its row is that member's result under its own tags (eval/time 0)."""
    results, out = [], []
    for k in range(exp.size):
        twin = next((j for j in range(k) if _same_params(exp.states, j, k)), None)
        if twin is None:
            t0 = time.time()
            result = shared.evaluate_params(exp, step, exp.member_params(k))
            seconds, note = time.time() - t0, ""
        else:
            result, seconds, note = results[twin], 0.0, f" (member {twin}'s params: its result)"
        results.append(result)
        out.append(shared.write_eval(exp, step, writer, result, seconds, exp.tags(k), note))
    return out


def _same_params(states, j: int, k: int) -> bool:
    """Members j and k hold bitwise the same trainable params (adapters, or the full weights)."""
    return all(bool(jnp.array_equal(leaf[j], leaf[k])) for leaf in jax.tree.leaves(states.params))
