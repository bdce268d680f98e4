"""`sampler`: grpo_jax's group sampler beside transformers' `generate`, same model, prompts and batch.

    python -m benchmarks sampler                        # SmolLM2-135M-Instruct, 8 prompts x 8, 64 tokens
    python -m benchmarks sampler --torch-threads 2      # transformers at 2 threads only (default: 1 and all cores)
    python -m benchmarks sampler --model tiny-random --prompts 2 --group 2 --new-tokens 4 --repeats 1 \
        --matmul-size 128 --results ''                  # the smoke run of tests/test_bench_sampler.py

What is measured (defaults): the embedded SmolLM2-135M-Instruct in float32; 8 prompts (the chat template applied
to "What is a + b?" questions, left-padded to a multiple of 16 tokens) x 8 completions x 64 new tokens, sampled at
temperature 1 over the full vocabulary, every sequence forced to the full 64 tokens:
  * grpo_jax: `sampling.generate(..., group_size=8, max_new_tokens=64, stop_ids=())` (no stop token). The first
    call compiles; `--repeats` further calls (new keys) are timed and the fastest is the steady-state time.
    `compile_s` = first call - steady-state call.
  * transformers: `model.generate(prompts, attention_mask, do_sample=True, temperature=1, top_k=0, top_p=1,
    num_return_sequences=8, max_new_tokens=64, min_new_tokens=64)` (min_new_tokens suppresses eos) in
    torch.inference_mode, after a short warm-up, on the same weights (our params exported to a transformers model
    in memory) and the same left-padded prompts; timed `--repeats` times at each torch thread count (default 1
    and all cores), the fastest counts.
The two sides alternate call by call, so a change in machine load hits both. tokens/s = 8 x 8 x 64 / seconds.

`--stop-at-eos`: ragged work, as a rollout has it. Both sides stop a row at the model's eos ids and stop decoding
when every row has (grpo_jax: `stop_ids=config.eos_token_ids`; transformers: `eos_token_id=...`, no
min_new_tokens). Each side's tokens/s is its tokens generated (every row up to and including its eos) per second,
and `tokens_computed` counts what it decoded, padding included: transformers rows x the longest row's length;
grpo_jax the rows of every decode step, which its decode loop compacts once at most half are still running
(`--no-compact`: the plain loop, rows x the longest; `--max-decode-rows B`: B slots refilled from the waiting rows).
The two sides draw different random tokens, so their lengths differ call by call; the roofline's fraction is left
out.

Roofline: the FLOPs this batch needs (`flops.sampling`: each prompt prefilled once, the P G (T - 1) decode steps,
attention) divided by this machine's float32 matmul rate (`machine.matmul_rate`, probed before and after the runs,
the faster counts): `best_tokens_per_s` is the fastest this machine could go, `fraction` our share of it,
`vs_roofline` our time over the roofline time.

Prints ONE JSON line and appends it to benchmarks/results.jsonl (`--results`, '' = do not append). Run it alone on
the machine: other load changes the numbers.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import flops, machine, results
from benchmarks.policy import TINY, load_policy


def add_batch_arguments(p: argparse.ArgumentParser) -> None:
    """The model and batch options (shared with sampler_profile)."""
    p.add_argument("--model", default="smollm2-135m-instruct", help=f"models.load source, or '{TINY}'")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8, help="completions per prompt")
    p.add_argument("--new-tokens", type=int, default=64, help="every completion is forced to this length")
    p.add_argument("--bucket", type=int, default=16, help="prompt length padding multiple")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks sampler", description=__doc__.split("\n")[0])
    add_batch_arguments(p)
    p.add_argument("--repeats", type=int, default=3,
                   help="timed steady-state calls per side (the fastest counts)")
    p.add_argument("--torch-threads", default=",".join(str(x) for x in sorted({1, machine.usable_cores()})),
                   help="comma-separated torch thread counts to time transformers with; the fastest counts "
                        "(default: 1 and all usable cores -- on a busy machine torch's spinning threads can make "
                        "all cores several times slower than one)")
    p.add_argument("--no-transformers", action="store_true", help="time grpo_jax and the roofline only")
    p.add_argument("--unrolled", action="store_true", help="model.scan_layers False: the decoder's layers unrolled")
    p.add_argument("--stop-at-eos", action="store_true",
                   help="rows end at the model's eos ids on both sides (each stops when every row has); tokens/s "
                        "count generated tokens, and tokens computed (padding included) are reported")
    p.add_argument("--no-compact", action="store_true",
                   help="grpo_jax's plain decode loop: every row decoded until the last stops (no compaction)")
    p.add_argument("--max-decode-rows", type=int, default=0,
                   help="grpo_jax decodes at most this many rows at once, refilling finished slots (0 = all)")
    p.add_argument("--matmul-size", type=int, default=2048, help="size of the matmul that measures FLOP/s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", "--out", dest="results", default=results.RESULTS,
                   help="JSONL file the result line is appended to ('' = none)")
    return p


# ----------------------------------------------------------------------------------------------------------------
# Prompts, and the transformers model with our weights.
# ----------------------------------------------------------------------------------------------------------------
def prompt_token_lists(tokenizer, count: int, vocab_size: int, seed: int) -> list[list[int]]:
    """The chat template applied to "What is a + b?" questions; random token ids when there is no tokenizer."""
    rng = np.random.default_rng(seed)
    if tokenizer is None:
        return [list(rng.integers(3, vocab_size, int(rng.integers(8, 24)))) for _ in range(count)]
    out = []
    for _ in range(count):
        a, b = (int(x) for x in rng.integers(1, 100, 2))
        chat = [{"role": "user", "content": f"What is {a} + {b}? Think step by step."}]
        text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return out


def torch_model(config, params):
    """The transformers model with exactly our weights (exported in memory: no second checkpoint read)."""
    import torch
    import transformers

    from grpo_jax.models.export import hf_config_dict
    from grpo_jax.models.hf_params import params_to_hf

    d = hf_config_dict(config)
    hf_config = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in params_to_hf(config, params).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise RuntimeError(f"exporting to transformers: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.eval()


def _generated(completions: np.ndarray, eos: tuple) -> tuple[int, int]:
    """(tokens generated: each row up to and including its first eos, tokens computed: rows x columns decoded)."""
    rows, cols = completions.shape
    if not eos or cols == 0:
        return rows * cols, rows * cols
    is_eos = np.isin(completions, eos)
    first = np.where(is_eos.any(1), is_eos.argmax(1) + 1, cols)
    return int(first.sum()), rows * cols


# ----------------------------------------------------------------------------------------------------------------
# The two sides.
# ----------------------------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    import jax

    from grpo_jax import batching, sampling
    from grpo_jax.rollout import decode_loop

    rate_before = machine.matmul_rate(args.matmul_size)
    t_load, (config, params, tokenizer) = results.timed(lambda: load_policy(args.model))
    config = config.replace(scan_layers=not args.unrolled)
    ids = prompt_token_lists(tokenizer, args.prompts, config.vocab_size, args.seed)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    tokens, mask = batching.left_pad(ids, pad_id=pad, bucket=args.bucket)
    p, g, t = args.prompts, args.group, args.new_tokens
    n_tokens = p * g * t
    eos = tuple(int(x) for x in config.eos_token_ids) if args.stop_at_eos else ()
    if args.stop_at_eos and not eos:
        raise SystemExit(f"--stop-at-eos: {args.model} names no eos token id")
    counts = {"grpo_jax": [], "transformers": {}}  # (generated, computed) tokens of each call (by torch threads)

    def ours(i: int) -> float:
        def call():
            out = sampling.generate_with_stats(config, params, tokens, mask, jax.random.PRNGKey(args.seed + i),
                                               group_size=g, max_new_tokens=t, temperature=1.0, stop_ids=eos,
                                               pad_id=pad, compact=False if args.no_compact else None,
                                               max_decode_rows=args.max_decode_rows)
            return jax.block_until_ready(out)
        seconds, (out, stats) = results.timed(call)
        lengths = np.asarray(out.lengths)
        if not eos and not bool(np.all(lengths == t)):
            raise RuntimeError("grpo_jax: a completion ended before --new-tokens (stop ids are off)")
        counts["grpo_jax"].append((int(lengths.sum()), stats.tokens_computed(lengths.size)))
        return seconds

    thread_counts = [int(x) for x in str(args.torch_threads).split(",") if x.strip()]
    hf = None
    if not args.no_transformers:
        import torch

        model = torch_model(config, params)
        prompt_t = torch.as_tensor(tokens, dtype=torch.long)
        mask_t = torch.as_tensor(mask, dtype=torch.long)

        def theirs(threads: int, new: int = t, record: bool = True) -> float:
            torch.set_num_threads(threads)
            torch.manual_seed(args.seed)
            with torch.inference_mode():
                start = time.perf_counter()
                stops = dict(eos_token_id=list(eos)) if eos else dict(min_new_tokens=new)
                seq = model.generate(prompt_t, attention_mask=mask_t, do_sample=True, temperature=1.0, top_k=0,
                                     top_p=1.0, num_return_sequences=g, max_new_tokens=new, pad_token_id=pad,
                                     **stops)
                seconds = time.perf_counter() - start
            want = (p * g, tokens.shape[1] + new)
            if not eos and tuple(seq.shape) != want:
                raise RuntimeError(f"transformers returned {tuple(seq.shape)}, expected {want}")
            if record:
                counts["transformers"].setdefault(threads, []).append(_generated(seq[:, tokens.shape[1]:].numpy(),
                                                                                 eos))
            return seconds
        for threads in thread_counts:  # warm-up: lazy initialisation, allocator
            theirs(threads, new=2, record=False)
        hf = {threads: [] for threads in thread_counts}

    first = ours(0)
    steady = []
    for i in range(args.repeats):  # alternate the sides, so that load changes hit both
        steady.append(ours(i + 1))
        if hf is not None:
            for threads in thread_counts:
                hf[threads].append(theirs(threads))

    def side(times: list, tokens_of: list) -> dict:
        """The best call's tokens/s (generated tokens / seconds) with its token counts."""
        rates = [gen / sec for sec, (gen, _) in zip(times, tokens_of)]
        i = int(np.argmax(rates))
        return {"tokens_per_s": round(rates[i], 1), "time_s": round(times[i], 3),
                "times_s": [round(x, 3) for x in times], "tokens_generated": tokens_of[i][0],
                "tokens_computed": tokens_of[i][1]}

    best = min(steady)
    line = {"benchmark": "sampler", "time": results.now(), "commit": results.git_commit(),
            "settings": {"model": args.model, "prompts": p, "group": g, "new_tokens": t, "scan_layers": not args.unrolled,
                         "prompt_tokens_padded": int(tokens.shape[1]), "prompt_tokens_mean": float(mask.sum(1).mean()),
                         "temperature": 1.0, "top_k": 0, "top_p": 1.0, "forced_full_length": not eos,
                         "stop_ids": list(eos), "compact": not args.no_compact and t >= decode_loop.COMPACT_MIN_NEW_TOKENS,
                         "max_decode_rows": args.max_decode_rows},
            "grpo_jax": {**side(steady, counts["grpo_jax"][1:]), "first_call_s": round(first, 3),
                         "compile_s": round(max(first - best, 0.0), 3), "load_s": round(t_load, 2)}}
    if hf is not None:
        per_threads = {str(k): side(v, counts["transformers"][k]) for k, v in hf.items()}
        fastest = max(hf, key=lambda k: per_threads[str(k)]["tokens_per_s"])
        line["transformers"] = {**per_threads[str(fastest)], "threads": fastest, "by_threads": per_threads}
        line["speedup"] = round(line["grpo_jax"]["tokens_per_s"] / line["transformers"]["tokens_per_s"], 2)
    # measured before and after the runs; the faster is this machine's rate (load only ever slows it)
    rates = [rate_before, machine.matmul_rate(args.matmul_size)]
    rate = machine.fastest(rates).wall
    need = flops.sampling(config, p, g, float(mask.sum(1).mean()), t)
    roofline_s = need["total"] / rate
    line["roofline"] = {"matmul_flops_per_s": round(rate),
                        "matmul_flops_per_s_before_after": [round(x.wall) for x in rates],
                        "matmul_size": args.matmul_size,
                        "flops": {k: round(v) for k, v in need.items()}, "seconds": round(roofline_s, 6),
                        "best_tokens_per_s": round(n_tokens / roofline_s, 1)}
    if not eos:  # the roofline is of the forced-length work; with eos the work depends on the draws
        line["roofline"].update(fraction=round(roofline_s / best, 3), vs_roofline=round(best / roofline_s, 3))
    line["machine"] = machine.describe()
    line["threads"] = machine.threads(torch_threads=thread_counts if hf is not None else None)
    return results.emit(line, args.results)


if __name__ == "__main__":
    main()
