"""`multiturn`: calculator episodes with each row's KV cache kept across turns, beside the same episodes re-prefilled.

    python -m benchmarks multiturn                       # SmolLM2-135M-Instruct, 8 prompts x 8 episodes, 3 turns
    python -m benchmarks multiturn --model DIR --prompts 2 --group 2 --new-tokens 16 --max-turn-tokens 4 \
        --repeats 1 --results ''                         # the smoke run of tests/test_bench_multiturn.py
    python -m benchmarks multiturn --shape qwen2.5-0.5b --dtype bfloat16 --tokenizer DIR \
        --environment guess_number --max-turns 4 --max-turn-tokens 32 --new-tokens 256   # the lent GPU's run

--shape (a shape of `benchmarks/ragged_sampler.py`, e.g. qwen2.5-0.5b) plays with random weights of that shape in
--dtype instead of --model, and the tokenizer of --tokenizer DIR (any saved transformers tokenizer with a chat
template; benchmarks/device_check.sh saves the embedded model's). Random weights draw nearly uniform tokens, so a
turn ends at --max-turn-tokens and never at a stop string: give an environment that answers every turn
(--environment guess_number: a turn with no number gets a reminder) to have several turns per episode.

What is measured (defaults): configs/calculator.py's experiment (its arithmetic task and system message, the
'calculator' environment in the 'tag' call format, rollout.max_new_tokens = 128 tokens for a whole episode,
temperature 1, the model in float32) with environment.max_turns = 3; the first training batch of 8 problems
(`task.train_batch(seed, 0, 8)`), 8 episodes each, played by the run's own `evaluation.Sampler.episodes`
(`multiturn.generate_episodes`) two ways with the same key:
  * cached: keep_cache=True, each row's keys/values kept across turns; at a turn boundary only the observation
    tokens are computed;
  * reprefill: keep_cache=False, at every turn boundary each row that goes on re-runs its whole history: its
    prompt and its completion so far (turns and observations), as a sampler that re-prefills the chat each turn
    does without a prefix cache.
The two ways give the same episodes up to float rounding: `same_tokens` / `rows_differing` say whether every
row's tokens, action_mask, length and truncation agree (at temperature 1 a rounding-size change can flip one draw,
and that row's episode goes another way), and `logp_max_diff` is the largest log-prob difference over the rows that
agree. Each way: one untimed call (compiles), then `--repeats` timed calls, alternating
the ways so that a change in machine load hits both; the fastest call counts (`time_s`).

Token counts, per way (all N = prompts x group rows):
  tokens_computed        `EpisodeStats.tokens_computed`: positions the model ran (each prompt prefilled once,
                         padded, and again for each row it re-runs; every turn step's rows and every observe
                         step's rows x width, padding and idle rows included)
  episode_tokens         the final sequences' completion tokens: model turns + observations (sum of lengths)
  final_tokens           the final sequences' tokens: each row's prompt (unpadded) + its episode tokens
  computed_per_final_token   tokens_computed / final_tokens (the goal: <= GOAL with the cache kept)
  computed_per_episode_token (tokens_computed - prompt prefill) / episode_tokens
  generated_tokens       tokens the model sampled (action_mask 1); tokens_per_s = generated_tokens / time_s
Episodes: turns (model turns, summed), turns_mean, tool_calls, tool_errors, parse_errors (the environments'
stats), observation_tokens, turn_ends.

Prints ONE JSON line and appends it to benchmarks/results.jsonl (`--results`, '' = do not append).
"""

from __future__ import annotations

import argparse
import importlib.util
import os

import numpy as np

from benchmarks import ROOT, machine, results
from benchmarks.policy import load_policy

