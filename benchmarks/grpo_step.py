"""`grpo_step`: the time and peak memory of ONE full GRPO step, grpo_jax beside TRL's GRPOTrainer, same machine.

    python -m benchmarks grpo_step --vs-trl        # both systems
    python -m benchmarks grpo_step                 # grpo_jax and the roofline only
    python -m benchmarks grpo_step --padded        # grpo_jax's train step without packing (optim.pack_completions)

The step: 8 prompts x 8 completions x 64 new tokens of the arithmetic task, the embedded SmolLM2-135M-Instruct in
float32, full finetuning, kl_beta 0.04 (so a reference forward pass), loss 'grpo', temperature 1.0, lr 1e-6, the
whole batch in one micro-batch. One step = sampling + rewards + advantages + the train step (reference pass,
policy forward/backward, AdamW update): for grpo_jax exactly the runner's step (`runner.Experiment.step`), for TRL
one optimizer step of `GRPOTrainer.train()`. TRL's settings are mapped one to one in benchmarks/trl_reference.py
(its docstring has the table).

Each system runs in its OWN subprocess, so its peak memory is that process's VmHWM (model, optimizer, reference,
activations, framework). In each: load, then `--warmup` steps (compilation for grpo_jax, lazy initialisation for
TRL; reported separately as `warmup`), then `--steps` timed steady-state steps; `step_time_s` is their median.
Steps use the task's training batches 0, 1, 2, ... in order on both sides (the same prompts).

Roofline: the step's FLOPs (`flops.grpo_step`: sampling with each prompt prefilled once, then the train step as
executed, with the reference forward when kl_beta > 0), at the mean prompt length of the steps run and
T = max_new_tokens, divided by this machine's float32 matmul rate (`machine.matmul_rate`).

Prints ONE JSON line and appends it to benchmarks/results.jsonl (`--results`, '' = do not append):
  {"benchmark": "grpo_step", "time", "machine", "settings",
   "grpo_jax": {"step_time_s", "step_times_s", "phases_s" (median sampling / reward_and_advantages / train),
                "warmup", "load_s", "tokens_per_s" (completion tokens generated per second of step time),
                "mean_completion_length", "peak_rss_gb", "versions", "flops",
                "tokens" (per step: generated, trained, computed_sampling, computed_train; see _mean_counts)},
   "trl": {same keys but flops; phases: sampling / reward / scoring (reference pass + advantages) / train},
   "speedup" (TRL step time / grpo_jax step time), "memory_ratio" (TRL peak / grpo_jax peak),
   "roofline": {"seconds", "flops", "matmul_flops_per_s", "matmul_size", "mean_prompt_tokens"}}

Run it alone on the machine: other load changes the numbers. Tiny smoke run (what tests/test_bench_grpo.py does):
    python -m benchmarks grpo_step --vs-trl --model tiny.gguf --prompts 2 --group 2 --new-tokens 8 \
        --steps 1 --warmup 1 --matmul-size 128 --results ''
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import ROOT, child_env, flops, machine, results
from benchmarks.trl_reference import Settings


# ------------------------------------------------------------------------------------------------ grpo_jax side


def grpo_jax_config(settings: Settings, total_steps: int):
    """The grpo_jax ConfigDict equivalent to `settings` (the TRL mapping is in trl_reference's docstring)."""
    from grpo_jax import config as config_lib

    c = config_lib.base_config()
    c.seed = settings.seed
    c.total_steps = total_steps
    c.model.path = settings.model
    c.model.dtype = c.model.compute_dtype = "float32"
    c.model.lora_rank = 0
    c.model.remat = False
    c.task.name = settings.task
    for key, value in settings.task_options.items():
        c.task[key] = value
    c.rewards = dict(settings.rewards)
    c.rollout.prompts_per_step = settings.prompts_per_step
    c.rollout.group_size = settings.group_size
    c.rollout.max_new_tokens = settings.max_new_tokens
    c.rollout.temperature = settings.temperature
    c.rollout.top_p, c.rollout.top_k = 1.0, 0
    c.loss.variant = "grpo"
    c.loss.clip_low = c.loss.clip_high = settings.clip
    c.loss.kl_beta = settings.kl_beta
    c.loss.kl_estimator = "k3"
    c.loss.aggregation = "seq_mean_token_mean"
    c.loss.advantage_scale = "group"
    c.loss.advantage_baseline = "group_mean"
    c.loss.num_iterations = 1
    c.loss.mask_truncated = False
    c.loss.entropy_coef = 0.0
    c.optim.lr = settings.lr
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0
    c.optim.b1, c.optim.b2 = 0.9, settings.adam_b2
    c.optim.max_grad_norm = settings.max_grad_norm
    c.optim.micro_batch_size = settings.micro_batch_size
    config_lib.validate(c)
    return c


class GrpoJaxStep:
    """One GRPO step exactly as the runner does it (`runner.Experiment.step`: sample -> reward -> advantages -> train
    step -> metrics row), on the runner's experiment state built from `grpo_jax_config(settings)`.

    `step(i)` runs step i (the task's training batch i) and returns its phase times in seconds: sampling
    (`sampler/time`: generation + decoding), train (`train/time`: the jitted train step, waited for), and
    reward_and_advantages (the rest: scoring, advantages, group statistics, the metrics row)."""

    def __init__(self, settings: Settings, total_steps: int, workdir: str, pack_completions: bool = True):
        from grpo_jax import runner

        self.settings = settings
        self.config = grpo_jax_config(settings, total_steps)
        self.config.optim.pack_completions = pack_completions
        self.config.eval.every = 0
        self.config.checkpoint.every = 0
        self.config.logging.progress = False
        self.config.logging.tensorboard = False
        self.config.logging.num_samples = 0
        self.exp = runner.Experiment(self.config, workdir)
        self.rows: list[dict] = []

    def prompt_lengths(self, step: int) -> list[int]:
        examples = self.exp.task.train_batch(self.settings.seed, step, self.settings.prompts_per_step)
        return [len(self.exp.sampler.prompt_tokens(e)) for e in examples]

    def step(self, i: int) -> dict:
        row, _ = self.exp.step(i)
        self.rows.append(row)
        sampling, train, total = row["sampler/time"], row["train/time"], row["step_time"]
        return {"sampling": sampling, "reward_and_advantages": max(total - sampling - train, 0.0), "train": train,
                "total": total}


def run_grpo_jax(settings: Settings, steps: int, warmup: int, workdir: str, pack_completions: bool = True) -> dict:
    """Load, `warmup` steps, `steps` timed steps of grpo_jax in this process."""
    import flax
    import jax

    t = time.perf_counter()
    bench = GrpoJaxStep(settings, warmup + steps, os.path.join(workdir or tempfile.mkdtemp(), "grpo_jax"),
                        pack_completions)
    load_s = time.perf_counter() - t
    warm = [bench.step(i) for i in range(warmup)]
    timed = [bench.step(warmup + i) for i in range(steps)]
    versions = {"jax": jax.__version__, "flax": flax.__version__, "backend": jax.default_backend(),
                "devices": jax.device_count()}
    prompt_tokens = statistics.mean(n for i in range(warmup + steps) for n in bench.prompt_lengths(i))
    tokens = [r["completions/mean_length"] * settings.sequences for r in bench.rows[warmup:]]
    counts = [{"generated": r["completions/mean_length"] * settings.sequences,
               "trained": r["train/tokens"],
               "computed_sampling": r["sampler/tokens_computed"],  # the decode loop's rows of every step
               "computed_train": r["train/tokens_computed"]} for r in bench.rows[warmup:]]
    need = flops.grpo_step(bench.exp.model_config, settings.prompts_per_step, settings.group_size, prompt_tokens,
                           settings.max_new_tokens, settings.kl_beta > 0)
    return _summary(timed, warm, load_s, tokens, settings, versions,
                    extra={"mean_prompt_tokens": prompt_tokens, "flops": need, "last_metrics": bench.rows[-1],
                           "tokens": _mean_counts(counts)})


# ------------------------------------------------------------------------------------------------ TRL side


def run_trl(settings: Settings, steps: int, warmup: int, workdir: str) -> dict:
    """Load, `warmup` + `steps` optimizer steps of TRL's GRPOTrainer in this process (timed by callbacks)."""
    from benchmarks import trl_reference as ref

    t = time.perf_counter()
    trainer = ref.build_trainer(settings, warmup + steps, os.path.join(workdir or tempfile.mkdtemp(), "trl"))
    timer = ref.StepTimer(trainer)
    load_s = time.perf_counter() - t
    trainer.train()
    rows = [r for r in trainer.state.log_history if "completions/mean_length" in r]
    lengths = [r["completions/mean_length"] * settings.sequences for r in rows]
    phases = [dict(p, total=s) for p, s in zip(timer.phases, timer.step_times)]
    # TRL pads every completion of the step to the longest one, in generate and in both scoring passes.
    counts = [{"generated": r["completions/mean_length"] * settings.sequences,
               "trained": r["completions/mean_length"] * settings.sequences,
               "computed_sampling": r["completions/max_length"] * settings.sequences,
               "computed_train": r["completions/max_length"] * settings.sequences} for r in rows[warmup:]]
    return _summary(phases[warmup:], phases[:warmup], load_s, lengths[warmup:], settings, ref.versions(),
                    extra={"last_metrics": {k: v for k, v in rows[-1].items()} if rows else {},
                           "tokens": _mean_counts(counts)})


# ------------------------------------------------------------------------------------------------ shared


def _summary(timed: list[dict], warm: list[dict], load_s: float, completion_tokens: list, settings: Settings,
             versions: dict, extra: dict) -> dict:
    if not timed:
        raise ValueError("no timed steps (--steps must be >= 1)")
    times = [p["total"] for p in timed]
    median = statistics.median(times)
    phases = {k: statistics.median(p[k] for p in timed) for k in timed[0] if k != "total"}
    tokens = statistics.mean(completion_tokens) if completion_tokens else float("nan")
    return {"step_time_s": median, "step_times_s": times, "phases_s": phases, "warmup": warm, "load_s": load_s,
            "tokens_per_s": tokens / median, "mean_completion_length": tokens / settings.sequences,
            "peak_rss_gb": machine.peak_rss_bytes() / 1e9, "versions": versions, **extra}


def _mean_counts(counts: list[dict]) -> dict:
    """Per-step token counts averaged over the timed steps: generated (completion tokens sampled, stop tokens
    included), trained (completion tokens the loss reads), computed_sampling / computed_train (positions each
    phase computes, padding included; the train step's per pass, so a reference pass computes as many again)."""
    if not counts:
        return {}
    return {k: statistics.mean(c[k] for c in counts) for k in counts[0]}


def roofline(grpo_jax_result: dict, matmul_size: int) -> dict:
    """The grpo_jax side's step FLOPs over this machine's matmul rate."""
    need = grpo_jax_result["flops"]
    rate = machine.matmul_rate(matmul_size).wall
    return {"seconds": need["total"] / rate, "flops": need, "matmul_flops_per_s": rate, "matmul_size": matmul_size,
            "mean_prompt_tokens": grpo_jax_result["mean_prompt_tokens"]}


def run_side(side: str, args, settings: Settings, workdir: str) -> dict:
    """Run one system in a fresh subprocess; returns its summary (peak memory is that process's own)."""
    out = os.path.join(workdir, f"{side}.json")
    cmd = [sys.executable, "-m", "benchmarks", "grpo_step", "--side", side, "--out", out, "--workdir", workdir,
           "--steps", str(args.steps), "--warmup", str(args.warmup), *settings_args(settings)]
    if args.padded:
        cmd.append("--padded")
    proc = subprocess.run(cmd, env=child_env(), cwd=ROOT, stdout=sys.stderr)  # stdout stays ONE JSON line
    if proc.returncode != 0:
        raise RuntimeError(f"the {side} side of grpo_step failed (exit {proc.returncode}): {' '.join(cmd)}")
    with open(out) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------ CLI


def add_settings_arguments(parser: argparse.ArgumentParser, defaults: Settings) -> None:
    parser.add_argument("--model", default=defaults.model, help="models.load source (default: %(default)s)")
    parser.add_argument("--prompts", type=int, default=defaults.prompts_per_step, help="prompts per step")
    parser.add_argument("--group", type=int, default=defaults.group_size, help="completions per prompt")
    parser.add_argument("--new-tokens", type=int, default=defaults.max_new_tokens, help="max new tokens")
    parser.add_argument("--kl-beta", type=float, default=defaults.kl_beta)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--micro-batch", type=int, default=defaults.micro_batch_size,
                        help="sequences per gradient-accumulation micro-batch (0 = the whole step)")
    parser.add_argument("--seed", type=int, default=defaults.seed)


