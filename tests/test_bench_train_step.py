"""The `train_step` benchmark's code path (AOT compile, timed steps, roofline) on a random 2-layer model; no timing
is asserted. (Its FLOP model: tests/test_bench_flops.py.)"""

from benchmarks import __main__ as benchmark
from benchmarks import flops
from benchmarks.policy import TINY, load_policy


def test_benchmark_runs_on_a_tiny_model():
    out = benchmark.main(["train_step", "--results", "", "--lora-rank", "0", "--kl-beta", "0", "--model", TINY,
                          "--prompts", "2", "--group", "2", "--prompt-tokens", "4", "--new-tokens", "3", "--steps", "1",
                          "--matmul-size", "32", "--fast-compile"])
    assert out["benchmark"] == "train_step" and out["mode"] == "full" and out["settings"]["sequences"] == 4
    assert out["step_time_s"] > 0 and out["tokens_per_s"] > 0 and out["peak_rss_gb"] > 0
    assert out["first_step_metrics"]["logp_mismatch/max"] < 1e-5  # old log-probs were the policy's own
    assert out["step_cpu_s"] > 0 and out["roofline"]["cpu_vs_nominal_roofline"] > 0
    # the roofline's FLOPs are the FLOP model's for this batch (no reference pass at kl_beta 0)
    config, _, _ = load_policy(TINY)
    want = flops.train_step(config, 2, 2, 4, 3, False)
    roof = out["roofline"]
    assert (roof["params"], roof["nominal_flops"], roof["executed_flops"]) == (
        want["params"], want["nominal"], want["executed"])
