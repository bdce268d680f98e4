"""`learning`: the same 20-step GRPO experiment in grpo_jax and in TRL, seeds 0-2: reward curves and accuracy.

    python -m benchmarks learning                                              # everything
    nohup python -m benchmarks learning --systems trl --seeds 0 > trl0.log 2>&1 &     # one piece
    python -m benchmarks learning --report                                     # curves + plot from what is done

The experiment is benchmarks/learning_config.py (SmolLM2-135M-Instruct, arithmetic, 4 prompts x 8 completions x 48
new tokens, loss 'grpo', kl_beta 0.04, lr 1e-5): grpo_jax runs it through the runner
(`python -m experiments.train --config benchmarks/learning_config.py ...`), TRL through
`trl_reference.build_trainer` with the settings `learning_config.settings()` from the same file. Step s trains on
the task's training batch s of the seed on both sides (the same problems). Held-out accuracy: greedy decoding of the task's whole eval
split, before training and after the last step (grpo_jax: the runner's evaluator; TRL: transformers' `generate`,
scored by the same reward), so the two "before" numbers cross-check the two evaluators.

Each (system, seed) run is its own subprocess and its own directory `OUT/runs/<system>-seed<k>/` (`curve.jsonl`,
`eval.json`, `run.json` when done; a done run is skipped unless --force), so pieces can run in the background one
at a time. After the runs (or with --report) the whole OUT is summarised:

  OUT/curves.jsonl    one row per system, seed and step: {"system", "seed", "step", "reward", "reward_std", "kl",
                      "completions/mean_length", "step_time"}
  OUT/evals.jsonl     one row per system and seed: {"system", "seed", "before", "after", "wall_s", "train_s"}
  OUT/learning.png    mean reward per step of each system (line: mean over seeds, band: min-max over seeds)
  one JSON line on stdout, appended to benchmarks/results.jsonl: per system the mean reward over all steps and over
  the last 5 (mean and std across seeds), accuracy before/after, wall time per run; and `within_trl_spread`: the
  fraction of steps at which grpo_jax's seed-mean reward lies inside TRL's min-max band over seeds.

Tiny smoke run (what tests/test_bench_grpo.py does):
    python -m benchmarks learning --config-arg tiny --model tiny.gguf --seeds 0 --out /tmp/bl --results ''
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks import ROOT, child_env, machine, results

SYSTEMS = ("grpo_jax", "trl")
CONFIG_FILE = os.path.join(ROOT, "benchmarks", "learning_config.py")
CURVE_KEYS = ("reward", "reward_std", "kl", "completions/mean_length", "step_time")
LAST = 5  # "final reward" = mean over the last LAST steps


def experiment():
    """The benchmarks/learning_config.py module, loaded from its file as experiments.train loads it."""
    spec = importlib.util.spec_from_file_location("bench_learning_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_dir(out: str, system: str, seed: int) -> str:
    return os.path.join(out, "runs", f"{system}-seed{seed}")


def _write_json(path: str, value) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)


def _write_jsonl(path: str, rows) -> None:
    with open(path + ".tmp", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(path + ".tmp", path)


def _read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------------------------------ one TRL run


def run_trl(config_arg: str, model: str | None, seed: int, steps: int, directory: str) -> None:
    """One TRL run in this process: accuracy before, `steps` GRPO steps, accuracy after; writes curve.jsonl and
    eval.json in `directory`."""
    from benchmarks import trl_reference as ref
    from grpo_jax import rewards, tasks

    exp = experiment()
    settings = exp.settings(config_arg)
    settings.seed = seed
    if model:
        settings.model = model
    config = exp.get_config(config_arg)
    max_new = int(config.eval.max_new_tokens) or settings.max_new_tokens
    task = tasks.get(settings.task, **settings.task_options)
    held_out = task.eval_set(int(config.eval.num_examples) or None)
    accuracy = rewards.get(task.accuracy_reward)

    trainer = ref.build_trainer(settings, steps, os.path.join(directory, "trl"))
    timer = ref.StepTimer(trainer)
    before = ref.greedy_accuracy(trainer.model, trainer.processing_class, held_out, accuracy, max_new,
                                 int(config.eval.batch_size))
    trainer.train()
    after = ref.greedy_accuracy(trainer.model, trainer.processing_class, held_out, accuracy, max_new,
                                int(config.eval.batch_size))
    logged = [r for r in trainer.state.log_history if "reward" in r]
    rows = [{"step": i + 1, **{k: r[k] for k in CURVE_KEYS if k in r}, "step_time": timer.step_times[i]}
            for i, r in enumerate(logged)]
    _write_jsonl(os.path.join(directory, "curve.jsonl"), rows)
    _write_json(os.path.join(directory, "eval.json"), {"before": before, "after": after,
                                                       "train_s": sum(timer.step_times), "versions": ref.versions()})


# ------------------------------------------------------------------------------------------------ one grpo_jax run


def grpo_jax_command(config_arg: str, model: str | None, seed: int, steps: int, workdir: str) -> list[str]:
    """The runner command of one grpo_jax run (the documented run contract)."""
    config = CONFIG_FILE + (f":{config_arg}" if config_arg else "")
    cmd = [sys.executable, "-m", "experiments.train", "--config", config, "--workdir", workdir,
           f"--config.seed={seed}", f"--config.total_steps={steps}", f"--config.eval.every={steps}"]
    if model:
        cmd.append(f"--config.model.path={model}")
    return cmd


def grpo_jax_results(workdir: str) -> tuple[list[dict], dict | None, dict | None]:
    """(curve rows, eval metrics before the first step or None, eval metrics after the last step or None) from
    the runner's DIR/metrics.jsonl (training rows carry `reward`, eval rows `eval/accuracy`)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the grpo_jax run wrote no metrics.jsonl")
    rows = _read_jsonl(path)
    train = [r for r in rows if "reward" in r and "eval/accuracy" not in r]
    evals = [r for r in rows if "eval/accuracy" in r]
    curve = [{"step": i + 1, **{k: r[k] for k in CURVE_KEYS if k in r}} for i, r in enumerate(train)]
    steps = [r.get("step", 0) for r in train] or [0]
    before = next((_eval_only(r) for r in evals if r.get("step", 0) < min(steps) or r.get("step", 0) <= 0), None)
    after = next((_eval_only(r) for r in reversed(evals) if r.get("step", 0) >= max(steps) > 0), None)
    return curve, before, after


