"""benchmarks/calculator_probe.py end to end on a tiny random checkpoint with a tokenizer (no timing assertions):
one row per setting asked for, every rate a share of what was played, the line appended; an unknown setting is
refused with one line."""

import json

import pytest

from tiny_tokenizer import make_run_checkpoint

from benchmarks import __main__ as benchmark


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # A context of 512 positions: the calculator config's system message makes prompts of ~300 tokens.
    return make_run_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", max_position_embeddings=512)


def test_probe_runs_each_setting_and_appends_one_line(checkpoint, tmp_path, capsys):
    results = tmp_path / "results.jsonl"
    line = benchmark.main(["calculator_probe", "--model", str(checkpoint), "--settings", "tiny,open_tag_hinted",
                           "--problems", "2", "--group", "2", "--eval-problems", "2", "--results", str(results)])
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1]) == line
    assert [json.loads(x) for x in results.read_text().splitlines()] == [line]
    assert line["benchmark"] == "calculator_probe" and [r["setting"] for r in line["rows"]] == ["tiny",
                                                                                               "open_tag_hinted"]
    for row in line["rows"]:
        assert (row["episodes"], row["held_out"]) == (4, 2)
        for rate in ("call_rate", "right", "groups_with_right", "greedy_right", "greedy_call_rate"):
            assert 0.0 <= row[rate] <= 1.0
            assert row[rate] * (2 if rate.startswith("greedy") or rate == "groups_with_right" else 4) % 1 == 0
        assert row["groups_with_right"] >= row["right"]  # a right episode makes its group one with a right one
    assert line["rows"][1]["prefill"] == "<" and "| open_tag_hinted |" in captured.err


def test_an_unknown_setting_is_one_line(capsys):
    with pytest.raises(SystemExit, match="has no setting 'nope'"):
        benchmark.main(["calculator_probe", "--settings", "nope", "--results", ""])
