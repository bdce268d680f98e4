"""`train_step`: speed and peak memory of ONE jitted GRPO train step, beside this machine's FLOP roofline.

    python -m benchmarks train_step                  # full finetuning and LoRA r=16, each in its own process
    python -m benchmarks train_step --lora-rank 0    # one of them, in this process

What is measured (defaults): the embedded SmolLM2-135M-Instruct in float32, a rollout of 8 prompts x 8
completions = 64 sequences of 64 prompt tokens + 64 completion tokens (128 tokens each; no padding, every
completion token valid; random token ids), loss 'grpo' with kl_beta 0.04 (so a reference forward pass: the initial
params in full finetuning, the base with the adapters off under LoRA), num_iterations 1, the whole batch in one
micro-batch, no remat, one device (mesh 1 x 1 x 1 on CPU). The old log-probs are the policy's own (computed once
before timing, as the sampler would), so `logp_mismatch/max` should read ~0. One step = reference log-probs +
policy forward/backward (shared prompt: each prompt's keys/values computed once per group) + AdamW update.

Compilation is timed separately (`jitted.lower(...).compile()`); then `--steps` steps are timed and the median is
`step_time_s`. `tokens_per_s` = 64 x 128 sequence tokens / step time (`completion_tokens_per_s`: the 64 x 64
trained tokens). `peak_rss_gb` is the process's maximum resident set size (VmHWM), which includes
the model, optimizer state, reference, activations and compilation.

Roofline (the time this machine needs for the FLOPs at its float32 matmul rate, `machine.matmul_rate` probed
before and after the steps, the faster counts), with the FLOPs of `flops.train_step`:
  nominal:  6 * params * tokens (forward + backward) + 2 * params * tokens (reference forward), params = all of
            them (a tied embedding is the LM head's matmul), tokens = 64 x 128 = 8192;
  executed: the matmul FLOPs this step really performs (the prompt once per group, the LM head on completion
            positions only, attention), x3 for forward + backward, + one forward for the reference.
`vs_*_roofline` = step time / roofline time (1.0 = at the roofline). On a shared machine wall times depend on the
share of the cores the process got, so the same ratios are also given in CPU seconds (`cpu_vs_*_roofline`: the
step's process CPU time against the matmul's FLOPs per CPU second).
Under LoRA the adapted kernels' weight gradients are still formed (the adapters are merged functionally), so the
same FLOP formulas apply.

Prints ONE JSON line and appends it to benchmarks/results.jsonl (`--results`, '' = do not append); run it alone:
other load changes the numbers. Smoke run (what tests/test_bench_train_step.py does):
    python -m benchmarks train_step --lora-rank 0 --kl-beta 0 --model tiny-random --prompts 2 --group 2 \
        --prompt-tokens 4 --new-tokens 3 --steps 1 --matmul-size 32 --fast-compile --results ''
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from benchmarks import ROOT, child_env, flops, machine, results
from benchmarks.policy import TINY, load_policy


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks train_step", description=__doc__.split("\n")[0])
    p.add_argument("--lora-rank", type=int, default=None,
                   help="0 = full finetuning, r > 0 = LoRA; omitted: both 0 and 16, each in its own process")
    p.add_argument("--model", default="smollm2-135m-instruct", help=f"models.load source, or '{TINY}'")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--kl-beta", type=float, default=0.04)
    p.add_argument("--micro-batch-size", type=int, default=0, help="sequences per micro-batch (0 = whole batch)")
    p.add_argument("--remat", action="store_true", help="rematerialise decoder layers in the backward pass")
    p.add_argument("--unrolled", action="store_true", help="model.scan_layers False: the decoder's layers unrolled")
    p.add_argument("--steps", type=int, default=2, help="timed steps after compilation")
    p.add_argument("--matmul-size", type=int, default=2048, help="size of the matmul that measures FLOP/s")
    p.add_argument("--results", default=results.RESULTS, help="append the JSON line here ('' = do not)")
    p.add_argument("--fast-compile", action="store_true",
                   help="XLA:CPU optimisation level 0, no fusion emitters: a quicker compile, slower steps "
                        "(smoke tests only)")
    return p


def run_one(args) -> dict:
    """One mode (args.lora_rank) in this process."""
    import jax
    import numpy as np

    from grpo_jax import config as config_lib
    from grpo_jax import logprobs, sharding, train_step

    rate_before = machine.matmul_rate(args.matmul_size)
    t = time.perf_counter()
    model_config, params, _ = load_policy(args.model)
    load_s = time.perf_counter() - t

    c = config_lib.base_config()
    c.model.path = args.model
    c.model.lora_rank = args.lora_rank
    c.model.remat = args.remat
    c.model.scan_layers = not args.unrolled
    c.rollout.prompts_per_step, c.rollout.group_size = args.prompts, args.group
    c.rollout.max_new_tokens = args.new_tokens
    c.loss.kl_beta = args.kl_beta
    c.optim.micro_batch_size = args.micro_batch_size
    c.mesh.data = c.mesh.fsdp = c.mesh.tensor = 1
    mesh = sharding.make_mesh(c.mesh, devices=jax.devices()[:1])

    p, g, s, t_new = args.prompts, args.group, args.prompt_tokens, args.new_tokens
    rng = np.random.RandomState(0)
    vocab = model_config.vocab_size
    batch = {"prompt_tokens": rng.randint(3, vocab, (p, s)).astype(np.int32),
             "prompt_mask": np.ones((p, s), bool),
             "completions": rng.randint(3, vocab, (p * g, t_new)).astype(np.int32),
             "completion_mask": np.ones((p * g, t_new), np.float32),
             "advantages": rng.randn(p * g).astype(np.float32)}
    old = jax.jit(lambda pr, b: logprobs.completion_logprobs(model_config, pr, b["prompt_tokens"], b["prompt_mask"],
                                                             b["completions"], g, 1.0, with_entropy=False)[0])
    batch["old_logps"] = np.asarray(old(params, batch))

    state, frozen = train_step.init_train_state(model_config, params, c, mesh)
    use_ref = args.kl_beta > 0 and not args.lora_rank
    ref = sharding.shard_params(params, model_config, mesh) if use_ref else None
    del params  # full finetuning keeps it only as the reference
    options = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False} if args.fast_compile else None
    step = train_step.make_train_step(model_config, c, mesh, compiler_options=options)
    inputs = step.prepare(state, frozen, ref, batch).args
    t = time.perf_counter()
    compiled = step.jitted.lower(*inputs).compile()
    compile_s = time.perf_counter() - t

    times, cpu_times, state, first = [], [], inputs[0], None
    for _ in range(max(1, args.steps)):
        t, cpu = time.perf_counter(), time.process_time()
        state, metrics = compiled(state, *inputs[1:])
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - cpu)
        first = first or {k: float(v) for k, v in metrics.items()}  # the step on the sampler's own policy
    step_s, step_cpu_s = statistics.median(times), statistics.median(cpu_times)
    rate, cpu_rate = machine.fastest([rate_before, machine.matmul_rate(args.matmul_size)])

    need = flops.train_step(model_config, p, g, s, t_new, args.kl_beta > 0)
    trainable = sum(x.size for x in jax.tree.leaves(state.params))
    return {
        "mode": f"lora_r{args.lora_rank}" if args.lora_rank else "full",
        "settings": {"model": args.model, "prompts": p, "group": g, "sequences": p * g, "prompt_tokens": s,
                     "new_tokens": t_new, "tokens_per_sequence": s + t_new, "kl_beta": args.kl_beta,
                     "lora_rank": args.lora_rank, "micro_batch_size": args.micro_batch_size, "remat": args.remat,
                     "scan_layers": not args.unrolled,
                     "dtype": "float32", "devices": 1, "backend": jax.default_backend(),
                     "fast_compile": args.fast_compile},
        "trainable_params": int(trainable),
        "load_s": round(load_s, 2),
        "compile_s": round(compile_s, 2),
        "step_times_s": [round(x, 3) for x in times],
        "step_time_s": round(step_s, 3),
        "step_cpu_s": round(step_cpu_s, 2),
        "tokens_per_s": round(p * g * (s + t_new) / step_s, 1),
        "completion_tokens_per_s": round(p * g * t_new / step_s, 1),
        "peak_rss_gb": round(machine.peak_rss_bytes() / 1e9, 2),
        "roofline": {
            "matmul_flops_per_s": round(rate / 1e9, 1) * 1e9,
            "matmul_flops_per_cpu_s": round(cpu_rate / 1e9, 1) * 1e9,
            "matmul_size": args.matmul_size,
            "params": need["params"],
            "nominal_flops": need["nominal"],
            "nominal_s": round(need["nominal"] / rate, 2),
            "executed_flops": need["executed"],
            "executed_s": round(need["executed"] / rate, 2),
            "vs_nominal_roofline": round(step_s / (need["nominal"] / rate), 3),
            "vs_executed_roofline": round(step_s / (need["executed"] / rate), 3),
            "achieved_flops_per_s": round(need["executed"] / step_s / 1e9, 1) * 1e9,
            # the same ratios in CPU seconds (step CPU time / FLOPs at the matmul's rate per CPU second)
            "cpu_vs_nominal_roofline": round(step_cpu_s / (need["nominal"] / cpu_rate), 3),
            "cpu_vs_executed_roofline": round(step_cpu_s / (need["executed"] / cpu_rate), 3),
        },
        "first_step_metrics": {k: round(v, 6) for k, v in first.items()
                               if k in ("loss", "kl", "entropy", "grad_norm", "logp_mismatch/max")},
    }


def _child_args(args, rank: int) -> list[str]:
    out = ["--lora-rank", str(rank), "--model", args.model, "--prompts", str(args.prompts), "--group",
           str(args.group), "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
           "--kl-beta", str(args.kl_beta), "--micro-batch-size", str(args.micro_batch_size), "--steps",
           str(args.steps), "--matmul-size", str(args.matmul_size)]
    return (out + (["--remat"] if args.remat else []) + (["--fast-compile"] if args.fast_compile else [])
            + (["--unrolled"] if args.unrolled else []))


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    line = {"benchmark": "train_step", "time": results.now(), "commit": results.git_commit()}
    if args.lora_rank is not None:
        line.update(run_one(args))
    else:  # each mode in its own process, so that each peak RSS is its own
        for rank in (0, 16):
            proc = subprocess.run([sys.executable, "-m", "benchmarks", "train_step", *_child_args(args, rank),
                                   "--results", ""], capture_output=True, text=True, cwd=ROOT, env=child_env())
            mode = f"lora_r{rank}" if rank else "full"
            if proc.returncode:  # recorded, and the other mode still runs
                why = f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0 else \
                    f"exit status {proc.returncode}"
                print(f"train_step benchmark ({mode}) failed, {why}:\n{proc.stderr[-3000:]}", file=sys.stderr)
                line[mode] = {"error": why}
                continue
            child = json.loads(proc.stdout.strip().splitlines()[-1])
            line[mode] = {k: v for k, v in child.items() if k not in ("benchmark", "time", "commit", "machine",
                                                                     "threads")}
            print(json.dumps({mode: line[mode]}), file=sys.stderr, flush=True)  # progress, in case of a later kill
    line["machine"] = machine.describe()
    line["threads"] = machine.threads()
    return results.emit(line, args.results)


if __name__ == "__main__":
    main()