def _eval_only(row: dict) -> dict:
    return {k: v for k, v in row.items() if k.startswith("eval/")}


def grpo_jax_before(config_arg: str, model: str | None) -> dict:
    """Held-out accuracy of the initial model with grpo_jax's evaluator (used when the runner logged no eval at
    step 0; the same for every seed: greedy decoding of the same eval set)."""
    import jax
    from grpo_jax import evaluation, rewards, sharding, tasks
    from grpo_jax.models.load import load

    config = experiment().get_config(config_arg)
    if model:
        config.model.path = model
    policy = load(config.model.path)
    mesh = sharding.make_mesh(config.mesh)
    task_options = {k: v for k, v in config.task.items() if k != "name"}
    task = tasks.get(config.task.name, **task_options)
    held_out = task.eval_set(int(config.eval.num_examples) or None)
    sampler = evaluation.Sampler(policy.config, policy.tokenizer, mesh)
    result = evaluation.evaluate(sampler, policy.params, held_out, jax.random.PRNGKey(0),
                                 reward_fn=rewards.combine(dict(config.rewards)),
                                 accuracy_fn=rewards.get(task.accuracy_reward), config=config)
    return result.metrics


def run_grpo_jax(config_arg: str, model: str | None, seed: int, steps: int, directory: str, out: str,
                 env: dict) -> None:
    """One grpo_jax run through the runner (a subprocess); writes curve.jsonl and eval.json in `directory`."""
    workdir = os.path.join(directory, "workdir")
    subprocess.run(grpo_jax_command(config_arg, model, seed, steps, workdir), env=env, cwd=ROOT, check=True,
                   stdout=sys.stderr)
    curve, before, after = grpo_jax_results(workdir)
    if before is None:
        before = _cached_before(config_arg, model, out, env)
    _write_jsonl(os.path.join(directory, "curve.jsonl"), curve)
    _write_json(os.path.join(directory, "eval.json"), {"before": before, "after": after,
                                                       "train_s": sum(r.get("step_time", 0.0) for r in curve)})


