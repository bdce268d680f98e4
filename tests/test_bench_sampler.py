"""The sampler benchmark's code path, end to end on a tiny random model (no timing assertions)."""

import json

import pytest

from experiments import benchmark

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
    assert roof["flops"]["total"] == roof["flops"]["prefill"] + roof["flops"]["decode"] > 0
    assert roof["best_tokens_per_s"] > 0 and roof["matmul_flops_per_s"] > 0
    assert line["machine"]["cores"] >= 1 and line["threads"]["torch"] == [1]


def test_benchmark_dispatcher_rejects_unknown_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        benchmark.main(["nope"])
    assert e.value.code == 2
    assert "unknown subcommand 'nope'" in capsys.readouterr().err
    benchmark.main([])
    assert "sampler" in capsys.readouterr().out


def test_transformers_side_runs_our_weights():
    """The benchmark's transformers model is our params exported in memory: same logits."""
    import numpy as np
    import torch

    from experiments import bench_sampler
    from grpo_jax.models import forward

    config, params, _ = bench_sampler.load_policy(bench_sampler.TINY)
    tokens = np.random.RandomState(0).randint(0, config.vocab_size, (2, 9))
    with torch.inference_mode():
        theirs = bench_sampler.torch_model(config, params)(torch.as_tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(theirs, np.asarray(forward(config, params, tokens)), atol=1e-4)