CONFIG_FILE = os.path.join(ROOT, "configs", "calculator.py")
GOAL = 1.15  # tokens computed per final sequence token, with the cache kept
WAYS = {"cached": True, "reprefill": False}  # way -> keep_cache


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks multiturn", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="models.load source (it needs a tokenizer)")
    p.add_argument("--shape", default="", help="random weights of this shape (ragged_sampler's SHAPES) instead")
    p.add_argument("--dtype", default="float32", help="with --shape: params and compute dtype")
    p.add_argument("--tokenizer", default="", help="with --shape: a saved transformers tokenizer dir")
    p.add_argument("--environment", default="", help="environment.name (default: the config's, 'calculator')")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8, help="episodes per prompt")
    p.add_argument("--new-tokens", type=int, default=0,
                   help="tokens of a whole episode (rollout.max_new_tokens); 0 = the config's")
    p.add_argument("--max-turns", type=int, default=3, help="environment.max_turns")
    p.add_argument("--max-turn-tokens", type=int, default=-1,
                   help="environment.max_turn_tokens (0 = the budget alone); -1 = the config's")
    p.add_argument("--prefill", default=None,
                   help="task.prefill, the start of the assistant's turn (e.g. '<calc>'); default: the config's")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per way (the fastest counts)")
    p.add_argument("--seed", type=int, default=0, help="the rollout key and the task's batch seed")
    p.add_argument("--results", "--out", dest="results", default=results.RESULTS,
                   help="JSONL file the result line is appended to ('' = none)")
    return p