def _cached_before(config_arg: str, model: str | None, out: str, env: dict) -> dict:
    """grpo_jax_before in a subprocess, computed once per OUT (OUT/grpo_jax_before.json)."""
    path = os.path.join(out, "grpo_jax_before.json")
    if not os.path.exists(path):
        stdout = subprocess.run(
            [sys.executable, "-m", "benchmarks", "learning", "--internal-before", "--config-arg", config_arg,
             *(["--model", model] if model else [])],
            env=env, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True).stdout
        _write_json(path, json.loads(stdout.strip().splitlines()[-1]))
    with open(path) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------ orchestration


def run_one(system: str, args, seed: int, env: dict) -> None:
    directory = run_dir(args.out, system, seed)
    done = os.path.join(directory, "run.json")
    if os.path.exists(done) and not args.force:
        print(f"[learning] {system} seed {seed}: already done ({done}); --force reruns it", file=sys.stderr)
        return
    os.makedirs(directory, exist_ok=True)
    print(f"[learning] {system} seed {seed}: running ({directory})", file=sys.stderr, flush=True)
    t = time.perf_counter()
    if system == "grpo_jax":
        run_grpo_jax(args.config_arg, args.model, seed, args.steps, directory, args.out, env)
    else:
        cmd = [sys.executable, "-m", "benchmarks", "learning", "--internal-trl", "--config-arg", args.config_arg,
               "--seeds", str(seed), "--steps", str(args.steps), "--out", args.out,
               *(["--model", args.model] if args.model else [])]
        subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=sys.stderr)
    _write_json(done, {"system": system, "seed": seed, "steps": args.steps, "wall_s": time.perf_counter() - t,
                       "config_arg": args.config_arg, "model": args.model or experiment().settings(
                           args.config_arg).model})


def collect(out: str) -> tuple[list[dict], list[dict]]:
    """(curve rows, eval rows) of every finished run under OUT/runs."""
    curves, evals = [], []
    runs = os.path.join(out, "runs")
    for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
        directory = os.path.join(runs, name)
        if not os.path.exists(os.path.join(directory, "run.json")):
            continue
        with open(os.path.join(directory, "run.json")) as f:
            run = json.load(f)
        with open(os.path.join(directory, "eval.json")) as f:
            ev = json.load(f)
        tag = {"system": run["system"], "seed": run["seed"]}
        curves += [{**tag, **row} for row in _read_jsonl(os.path.join(directory, "curve.jsonl"))]
        evals.append({**tag, "before": ev["before"], "after": ev["after"], "wall_s": run["wall_s"],
                      "train_s": ev.get("train_s")})
    return curves, evals


