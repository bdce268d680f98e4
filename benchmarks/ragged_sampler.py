"""`ragged_sampler`: the decode loop's compaction and refill against the plain loop, on rows of very different lengths.

    python -m benchmarks ragged_sampler                         # Qwen2.5-0.5B shape, bfloat16, 32 x 16 x 1024
    python -m benchmarks ragged_sampler --shape tiny --prompts 2 --group 4 --new-tokens 32 --mean-length 8 \
        --results ''                                            # the smoke run of tests/test_bench_sampler.py

No checkpoint is read: the model is built from a config of a real shape (`--shape`: 'qwen2.5-0.5b' = hidden 896,
24 layers, 14 / 2 heads, MLP 4864, vocabulary 151936, tied embeddings; 'tiny' = a 2-layer model) with random
weights in `--dtype`. Random weights almost never emit an eos token, so the rows are made ragged instead: the
embedding table (tied, so also the head) is scaled down until every logit is ~0, which makes the next-token
distribution uniform over the vocabulary, and `k` = vocabulary / `--mean-length` token ids are stop ids. Each row
then stops at every step with probability k / V: lengths are geometric with mean ~`--mean-length` (a long tail up to
`--new-tokens`), drawn by the sampler itself, so all three modes see the same rows for the same key:

  plain     `generate(..., compact=False)`: every row decoded until the last stops
  compact   `generate(...)` (the default): the batch shrinks along the ladder N, N/2, ... as rows stop
  refill    `generate(..., max_decode_rows=N // --refill-divisor)`: that many slots, refilled from the waiting rows

Per mode: the first call (compiles) and `--repeats` timed calls (the fastest counts), tokens generated per second,
and tokens computed (rows of every decode step, from `generate_with_stats`). The modes' rollouts are checked equal.
Prints ONE JSON line and appends it to benchmarks/results.jsonl (`--results`, '' = do not append). Meant for the
lent GPU (the issue's check: at most 8 minutes); on a CPU use the tiny shape.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks import machine, results

SHAPES = {
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
                         num_kv_heads=2, head_dim=64, tie_word_embeddings=True, attention_bias=True,
                         rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=32768),
    "tiny": dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                 head_dim=8, tie_word_embeddings=True, max_position_embeddings=4096),
}
MODES = ("plain", "compact", "refill")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks ragged_sampler", description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    p.add_argument("--dtype", default="bfloat16", help="params and compute dtype")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--group", type=int, default=16, help="completions per prompt")
    p.add_argument("--new-tokens", type=int, default=1024, help="length limit T")
    p.add_argument("--prompt-tokens", type=int, default=64, help="random prompt length")
    p.add_argument("--mean-length", type=float, default=128.0, help="mean completion length (geometric)")
    p.add_argument("--refill-divisor", type=int, default=4, help="refill mode decodes N / this rows at once")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per mode (the fastest counts)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=results.RESULTS, help="JSONL file to append to ('' = do not append)")
    return p


def ragged_model(shape: str, dtype: str, mean_length: float, seed: int):
    """(ModelConfig, params, stop ids): random weights of `shape` whose next-token distribution is ~uniform, and
    V / mean_length stop ids, so each row stops at each step with probability ~1 / mean_length."""
    import jax

    from grpo_jax import models
    config = models.ModelConfig(**SHAPES[shape], compute_dtype=dtype)
    params = jax.jit(models.init_params, static_argnums=(0, 2))(config, jax.random.PRNGKey(seed), dtype)
    embed = params["embed"]["embedding"]
    params["embed"]["embedding"] = (embed * 1e-4).astype(embed.dtype)  # logits ~0: a flat distribution
    k = max(1, int(round(config.vocab_size / max(mean_length, 1.0))))
    stop_ids = tuple(range(config.vocab_size - k, config.vocab_size))
    return config, params, stop_ids


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise SystemExit(f"--modes: unknown {bad}; choose from {MODES}")
    import jax

    from grpo_jax import sampling

    config, params, stop_ids = ragged_model(args.shape, args.dtype, args.mean_length, args.seed)
    rng = np.random.RandomState(args.seed)
    p, g, t = args.prompts, args.group, args.new_tokens
    tokens = rng.randint(0, config.vocab_size - len(stop_ids), (p, args.prompt_tokens)).astype(np.int32)
    mask = np.ones(tokens.shape, bool)
    n = p * g
    options = {"plain": dict(compact=False), "compact": dict(compact=True),
               "refill": dict(compact=True, max_decode_rows=max(1, n // args.refill_divisor))}

    def call(mode: str, i: int):
        out, stats = sampling.generate_with_stats(config, params, tokens, mask, jax.random.PRNGKey(args.seed + i),
                                                  group_size=g, max_new_tokens=t, stop_ids=stop_ids,
                                                  **options[mode])
        return jax.block_until_ready(out), stats

    line = {"benchmark": "ragged_sampler", "time": results.now(), "commit": results.git_commit(),
            "settings": {"shape": args.shape, "dtype": args.dtype, "prompts": p, "group": g, "new_tokens": t,
                         "prompt_tokens": args.prompt_tokens, "mean_length": args.mean_length,
                         "stop_ids": len(stop_ids), "max_decode_rows": options["refill"]["max_decode_rows"]},
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}
    rollouts = {}
    for mode in modes:
        first, _ = results.timed(lambda: call(mode, 0))
        timed = [results.timed(lambda i=i: call(mode, i + 1)) for i in range(args.repeats)]
        seconds, (out, stats) = min(timed, key=lambda x: x[0])
        lengths = np.asarray(out.lengths)
        computed = stats.tokens_computed(n)
        rollouts[mode] = np.asarray(out.tokens)
        line[mode] = {"tokens_per_s": round(float(lengths.sum()) / seconds, 1), "time_s": round(seconds, 3),
                      "first_call_s": round(first, 3), "tokens_generated": int(lengths.sum()),
                      "tokens_computed": computed, "longest": int(lengths.max()),
                      "mean_length": round(float(lengths.mean()), 1), "buckets": list(stats.buckets),
                      "steps": np.asarray(stats.steps).tolist(), "refilled": int(stats.refilled)}
    base = modes[0]
    line["same_tokens"] = {m: bool(np.array_equal(rollouts[m], rollouts[base])) for m in modes[1:]}
    if "plain" in line:
        line["speedup_vs_plain"] = {m: round(line[m]["tokens_per_s"] / line["plain"]["tokens_per_s"], 2)
                                    for m in modes if m != "plain"}
    line["machine"] = machine.describe()
    return results.emit(line, args.results)


if __name__ == "__main__":
    main()
