"""`sampler_profile`: where one sampler call's time goes, per XLA operation, from a jax.profiler trace.

    python -m benchmarks sampler_profile               # SmolLM2-135M-Instruct, 8 x 8 x 64, float32
    python -m benchmarks sampler_profile --top 40
    python -m benchmarks sampler_profile --model tiny-random --prompts 2 --group 2 --new-tokens 4   # smoke

Compiles the sampler benchmark's program (same model, prompts, settings: see benchmarks/sampler.py; the program
`sampling.generate` runs), calls it once to warm up, then once under `jax.profiler.trace`. Each event of the trace
is one XLA:CPU thunk, named after an instruction of that compiled program; joined to the instruction's HLO (its
op_name and output shape), the events of the decode loop are summed per (operation, output shape). Prints ONE JSON line:
  * `step_ms`: the median time between the LM head matmuls of successive decode steps (one step, all layers);
  * `head_ms`: the head matmul's median time;
  * `ops`: the `--top` largest rows, {op, shape, ms_per_step, per_step (calls), median_us}.
XLA runs independent thunks on both cores at once (e.g. the gate and up projections), so the rows can sum to more
than a step. A diagnostic, not a benchmark: nothing is appended to results.jsonl unless --results names a file.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import numpy as np

from benchmarks import machine, results, sampler
from benchmarks.policy import load_policy

# "%name = f32[64,576]{1,0} fusion(...), ..., metadata={op_name="jit(program)/while/body/dot_general" ...}"
_INSTRUCTION = re.compile(r"%(\S+) = (\S+?)(?:\{[^}]*\})? [\w-]+\(.*?op_name=\"([^\"]+)\"")
# the decode loop's phases (each later one inside a cond: ".../cond/branch_1_fun/while/body/"); the prefill's layer
# scan is under Decoder/
_DECODE_LOOP = re.compile(r"^jit\([^)]*\)/(?:cond/branch_\d+_fun/)*while/body/")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks sampler_profile", description=__doc__.split("\n")[0])
    sampler.add_batch_arguments(p)
    p.add_argument("--top", type=int, default=25, help="rows of the per-operation table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--unrolled", action="store_true", help="model.scan_layers False: the decoder's layers unrolled")
    p.add_argument("--results", default="", help="JSONL file the line is appended to ('' = none, the default)")
    return p


def hlo_instructions(hlo_text: str) -> dict:
    """instruction name -> (op_name, output shape) for every instruction of a compiled module's text."""
    return {m.group(1): (m.group(3), m.group(2)) for m in _INSTRUCTION.finditer(hlo_text)}


def decode_loop_table(events: list, instructions: dict, steps: int, vocab: int) -> dict:
    """Sum trace events (Chrome-trace dicts with name/ts/dur in us) of the decode loop per (operation, shape)."""
    rows = collections.defaultdict(list)
    heads = []
    for e in events:
        if e.get("ph") != "X" or e.get("name") not in instructions:
            continue
        op_name, shape = instructions[e["name"]]
        if not _DECODE_LOOP.match(op_name):
            continue
        op = op_name.rsplit("/", 1)[-1]
        rows[(op, shape)].append(float(e["dur"]))
        if op == "dot_general" and re.fullmatch(rf"f32\[(?:{vocab},\d+|\d+,{vocab})\]", shape):  # [V, N] or [N, V]
            heads.append(e)
    heads.sort(key=lambda e: e["ts"])
    starts = np.array([e["ts"] for e in heads], float)
    table = [{"op": op, "shape": shape, "ms_per_step": round(sum(d) / steps / 1e3, 3),
              "per_step": round(len(d) / steps, 2), "median_us": round(float(np.median(d)), 1)}
             for (op, shape), d in rows.items()]
    table.sort(key=lambda r: -r["ms_per_step"])
    return {"step_ms": round(float(np.median(np.diff(starts))) / 1e3, 4) if len(starts) > 1 else None,
            "head_ms": round(float(np.median([e["dur"] for e in heads])) / 1e3, 4) if heads else None,
            "ops": table}


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    import jax
    import jax.numpy as jnp

    from grpo_jax import batching, rollout
    from grpo_jax.rollout import program as rollout_program

    config, params, tokenizer = load_policy(args.model)
    config = config.replace(scan_layers=not args.unrolled)
    ids = sampler.prompt_token_lists(tokenizer, args.prompts, config.vocab_size, args.seed)
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    tokens, mask = batching.left_pad(ids, pad_id=pad, bucket=args.bucket)
    g, t = args.group, args.new_tokens

    # generate's program for these settings (full vocabulary, temperature 1, no stop ids), compiled once: the
    # traced run is this executable, so the HLO text below names exactly the thunks of the trace.
    program = rollout_program.compiled(config, rollout.Settings(group_size=g, max_new_tokens=t, pad_id=pad))

    def inputs(i: int) -> tuple:
        return (params, np.asarray(tokens, np.int32), np.asarray(mask, bool), jax.random.PRNGKey(args.seed + i),
                jnp.float32(1.0), jnp.float32(1.0))
    executable = program.lower(*inputs(0)).compile()
    jax.block_until_ready(executable(*inputs(0)))  # warm-up
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            seconds, _ = results.timed(lambda: jax.block_until_ready(executable(*inputs(1))))
        files = sorted(glob.glob(f"{trace_dir}/plugins/profile/*/*.trace.json.gz"))
        if not files:
            raise RuntimeError(f"jax.profiler wrote no trace.json.gz under {trace_dir}")
        with gzip.open(files[-1]) as f:
            events = json.load(f)["traceEvents"]
    hlo = executable.as_text()
    table = decode_loop_table(events, hlo_instructions(hlo), max(t - 1, 1), config.vocab_size)
    line = {"benchmark": "sampler_profile", "time": results.now(), "commit": results.git_commit(),
            "settings": {"model": args.model, "prompts": args.prompts, "group": g, "new_tokens": t,
                         "scan_layers": not args.unrolled,
                         "prompt_tokens_padded": int(tokens.shape[1])},
            "call_s": round(seconds, 3), "step_ms": table["step_ms"], "head_ms": table["head_ms"],
            "ops": table["ops"][: args.top], "machine": machine.describe(), "threads": machine.threads()}
    return results.emit(line, args.results)


if __name__ == "__main__":
    main()