def settings_from_args(args) -> Settings:
    return Settings(model=args.model, prompts_per_step=args.prompts, group_size=args.group,
                    max_new_tokens=args.new_tokens, kl_beta=args.kl_beta, lr=args.lr, temperature=args.temperature,
                    micro_batch_size=args.micro_batch, seed=args.seed)


def settings_args(s: Settings) -> list[str]:
    return ["--model", s.model, "--prompts", str(s.prompts_per_step), "--group", str(s.group_size),
            "--new-tokens", str(s.max_new_tokens), "--kl-beta", repr(s.kl_beta), "--lr", repr(s.lr),
            "--temperature", repr(s.temperature), "--micro-batch", str(s.micro_batch_size), "--seed", str(s.seed)]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks grpo_step", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(p, Settings())
    p.add_argument("--vs-trl", action="store_true", help="also run TRL's GRPOTrainer (needs the bench extra)")
    p.add_argument("--padded", action="store_true",
                   help="grpo_jax trains with optim.pack_completions False (every row at the batch's width)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per system (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed first steps (compile / lazy init)")
    p.add_argument("--matmul-size", type=int, default=2048, help="matmul size of the FLOP/s measurement")
    p.add_argument("--results", default=results.RESULTS, help="JSONL file to append to ('' = do not append)")
    p.add_argument("--workdir", default="", help="scratch dir (default: a temporary dir)")
    p.add_argument("--side", choices=("grpo_jax", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> dict | None:
    args = parser().parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    try:
        settings = settings_from_args(args)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if args.side:  # a child process: run one system and write its summary
        if args.side == "grpo_jax":
            result = run_grpo_jax(settings, args.steps, args.warmup, args.workdir, not args.padded)
        else:
            result = run_trl(settings, args.steps, args.warmup, args.workdir)
        with open(args.out, "w") as f:
            json.dump(result, f)
        return None
    with tempfile.TemporaryDirectory(dir=args.workdir or None) as workdir:
        line = {"benchmark": "grpo_step", "time": results.now(), "commit": results.git_commit(),
                "machine": machine.describe(), "settings": dataclasses.asdict(settings),
                "steps": args.steps, "warmup": args.warmup, "pack_completions": not args.padded}
        line["grpo_jax"] = run_side("grpo_jax", args, settings, workdir)
        if args.vs_trl:
            from benchmarks.trl_reference import hf_checkpoint
            hf_checkpoint(settings.model)  # convert a GGUF here, so the TRL process's peak memory is TRL's own
            line["trl"] = run_side("trl", args, settings, workdir)
            line["speedup"] = line["trl"]["step_time_s"] / line["grpo_jax"]["step_time_s"]
            line["memory_ratio"] = line["trl"]["peak_rss_gb"] / line["grpo_jax"]["peak_rss_gb"]
        line["roofline"] = roofline(line["grpo_jax"], args.matmul_size)
    return results.emit(line, args.results)


if __name__ == "__main__":
    main()
