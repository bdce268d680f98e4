"""The experiment loop: sample -> reward -> advantages -> update -> log / eval / checkpoint.

    result = runner.run(config, workdir)

One step (`Experiment.step`, grpo_jax/experiment.py; docs/design.md, "Data flow"):
  1. the step's P prompts: examples step*P ... step*P + P - 1 of the task's seeded stream (`task.train_batch`), so
     the data position is a function of the step;
  2. chat template + prefill -> left-padded tokens -> the rollout engine (`sampling.generate`): G completions per
     prompt with key fold_in(fold_in(PRNGKey(seed), SAMPLE_TAG = 0), step) (experiment.py; eval draws use
     EVAL_TAG = 1);
  3. decode the completions this process holds, score them with the config's rewards (TRL signature), gather
     the rewards [P, G] of every process;
  4. advantages (`advantages.group_advantages`) and reward statistics (`group_stats`);
  5. the train step: loss.num_iterations updates over micro-batches, with the sampler's log-probs as old log-probs,
     on the completion columns the batch needs (`completion_width`: its longest completion rounded up to a
     multiple of 16, with optim.pack_completions (the default) to 16 times a power of two, at most
     rollout.max_new_tokens), not all rollout.max_new_tokens of them;
  6. a metrics row (TRL's names), the progress bar, eval every eval.every steps (and at the start and the end),
     a checkpoint every checkpoint.every steps (and at the end).

This is the one loop for every kind of experiment: it calls the Experiment's named methods (`begin`,
`train_results`, `evaluate`, `after_step`, `checkpoint_meta`, `finish`, `summary`); a population
(grpo_jax/population/experiment.py) overrides them -- K rows a step, fitness and evolution after a step, its
host state in the checkpoint's meta -- and is found through the `experiment.EXPERIMENTS` registry, so this module
imports nothing of it.

Every random draw derives from (seed, step), and a checkpoint holds the train state, so running the same command
again resumes from the last checkpoint and writes exactly the rows an uninterrupted run writes (bit-identical on
CPU; only wall-clock fields differ). SIGTERM (e.g. TPU preemption) is caught: the loop saves a checkpoint at the
next step boundary and returns with status "preempted" (the CLI exits 0).
"""
from __future__ import annotations

import importlib
import os
from typing import Callable, Optional

from grpo_jax import distributed, evaluation, metrics as metrics_lib
from grpo_jax.checkpoint import Checkpointer
from grpo_jax.experiment import (EXPERIMENTS, Experiment, Preemption, RunResult, progress_bar, restore_checkpoint,
                                 say, write_plots)
from grpo_jax.experiment import StepResult, completion_width  # noqa: F401  (public names of a run, as before)


def make_experiment(config, workdir: str) -> Experiment:
    """The experiment `config` describes: the first registered kind that claims it (`EXPERIMENTS`; a population when
    population.size >= 2), else one policy."""
    for entry in EXPERIMENTS.entries():
        if entry.obj.claims(config):
            module, name = entry.obj.target.split(":")
            return getattr(importlib.import_module(module), name)(config, workdir)
    return Experiment(config, workdir)


def run(config, workdir: str, *, preempt_after: Optional[int] = None,
        on_step: Optional[Callable[[dict], None]] = None) -> RunResult:
    """Train `config` in `workdir` (resuming from its last checkpoint). Returns when done or preempted.

    preempt_after: testing hook, behave as if SIGTERM arrived after this many steps.
    on_step: called with each training metrics row (after it is written; a population's: one per member)."""
    workdir = os.path.abspath(workdir)
    exp = make_experiment(config, workdir)
    cfg, main = config, exp.main
    P = int(cfg.rollout.prompts_per_step)
    total_steps = int(cfg.total_steps)

    ckpt = Checkpointer(workdir, keep=int(cfg.checkpoint.keep))
    start = ckpt.latest_step() or 0
    meta = None
    if start:
        exp.state, exp.base_key, meta = restore_checkpoint(ckpt, start, exp.state, exp.base_key, start * P, workdir)
    exp.begin(start, meta)
    writer = metrics_lib.MetricsWriter(workdir, cfg, resume_step=start if start else None, enabled=main,
                                       tensorboard=bool(cfg.logging.tensorboard), wandb_project=cfg.logging.wandb)

    def save(step: int) -> None:
        ckpt.save(step, exp.state, exp.base_key, data_position=step * P, extra=exp.checkpoint_meta() or None)

    eval_every = int(cfg.eval.every)
    first_eval = last_eval = None
    status = "completed"
    done = start  # GRPO steps done
    try:
        with Preemption() as preemption:
            if eval_every and start == 0:
                first_eval = last_eval = exp.evaluate(0, writer)
            progress = progress_bar(start, total_steps, main and cfg.logging.progress)
            progress.set_description(exp.description)
            for step in range(start, total_steps):
                results = exp.train_results(step)
                for result in results:
                    writer.write(result.row)
                    if on_step is not None:
                        on_step(result.row)
                progress.update(1)
                progress.set_postfix(reward=f"{max(r.row['reward'] for r in results):.3f}",
                                     step_time=f"{results[0].row['step_time']:.1f}s")
                done = step + 1
                if eval_every and (done % eval_every == 0 or done == total_steps):
                    samples = results[0].samples
                    if samples and cfg.logging.num_samples:
                        table = evaluation.format_table(samples, ("prompt", "completion", "reward", "advantage"))
                        say(f"[train step {done}] sample completions:\n{table}", main)
                        writer.write_text("train/samples", table, done)
                    last_eval = exp.evaluate(done, writer)
                exp.after_step(done, writer)
                stop = distributed.any_process(preemption.requested or preempt_after == done)
                every = int(cfg.checkpoint.every)
                if stop or done == total_steps or (every and done % every == 0):
                    save(done)
                if stop and done < total_steps:
                    status = "preempted"
                    say(f"preempted: saved the checkpoint of step {done}; run the same command to resume", main)
                    break
            progress.close()
        if status == "completed" and total_steps > 0 and ckpt.latest_step() != total_steps:
            save(total_steps)
    finally:
        ckpt.close()
        writer.close()
    export_path, plots = None, []
    if status == "completed":
        export_path = exp.finish(workdir)
        plots = write_plots(workdir, main and cfg.logging.plots)
    if last_eval is not None:
        last_eval = exp.headline_eval(last_eval)
    return RunResult(status, done, workdir, first_eval, last_eval, plots, export_path, exp.summary())
