"""The sampler benchmark's code path, end to end on a tiny random model (no timing assertions)."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import __main__ as benchmark
from benchmarks import flops
from benchmarks.policy import TINY, load_policy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_ARGS = ["--model", "tiny-random", "--prompts", "2", "--group", "3", "--new-tokens", "4", "--repeats", "1",
             "--matmul-size", "128", "--torch-threads", "1"]


def test_sampler_benchmark_runs_and_appends_one_line(tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    line = benchmark.main(["sampler", *TINY_ARGS, "--results", str(results)])
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == line
    assert [json.loads(x) for x in results.read_text().splitlines()] == [line]
    assert line["benchmark"] == "sampler"
    assert line["settings"]["prompts"] * line["settings"]["group"] * line["settings"]["new_tokens"] == 24
    ours, theirs = line["grpo_jax"], line["transformers"]
    assert ours["tokens_per_s"] > 0 and ours["compile_s"] >= 0 and len(ours["times_s"]) == 1
    assert theirs["threads"] == 1 and theirs["tokens_per_s"] > 0
    assert line["speedup"] == pytest.approx(ours["tokens_per_s"] / theirs["tokens_per_s"], rel=0.02)
    roof = line["roofline"]
    config, _, _ = load_policy(TINY)  # the roofline's FLOPs are the FLOP model's at the batch's mean prompt length
    want = flops.sampling(config, 2, 3, line["settings"]["prompt_tokens_mean"], 4)
    assert roof["flops"] == {k: round(v) for k, v in want.items()} and roof["flops"]["total"] > 0
    assert roof["seconds"] == pytest.approx(roof["flops"]["total"] / roof["matmul_flops_per_s"], abs=1e-6)
    assert roof["best_tokens_per_s"] > 0 and roof["matmul_flops_per_s"] > 0
    assert line["machine"]["cores"] >= 1 and line["threads"]["torch"] == [1]


def test_benchmark_dispatcher_rejects_unknown_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.main(["nope"])
    assert e.value.code == 2
    assert "unknown subcommand 'nope'" in capsys.readouterr().err
    benchmark.main([])
    usage = capsys.readouterr().out
    assert all(name in usage for name in benchmark.SUBCOMMANDS)


@pytest.mark.parametrize("module", ["benchmarks", "experiments.benchmark"])
def test_the_commands_list_the_subcommands_and_reject_unknown_ones(module):
    """`python -m benchmarks` and its deprecated spelling `python -m experiments.benchmark` (which says so)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    listed = subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert listed.returncode == 0 and all(name in listed.stdout for name in benchmark.SUBCOMMANDS), listed.stderr
    assert ("deprecated" in listed.stderr) == (module == "experiments.benchmark")
    bad = subprocess.run([sys.executable, "-m", module, "nope"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and f"python -m {module}: unknown subcommand 'nope'" in bad.stderr
    helped = subprocess.run([sys.executable, "-m", module, "sampler", "--help"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--new-tokens" in helped.stdout


def test_transformers_side_runs_our_weights():
    """The benchmark's transformers model is our params exported in memory: same logits."""
    import numpy as np
    import torch

    from benchmarks import sampler
    from grpo_jax.models import forward

    config, params, _ = load_policy(TINY)
    tokens = np.random.RandomState(0).randint(0, config.vocab_size, (2, 9))
    with torch.inference_mode():
        theirs = sampler.torch_model(config, params)(torch.as_tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(theirs, np.asarray(forward(config, params, tokens)), atol=1e-4)


def test_sampler_benchmark_with_eos_counts_generated_and_computed_tokens(tmp_path):
    line = benchmark.main(["sampler", *TINY_ARGS, "--new-tokens", "12", "--stop-at-eos", "--results", ""])
    assert line["settings"]["stop_ids"] == [2] and not line["settings"]["forced_full_length"]
    for side in ("grpo_jax", "transformers"):
        got = line[side]
        assert 0 < got["tokens_generated"] <= got["tokens_computed"] <= 2 * 3 * 12, side
        # time_s is rounded to 1 ms: the rate times it gives the generated tokens within that rounding
        assert got["tokens_per_s"] * got["time_s"] == pytest.approx(got["tokens_generated"],
                                                                    abs=got["tokens_per_s"] * 6e-4 + 0.1)
    assert "vs_roofline" not in line["roofline"]


def test_sampler_benchmark_refill_counts_the_slots_it_decodes():
    """--max-decode-rows 2: 2 slots for the 6 rows, refilled; every decode step computes 2 rows."""
    line = benchmark.main(["sampler", *TINY_ARGS, "--new-tokens", "12", "--stop-at-eos", "--max-decode-rows", "2",
                           "--no-transformers", "--results", ""])
    got = line["grpo_jax"]
    assert line["settings"]["max_decode_rows"] == 2 and not line["settings"]["compact"]  # 12 < 64 new tokens
    assert 0 < got["tokens_generated"] <= got["tokens_computed"] <= 6 + 2 * got["tokens_generated"]
    assert (got["tokens_computed"] - 6) % 2 == 0  # token 0 of each row from the prefill, then 2 rows per step


def test_generated_tokens_end_at_the_first_eos():
    import numpy as np

    from benchmarks.sampler import _generated

    rows = np.array([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
    assert _generated(rows, (2,)) == (2 + 4 + 1, 12)
    assert _generated(rows, ()) == (12, 12)


def test_ragged_sampler_benchmark_smoke():
    """The GPU check's harness on the tiny shape: rows stop at different lengths, compaction computes fewer rows
    than the plain loop, and both give the same tokens."""
    line = benchmark.main(["ragged_sampler", "--shape", "tiny", "--dtype", "float32", "--prompts", "2", "--group",
                           "8", "--new-tokens", "24", "--mean-length", "6", "--repeats", "1", "--modes",
                           "plain,compact", "--results", ""])
    plain, compact = line["plain"], line["compact"]
    assert plain["tokens_generated"] == compact["tokens_generated"] and line["same_tokens"] == {"compact": True}
    assert plain["tokens_computed"] == 16 * plain["longest"]  # every row until the longest ends
    assert compact["tokens_computed"] < plain["tokens_computed"] and compact["buckets"] == [16, 8]
    assert plain["mean_length"] < plain["longest"]  # ragged
