"""The multiturn benchmark's code path, end to end on a tiny random checkpoint with a tokenizer (no timing
assertions): both ways run, give the same episodes, and the line carries every field."""

import json

import pytest

from tiny_tokenizer import make_run_checkpoint

from benchmarks import __main__ as benchmark


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # A context of 512 positions: the calculator config's system message makes prompts of ~300 tokens.
    return make_run_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", max_position_embeddings=512)


def test_multiturn_benchmark_runs_and_appends_one_line(checkpoint, tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    line = benchmark.main(["multiturn", "--model", str(checkpoint), "--prompts", "2", "--group", "2",
                           "--new-tokens", "16", "--max-turn-tokens", "4", "--repeats", "1",
                           "--results", str(results)])
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == line
    assert [json.loads(x) for x in results.read_text().splitlines()] == [line]
    assert line["benchmark"] == "multiturn" and line["same_tokens"] and line["logp_max_diff"] <= 1e-5
    s = line["settings"]
    assert (s["prompts"], s["group"], s["max_new_tokens"], s["max_turns"]) == (2, 2, 16, 3)
    assert s["environment"] == "calculator" and s["call_format"] == "tag" and s["task"] == "arithmetic"
    rows = 4
    assert 0 < line["episode_tokens"] <= rows * 16
    assert line["final_tokens"] == pytest.approx(line["episode_tokens"] + rows * s["prompt_tokens_mean"])
    assert line["prompt_prefill_tokens"] == 2 * s["prompt_tokens_padded"]
    assert 0 < line["generated_tokens"] <= line["episode_tokens"]
    for way in ("cached", "reprefill"):
        got = line[way]
        assert got["time_s"] > 0 and len(got["times_s"]) == 1 and got["first_call_s"] > 0
        assert got["tokens_computed"] >= line["prompt_prefill_tokens"] + line["episode_tokens"]
        assert got["computed_per_final_token"] == pytest.approx(got["tokens_computed"] / line["final_tokens"],
                                                                abs=1e-4)
        # time_s is rounded to 1 ms
        assert got["tokens_per_s"] * got["time_s"] == pytest.approx(line["generated_tokens"],
                                                                    abs=got["tokens_per_s"] * 6e-4 + 0.1)
    assert line["reprefill"]["tokens_computed"] >= line["cached"]["tokens_computed"]
    assert line["turns"] >= rows and line["tool_calls"] >= 0 and line["tool_errors"] >= 0
    assert sum(line["turn_ends"].values()) == line["turns"]
    assert line["goal"]["computed_per_final_token_max"] == 1.15
    assert line["goal"]["met"] == (line["cached"]["computed_per_final_token"] <= 1.15)
    assert line["machine"]["cores"] >= 1


def test_multiturn_benchmark_on_random_weights_of_a_shape(tmp_path):
    """--shape: random weights of a named shape with a saved tokenizer (the lent GPU's run, here the tiny shape):
    guess_number answers every turn, so the episodes cross turn boundaries and re-running the history costs more."""
    from tiny_tokenizer import save_tokenizer

    tokenizer = save_tokenizer(tmp_path / "tokenizer")
    line = benchmark.main(["multiturn", "--shape", "tiny", "--tokenizer", tokenizer, "--environment", "guess_number",
                           "--prompts", "2", "--group", "2", "--new-tokens", "80", "--max-turns", "3",
                           "--max-turn-tokens", "4", "--repeats", "1", "--results", ""])
    assert line["settings"]["model"] == "random tiny (float32)" and line["settings"]["environment"] == "guess_number"
    assert line["turns"] > 4 and line["observation_tokens"] > 0 and line["same_tokens"]
    assert line["reprefill"]["tokens_computed"] > line["cached"]["tokens_computed"]
    with pytest.raises(SystemExit, match="--shape needs --tokenizer"):
        benchmark.main(["multiturn", "--shape", "tiny", "--results", ""])


def test_the_device_check_script_runs_its_commands_on_the_tiny_shape(tmp_path):
    """benchmarks/device_check.sh --smoke: the lent GPU's script, its two benchmarks on the tiny shape."""
    import os
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", os.path.join(root, "benchmarks", "device_check.sh"), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [x["benchmark"] for x in lines] == ["ragged_sampler", "multiturn"]
    assert lines[1]["settings"]["environment"] == "guess_number" and lines[1]["turns"] > 0
