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

Every random draw derives from (seed, step), and a checkpoint holds the train state, so running the same command
again resumes from the last checkpoint and writes exactly the rows an uninterrupted run writes (bit-identical on
CPU; only wall-clock fields differ). SIGTERM (e.g. TPU preemption) is caught: the loop saves a checkpoint at the
next step boundary and returns with status "preempted" (the CLI exits 0).
"""
from __future__ import annotations

import os
from typing import Callable, Optional

from grpo_jax import distributed, evaluation, metrics as metrics_lib
from grpo_jax.checkpoint import Checkpointer
from grpo_jax.experiment import (Experiment, RunResult, _Preemption, _eval, _export, _plots, _progress, _say,
                                 restore_checkpoint)
from grpo_jax.experiment import StepResult, completion_width  # noqa: F401  (public names of a run, as before)


def run(config, workdir: str, *, preempt_after: Optional[int] = None,
        on_step: Optional[Callable[[dict], None]] = None) -> RunResult:
    """Train `config` in `workdir` (resuming from its last checkpoint). Returns when done or preempted.

    preempt_after: testing hook, behave as if SIGTERM arrived after this many steps.
    on_step: called with each training metrics row (after it is written)."""
    workdir = os.path.abspath(workdir)
    from grpo_jax import population

    if "population" in config and population.enabled(config):
        from grpo_jax.population.experiment import run_population
        return run_population(config, workdir, preempt_after=preempt_after, on_step=on_step)
    exp = Experiment(config, workdir)
    cfg, main = config, exp.main
    P = int(cfg.rollout.prompts_per_step)
    total_steps = int(cfg.total_steps)

    ckpt = Checkpointer(workdir, keep=int(cfg.checkpoint.keep))
    start = ckpt.latest_step() or 0
    if start:
        exp.state, exp.base_key, _ = restore_checkpoint(ckpt, start, exp.state, exp.base_key, start * P, workdir)
        _say(f"resuming from the checkpoint of step {start} in {ckpt.directory}", main)
    writer = metrics_lib.MetricsWriter(workdir, cfg, resume_step=start if start else None, enabled=main,
                                       tensorboard=bool(cfg.logging.tensorboard), wandb_project=cfg.logging.wandb)
    eval_every = int(cfg.eval.every)
    first_eval = last_eval = None
    status = "completed"
    done = start  # GRPO steps done
    try:
        with _Preemption() as preemption:
            if eval_every and start == 0:
                first_eval = last_eval = _eval(exp, 0, writer)
            progress = _progress(start, total_steps, main and cfg.logging.progress)
            for step in range(start, total_steps):
                row, samples = exp.step(step)
                writer.write(row)
                if on_step is not None:
                    on_step(row)
                progress.update(1)
                progress.set_postfix(reward=f"{row['reward']:.3f}", step_time=f"{row['step_time']:.1f}s")
                done = step + 1
                if eval_every and (done % eval_every == 0 or done == total_steps):
                    if samples and cfg.logging.num_samples:
                        table = evaluation.format_table(samples, ("prompt", "completion", "reward", "advantage"))
                        _say(f"[train step {done}] sample completions:\n{table}", main)
                        writer.write_text("train/samples", table, done)
                    last_eval = _eval(exp, done, writer)
                stop = distributed.any_process(preemption.requested or preempt_after == done)
                every = int(cfg.checkpoint.every)
                if stop or done == total_steps or (every and done % every == 0):
                    ckpt.save(done, exp.state, exp.base_key, data_position=done * P)
                if stop and done < total_steps:
                    status = "preempted"
                    _say(f"preempted: saved the checkpoint of step {done}; run the same command to resume", main)
                    break
            progress.close()
        if status == "completed" and total_steps > 0 and ckpt.latest_step() != total_steps:
            ckpt.save(total_steps, exp.state, exp.base_key, data_position=total_steps * P)
    finally:
        ckpt.close()
        writer.close()
    export_path, plots = None, []
    if status == "completed":
        export_path = _export(exp, workdir)
        plots = _plots(workdir, main and cfg.logging.plots)
    return RunResult(status, done, workdir, first_eval, last_eval, plots, export_path)
