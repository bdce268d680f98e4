"""`population`: a population run beside each of its members' starting learning rates trained alone.

    python -m benchmarks population                       # configs/population.py: K = 4 LoRA members + 4 singles
    python -m benchmarks population --config-arg tiny --model tiny.gguf --out /tmp/bp --results ''   # smoke

Runs `python -m experiments.train --config configs/population.py[:ARG]` (the population), then for each member k
`--config configs/population.py:ARG,single=k` (the same experiment with the population off and member k's starting
hyperparameters, e.g. its learning rate), one subprocess each, one after another, in OUT/population and
OUT/single<k>. Reports:

- accuracy: every member's and the elite's held-out accuracy at the end (the elite: the member with the best final
  fitness, the one exported), and each single run's before / after;
- cost: the median training-step time of the population (all K members: sampling, rewards, the one update program)
  against the median single-member step, after each run's first step (its compile), and `step_ratio` = population
  step / single step (the issue's bound on CPU: at most K);
- wall time of the population run against the sum of the single runs' (each subprocess start to end: load,
  compiles, evals and checkpoints included).

--cost-only measures the step cost alone: --steps (default 6) steps of the population and of member 0 alone, no
eval, no evolution, no checkpoints or export (the population's last-step fitness is still measured).

One JSON line on stdout, appended to benchmarks/results.jsonl (--results '' appends nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks import ROOT, child_env, machine, results

CONFIG_FILE = os.path.join(ROOT, "configs", "population.py")
FITNESS_KEY = "population/fitness"  # population/experiment.py's metrics key (jax-free import here)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks population", description=__doc__.split("\n\n")[0])
    p.add_argument("--config-arg", default="", help="configs/population.py's arg ('' or 'tiny')")
    p.add_argument("--model", default="", help="model.path override (default: the config's)")
    p.add_argument("--steps", type=int, default=0, help="total_steps override (0: the config's)")
    p.add_argument("--out", default=os.path.join("runs", "bench_population"))
    p.add_argument("--results", default=results.RESULTS, help="JSONL file the line is appended to ('' = none)")
    p.add_argument("--skip-singles", action="store_true", help="run the population only")
    p.add_argument("--cost-only", action="store_true",
                   help="the step cost alone: --steps (default 6) steps of the population and of member 0 alone, "
                        "no eval, no evolution")
    return p


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _run(arg: str, args, workdir: str, env, population: bool) -> float:
    """Runs experiments.train on configs/population.py:arg in `workdir` (a fresh one); returns its wall seconds."""
    spec = CONFIG_FILE + (f":{arg}" if arg else "")
    command = [sys.executable, "-m", "experiments.train", "--config", spec, "--workdir", workdir]
    if args.model:
        command.append(f"--config.model.path={args.model}")
    if args.steps:
        command += [f"--config.total_steps={args.steps}",
                    f"--config.eval.every={0 if args.cost_only else args.steps}"]
    if args.cost_only:
        command += ["--config.checkpoint.every=0", "--config.checkpoint.export_hf=False"]
        if population:  # no evolution inside the run (the last step's fitness is still measured)
            command.append(f"--config.population.evolve_every={args.steps + 1}")
    print(f"[benchmark population] {' '.join(command)}", file=sys.stderr, flush=True)
    t = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env=env)
    return time.perf_counter() - t


def _median_step_time(rows: list[dict]) -> float | None:
    """Median step_time over the training steps after the first (one value per step)."""
    per_step = {}
    for row in rows:
        if "step_time" in row and "step" in row:
            per_step.setdefault(int(row["step"]), float(row["step_time"]))
    times = [t for step, t in sorted(per_step.items()) if step > 1]
    return statistics.median(times) if times else None


def _accuracies(rows: list[dict]) -> dict:
    """{member (None for a single run): {step: eval/accuracy}} from the eval rows."""
    out: dict = {}
    for row in rows:
        if "eval/accuracy" in row:
            out.setdefault(row.get("member"), {})[int(row["step"])] = float(row["eval/accuracy"])
    return out


def _final_fitness(rows: list[dict]) -> dict:
    """{member: its last `population/fitness` row's value} (the run's final fitness measurement)."""
    out = {}
    for row in rows:
        if "member" in row and FITNESS_KEY in row:
            out[int(row["member"])] = float(row[FITNESS_KEY])
    return out


def _config(arg: str):
    """configs/population.py's config for `arg`, loaded from its file as experiments.train loads it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_population_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def report(args, population_wall: float, single_walls: dict) -> dict:
    from grpo_jax import population

    config = _config(args.config_arg)

    members = population.initial_hyperparameters(config)
    pop_dir = os.path.join(args.out, "population")
    rows = _read_jsonl(os.path.join(pop_dir, "metrics.jsonl"))
    lineage = _read_jsonl(os.path.join(pop_dir, population.LINEAGE_FILE))
    accuracy = _accuracies(rows)
    last = {m: acc[max(acc)] for m, acc in accuracy.items() if m is not None}
    fitness = _final_fitness(rows)
    elite = max(fitness, key=lambda m: (fitness[m], -m)) if fitness else None  # selection.best: the first best
    line = {
        "benchmark": "population", "time": results.now(), "commit": results.git_commit(),
        "machine": machine.describe(), "config": f"configs/population.py:{args.config_arg}",
        "members": len(members), "steps": int(args.steps or config.total_steps), "cost_only": bool(args.cost_only),
        "population": {
            "wall_s": round(population_wall, 1),
            "step_s": _median_step_time(rows),
            "start_hyperparameters": members,
            "accuracy_first": {str(m): acc[min(acc)] for m, acc in accuracy.items() if m is not None},
            "accuracy_last": {str(m): v for m, v in last.items()},
            "fitness": str(config.population.fitness),
            "final_fitness": {str(m): v for m, v in fitness.items()},
            "elite": elite,
            "elite_accuracy": last.get(elite),
            "evolutions": max((int(r.get("generation", 0)) for r in lineage), default=0),
        },
    }
    if single_walls:
        singles = []
        for k, wall in sorted(single_walls.items()):
            single_rows = _read_jsonl(os.path.join(args.out, f"single{k}", "metrics.jsonl"))
            acc = _accuracies(single_rows).get(None, {})
            singles.append({"member": k, "hyperparameters": members[k], "wall_s": round(wall, 1),
                            "step_s": _median_step_time(single_rows),
                            "accuracy_first": acc[min(acc)] if acc else None,
                            "accuracy_last": acc[max(acc)] if acc else None})
        line["singles"] = singles
        steps = [s["step_s"] for s in singles if s["step_s"]]
        if steps and line["population"]["step_s"]:
            line["single_step_s"] = statistics.median(steps)
            line["step_ratio"] = round(line["population"]["step_s"] / line["single_step_s"], 3)
        if not args.cost_only:  # the population's wall time against all K single runs'
            line["wall_ratio"] = round(population_wall / sum(s["wall_s"] for s in singles), 3)
    return line


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    env = child_env()
    pop_dir = os.path.join(args.out, "population")
    if os.path.exists(pop_dir):
        raise SystemExit(f"{pop_dir} exists: give a fresh --out (a resumed run would not time the whole run)")
    if args.cost_only:
        args.steps = args.steps or 6
    population_wall = _run(args.config_arg, args, pop_dir, env, population=True)
    single_walls = {}
    if not args.skip_singles:
        members = 1 if args.cost_only else int(_config(args.config_arg).population.size)
        for member in range(members):
            arg = ",".join(a for a in (args.config_arg, f"single={member}") if a)
            single_walls[member] = _run(arg, args, os.path.join(args.out, f"single{member}"), env, population=False)
    return results.emit(report(args, population_wall, single_walls), args.results)


if __name__ == "__main__":
    main()