def calculator_config(args):
    """configs/calculator.py's config (loaded from its file as experiments.train loads it) with this run's batch."""
    spec = importlib.util.spec_from_file_location("bench_multiturn_config", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("")
    c.seed = args.seed
    c.model.path = args.model
    c.rollout.prompts_per_step = args.prompts
    c.rollout.group_size = args.group
    if args.new_tokens:
        c.rollout.max_new_tokens = args.new_tokens
    if args.environment:
        c.environment.name = args.environment
    c.environment.max_turns = args.max_turns
    if args.prefill is not None:
        c.task.prefill = args.prefill
    if args.max_turn_tokens >= 0:
        c.environment.max_turn_tokens = args.max_turn_tokens
    return c


def policy(args):
    """(ModelConfig, params, tokenizer): --model's, or random weights of --shape with --tokenizer's tokenizer."""
    if not args.shape:
        return load_policy(args.model)
    if not args.tokenizer:
        raise SystemExit("python -m benchmarks multiturn: --shape needs --tokenizer DIR (the prompts are chat text)")
    from transformers import AutoTokenizer

    from benchmarks.ragged_sampler import SHAPES, ragged_model
    if args.shape not in SHAPES:
        raise SystemExit(f"python -m benchmarks multiturn: unknown --shape {args.shape!r}; choose from "
                         f"{', '.join(sorted(SHAPES))}")
    model_config, params, _ = ragged_model(args.shape, args.dtype, 1.0, args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if len(tokenizer) > model_config.vocab_size:
        raise SystemExit(f"python -m benchmarks multiturn: the tokenizer has {len(tokenizer)} tokens, more than "
                         f"the {args.shape} shape's vocabulary of {model_config.vocab_size}")
    return model_config, params, tokenizer


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    import jax

    from grpo_jax import config as config_lib
    from grpo_jax import evaluation, rollout, tasks
    from grpo_jax.experiment import task_options

    config = calculator_config(args)
    config_lib.validate(config)
    t_load, (model_config, params, tokenizer) = results.timed(lambda: policy(args))
    if tokenizer is None:
        raise SystemExit(f"python -m benchmarks multiturn: {args.model} has no tokenizer (the prompts are chat text)")
    task = tasks.get(config.task.name, **task_options(config))
    examples = task.train_batch(int(config.seed), 0, args.prompts)
    sampler = evaluation.Sampler(model_config, tokenizer, None, settings=rollout.Settings.from_config(config.rollout),
                                 environment=config.environment)
    tokens, mask = sampler.encode(examples)
    settings = sampler.settings_for()
    key = jax.random.PRNGKey(args.seed)

    def call(keep_cache: bool):
        def play():
            out, completions = sampler.episodes(params, examples, tokens, mask, key, settings, keep_cache=keep_cache)
            return jax.block_until_ready(jax.device_get(out)), completions.episodes
        return results.timed(play)

    first, times, outs = {}, {way: [] for way in WAYS}, {}
    for way, keep in WAYS.items():
        first[way], outs[way] = call(keep)
    for _ in range(args.repeats):  # alternate the ways, so that load changes hit both
        for way, keep in WAYS.items():
            seconds, (out, _) = call(keep)
            if not np.array_equal(out.tokens, outs[way][0].tokens):
                raise RuntimeError(f"{way}: the same key gave different episodes from call to call")
            times[way].append(seconds)

    (a, a_stats), (b, b_stats) = outs["cached"], outs["reprefill"]
    # The ways compute the same keys/values in differently shaped matmuls, so they agree up to float rounding; at
    # temperature 1 a rounding-size change of a logit can flip a draw that falls on a boundary, and the row's
    # episode goes another way from there. Rows that differ are counted; the log-probs are compared where both
    # ways hold the same row.
    differ = np.zeros(len(np.asarray(a.lengths)), bool)
    for field in ("tokens", "action_mask", "lengths", "truncated"):
        x, y = np.asarray(getattr(a, field)), np.asarray(getattr(b, field))
        differ |= (x != y).reshape(len(differ), -1).any(axis=1)
    same = ~differ
    logp_diff = float(np.max(np.abs(np.asarray(a.logps)[same] - np.asarray(b.logps)[same]), initial=0.0))

    prompt_lengths = np.repeat(np.asarray(mask).sum(axis=1), args.group)
    prefill = int(np.asarray(tokens).size)
    episode_tokens = int(np.asarray(a.lengths).sum())
    final_tokens = int(prompt_lengths.sum()) + episode_tokens
    generated = int(np.asarray(a.action_mask).sum().round())

    def way(name: str) -> dict:
        stats = outs[name][1]
        best = min(times[name]) if times[name] else first[name]
        return {"time_s": round(best, 3), "times_s": [round(x, 3) for x in times[name]],
                "first_call_s": round(first[name], 3), "tokens_computed": int(stats.tokens_computed),
                "computed_per_final_token": round(stats.tokens_computed / final_tokens, 4),
                "computed_per_episode_token": round((stats.tokens_computed - prefill) / max(episode_tokens, 1), 4),
                "tokens_per_s": round(generated / best, 1)}

    stats = a_stats
    line = {"benchmark": "multiturn", "time": results.now(), "commit": results.git_commit(),
            "settings": {"model": f"random {args.shape} ({args.dtype})" if args.shape else args.model,
                         "tokenizer": args.tokenizer or args.model, "config": "configs/calculator.py",
                         "task": config.task.name,
                         "prefill": config.task.prefill,
                         "environment": config.environment.name, "call_format": config.environment.call_format,
                         "prompts": args.prompts, "group": args.group,
                         "max_new_tokens": int(config.rollout.max_new_tokens),
                         "max_turns": int(config.environment.max_turns),
                         "max_turn_tokens": int(config.environment.max_turn_tokens),
                         "max_observation_tokens": int(config.environment.max_observation_tokens),
                         "temperature": float(config.rollout.temperature), "seed": args.seed,
                         "repeats": args.repeats, "prompt_tokens_padded": int(np.asarray(tokens).shape[1]),
                         "prompt_tokens_mean": float(np.asarray(mask).sum(axis=1).mean()),
                         "dtype": args.dtype if args.shape else str(config.model.dtype)},
            "prompt_prefill_tokens": prefill, "episode_tokens": episode_tokens, "final_tokens": final_tokens,
            "generated_tokens": generated, "observation_tokens": int(stats.observation_tokens),
            "cached": way("cached"), "reprefill": way("reprefill"),
            "same_tokens": bool(same.all()), "rows_differing": int(differ.sum()), "logp_max_diff": logp_diff,
            "turns": int(stats.turns.sum()), "turns_mean": round(float(stats.turns.mean()), 3),
            "tool_calls": int(stats.tool_calls), "tool_errors": int(stats.tool_errors),
            "parse_errors": int(stats.parse_errors), "turn_ends": dict(stats.turn_ends),
            "load_s": round(t_load, 2)}
    line["reprefill_vs_cached"] = {
        "tokens_computed": round(b_stats.tokens_computed / a_stats.tokens_computed, 3),
        "time": round(line["reprefill"]["time_s"] / line["cached"]["time_s"], 3)}
    line["goal"] = {"computed_per_final_token_max": GOAL,
                    "met": line["cached"]["computed_per_final_token"] <= GOAL}
    line["backend"] = jax.default_backend()
    line["devices"] = [str(d) for d in jax.devices()]
    line["machine"] = machine.describe()
    line["threads"] = machine.threads()
    return results.emit(line, args.results)


if __name__ == "__main__":
    main()