def _mean_std(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def per_step(curves: list[dict], system: str) -> dict[int, list[float]]:
    by_step: dict[int, list[float]] = {}
    for row in curves:
        if row["system"] == system and row.get("reward") is not None:
            by_step.setdefault(int(row["step"]), []).append(float(row["reward"]))
    return by_step


def summarize(curves: list[dict], evals: list[dict]) -> dict:
    """Per system: mean reward over all steps and over the last LAST steps, accuracy before/after, times (each as
    mean/std across seeds); and the fraction of steps where grpo_jax's seed-mean lies in TRL's seed min-max band."""
    summary = {}
    for system in SYSTEMS:
        seeds = sorted({r["seed"] for r in curves if r["system"] == system})
        if not seeds:
            continue
        rewards_by_seed = {s: [r["reward"] for r in sorted((r for r in curves if r["system"] == system
                                                            and r["seed"] == s), key=lambda r: r["step"])]
                           for s in seeds}
        ev = [e for e in evals if e["system"] == system]
        summary[system] = {
            "seeds": seeds,
            "mean_reward": _mean_std([statistics.mean(v) for v in rewards_by_seed.values() if v]),
            f"mean_reward_last{LAST}": _mean_std([statistics.mean(v[-LAST:]) for v in rewards_by_seed.values() if v]),
            "accuracy_before": _mean_std([e["before"]["eval/accuracy"] for e in ev if e.get("before")]),
            "accuracy_after": _mean_std([e["after"]["eval/accuracy"] for e in ev if e.get("after")]),
            "wall_s_per_run": _mean_std([e["wall_s"] for e in ev]),
            "train_s_per_run": _mean_std([e["train_s"] for e in ev if e.get("train_s") is not None]),
        }
    ours, theirs = per_step(curves, "grpo_jax"), per_step(curves, "trl")
    common = sorted(set(ours) & set(theirs))
    if common:
        inside = [min(theirs[s]) <= statistics.mean(ours[s]) <= max(theirs[s]) for s in common]
        summary["within_trl_spread"] = sum(inside) / len(inside)
        summary["steps_compared"] = len(common)
    if "grpo_jax" in summary and "trl" in summary:
        ours_t, theirs_t = summary["grpo_jax"]["wall_s_per_run"]["mean"], summary["trl"]["wall_s_per_run"]["mean"]
        summary["wall_time_ratio"] = ours_t / theirs_t if ours_t and theirs_t else None
    return summary


def plot(curves: list[dict], path: str, title: str) -> None:
    """Mean reward per step of each system: line = mean over seeds, band = min-max over seeds, thin lines = seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for system, color in zip(SYSTEMS, ("tab:blue", "tab:orange")):
        by_step = per_step(curves, system)
        if not by_step:
            continue
        steps = sorted(by_step)
        for seed in sorted({r["seed"] for r in curves if r["system"] == system}):
            rows = sorted((r for r in curves if r["system"] == system and r["seed"] == seed), key=lambda r: r["step"])
            ax.plot([r["step"] for r in rows], [r["reward"] for r in rows], color=color, alpha=0.25, linewidth=0.8)
        n = max(len(v) for v in by_step.values())
        ax.fill_between(steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps], color=color,
                        alpha=0.15)
        ax.plot(steps, [statistics.mean(by_step[s]) for s in steps], color=color, linewidth=2,
                label=f"{system} (mean of {n} seed{'s' if n > 1 else ''}, band = min-max)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward of the step's completions")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(args) -> dict:
    curves, evals = collect(args.out)
    if not curves:
        raise SystemExit(f"no finished runs under {os.path.join(args.out, 'runs')}")
    _write_jsonl(os.path.join(args.out, "curves.jsonl"), curves)
    _write_jsonl(os.path.join(args.out, "evals.jsonl"), evals)
    s = experiment().settings(args.config_arg)
    title = (f"GRPO on {s.task}: {s.prompts_per_step} prompts x {s.group_size} completions x {s.max_new_tokens} "
             f"tokens, loss grpo, kl_beta {s.kl_beta}, lr {s.lr:g}")
    plot(curves, os.path.join(args.out, "learning.png"), title)
    line = {"benchmark": "learning", "time": results.now(), "commit": results.git_commit(),
            "machine": machine.describe(),
            "config": CONFIG_FILE + (f":{args.config_arg}" if args.config_arg else ""),
            "out": args.out, "plot": os.path.join(args.out, "learning.png"), **summarize(curves, evals)}
    return line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks learning", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of grpo_jax,trl")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="GRPO steps per run (default: the config's, 20)")
    p.add_argument("--config-arg", default="", help="argument of benchmarks/learning_config.py ('' or 'tiny')")
    p.add_argument("--model", default=None, help="override the model source of both systems")
    p.add_argument("--out", default=os.path.join("benchmarks", "learning"), help="output dir (default: %(default)s)")
    p.add_argument("--results", default=results.RESULTS,
                   help="JSONL file to append the summary to ('' = do not append)")
    p.add_argument("--force", action="store_true", help="rerun runs that are already done")
    p.add_argument("--report", action="store_true", help="only summarise and plot the finished runs")
    p.add_argument("--internal-trl", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--internal-before", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> dict | None:
    args = parser().parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        raise SystemExit(f"--systems: unknown {bad}; choose from {', '.join(SYSTEMS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        raise SystemExit(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    exp = experiment()
    try:
        args.steps = args.steps or exp.steps(args.config_arg)
    except KeyError:
        raise SystemExit(f"--config-arg: unknown {args.config_arg!r}; valid: {sorted(exp.STEPS)}") from None
    args.out = os.path.abspath(args.out)
    if args.internal_trl:
        run_trl(args.config_arg, args.model, seeds[0], args.steps, run_dir(args.out, "trl", seeds[0]))
        return None
    if args.internal_before:
        print(json.dumps(grpo_jax_before(args.config_arg, args.model)))
        return None
    if not args.report:
        env = child_env()
        for seed in seeds:
            for system in systems:
                run_one(system, args, seed, env)
    return results.emit(report(args), args.results)


if __name__ == "__main__":
    main()
