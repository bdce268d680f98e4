"""`calculator_probe`: what the untrained model does with each setting of configs/calculator.py, before training.

    python -m benchmarks calculator_probe                          # every setting: 16 problems x 8 at T, 32 greedy
    python -m benchmarks calculator_probe --settings prefill_user,open_tag
    python -m benchmarks calculator_probe --model DIR --settings tiny --problems 2 --group 2 --eval-problems 2 \
        --results ''                                                # the smoke run of tests/test_bench_probe.py

Each setting is the config `configs/calculator.py:SETTING` (any config file with SETTINGS: --config), built as
experiments.train builds it: its task (system message, prefill, spelling, training prefills), its environment and
its reward options. No training step is taken. Per setting:

  sampled: the first training batch (`task.train_batch(seed, 0, --problems)`), --group episodes each at the config's
           rollout.temperature (key: --seed)
    call_rate          share of episodes with at least one tool call
    right              share of episodes the task's accuracy reward (with the config's options) scores 1
    groups_with_right  share of problems with at least one right episode (a group with none has zero advantage:
                       GRPO learns nothing from it)
    reward_mean        the config's combined reward, averaged
  greedy:  the first --eval-problems held-out problems, greedy
    greedy_right, greedy_call_rate

One JSON line on stdout ({"rows": [...]}, appended to benchmarks/results.jsonl unless --results ''), and the table
as Markdown on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import numpy as np

from benchmarks import ROOT, machine, results
from benchmarks.policy import load_policy

CONFIG_FILE = os.path.join(ROOT, "configs", "calculator.py")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks calculator_probe", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=CONFIG_FILE, help="a config file with SETTINGS (its config args)")
    p.add_argument("--settings", default="", help="comma-separated settings of the config (default: all)")
    p.add_argument("--model", default="", help="models.load source (default: the config's model.path)")
    p.add_argument("--problems", type=int, default=16, help="training problems sampled")
    p.add_argument("--group", type=int, default=8, help="episodes per training problem")
    p.add_argument("--eval-problems", type=int, default=32, help="held-out problems played greedily")
    p.add_argument("--seed", type=int, default=0, help="the sampling key")
    p.add_argument("--results", default=results.RESULTS, help="JSONL file the line is appended to ('' = none)")
    return p


def config_module(path: str):
    spec = importlib.util.spec_from_file_location("bench_probe_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def probe(config, model_config, params, tokenizer, args) -> dict:
    """One setting's row (see the module docstring)."""
    import jax

    from grpo_jax import environments, evaluation, rewards, rollout, tasks
    from grpo_jax.experiment import accuracy_fn, task_options

    task = tasks.get(config.task.name, **task_options(config))
    sampler = evaluation.Sampler(model_config, tokenizer, None, settings=rollout.Settings.from_config(config.rollout),
                                 environment=environments.for_task(config.environment, task))
    reward_fn = rewards.combine(config.rewards.to_dict(), config.reward_options.to_dict())
    solved = accuracy_fn(config, task)
    key = jax.random.PRNGKey(args.seed)
    examples = task.train_batch(int(config.seed), 0, args.problems)
    seconds, (_, _, sampled) = results.timed(lambda: sampler.sample(
        params, examples, key, group_size=args.group, temperature=float(config.rollout.temperature)))
    right = np.asarray(evaluation.score(solved, examples, sampled, args.group)[0]) >= 1.0 - 1e-6
    reward = np.asarray(evaluation.score(reward_fn, examples, sampled, args.group)[0])
    calls = np.asarray(sampled.calls if sampled.calls is not None else np.zeros(len(right)))
    held_out = task.eval_set(args.eval_problems)
    _, _, greedy = sampler.sample(params, held_out, jax.random.fold_in(key, 1), group_size=1, greedy=True)
    greedy_right = np.asarray(evaluation.score(solved, held_out, greedy, 1)[0]) >= 1.0 - 1e-6
    greedy_calls = np.asarray(greedy.calls if greedy.calls is not None else np.zeros(len(greedy_right)))
    return {"episodes": int(len(right)), "call_rate": round(float((calls > 0).mean()), 4),
            "right": round(float(right.mean()), 4),
            "groups_with_right": round(float(right.reshape(-1, args.group).any(axis=1).mean()), 4),
            "reward_mean": round(float(reward.mean()), 4), "held_out": int(len(greedy_right)),
            "greedy_right": round(float(greedy_right.mean()), 4),
            "greedy_call_rate": round(float((greedy_calls > 0).mean()), 4), "sample_s": round(seconds, 2)}


def table(rows: list) -> str:
    def pct(x):
        return f"{100 * x:.1f}%"
    lines = ["| setting | calls (sampled) | right (sampled) | groups with a right one | greedy right |"
             " greedy calls |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['setting']} | {pct(r['call_rate'])} | {pct(r['right'])} | {pct(r['groups_with_right'])} | "
              f"{pct(r['greedy_right'])} | {pct(r['greedy_call_rate'])} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    from grpo_jax import config as config_lib

    module = config_module(args.config)
    names = [s for s in args.settings.split(",") if s] or list(module.SETTINGS)
    for name in names:
        if name not in getattr(module, "ARGS", module.SETTINGS):
            raise SystemExit(f"python -m benchmarks calculator_probe: {args.config} has no setting {name!r}; "
                             f"choose from {', '.join(module.SETTINGS)}")
    configs = {name: module.get_config(name) for name in names}
    for c in configs.values():
        if args.model:
            c.model.path = args.model
        config_lib.validate(c)
    policies = {}
    rows = []
    for name, c in configs.items():
        path = c.model.path
        if path not in policies:
            policies = {path: load_policy(path)}  # one model in memory at a time
        model_config, params, tokenizer = policies[path]
        if tokenizer is None:
            raise SystemExit(f"python -m benchmarks calculator_probe: {path} has no tokenizer (prompts are chat text)")
        row = {"setting": name, "what": module.SETTINGS.get(name, ""), "prefill": c.task.prefill}
        row.update(probe(c, model_config, params, tokenizer, args))
        rows.append(row)
        print(f"[calculator_probe] {name}: {row}", file=sys.stderr, flush=True)
    print(table(rows), file=sys.stderr)
    line = {"benchmark": "calculator_probe", "time": results.now(), "commit": results.git_commit(),
            "settings": {"config": os.path.relpath(args.config, ROOT), "model": args.model or "(the config's)",
                         "problems": args.problems, "group": args.group, "eval_problems": args.eval_problems,
                         "seed": args.seed},
            "rows": rows, "machine": machine.describe(), "threads": machine.threads()}
    return results.emit(line, args.results)


if __name__ == "__main__":
    main()
