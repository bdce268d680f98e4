"""`python -m experiments.plot DIR [DIR ...] [--out OUT]` redraws the learning curves of any workdir."""

import json
import os

from experiments import plot


def _workdir(path, steps=3):
    os.makedirs(path)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 0, "eval/accuracy": 0.5, "eval/mean_length": 9.0}) + "\n")
        for s in range(1, steps + 1):
            f.write(json.dumps({"step": s, "reward": 0.1 * s, "kl": 0.01 * s, "completions/mean_length": 10.0 - s})
                    + "\n")
        f.write(json.dumps({"step": steps, "eval/accuracy": 0.7, "eval/mean_length": 8.0}) + "\n")
    return str(path)


def test_plots_every_workdir_and_reports_a_missing_one(tmp_path, capsys):
    a, b = _workdir(tmp_path / "a"), _workdir(tmp_path / "b")
    assert plot.main([a, b]) == 0
    printed = capsys.readouterr().out.split()
    assert os.path.join(a, "plots", "summary.png") in printed and os.path.join(b, "plots", "reward.png") in printed
    assert all(os.path.getsize(p) > 1000 for p in printed)

    assert plot.main([a, "--out", str(tmp_path / "out")]) == 0
    assert os.path.exists(tmp_path / "out" / "a" / "eval_accuracy.png")

    assert plot.main([str(tmp_path / "nothing")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_a_multiturn_run_gets_the_tool_panels_and_a_single_turn_run_does_not(tmp_path):
    single = _workdir(tmp_path / "single")
    tools = _workdir(tmp_path / "tools")
    with open(os.path.join(tools, "metrics.jsonl"), "a") as f:
        for step, rate in ((0, 0.01), (3, 0.98)):
            f.write(json.dumps({"step": step, "eval/accuracy": rate, "eval/tool_call_rate": rate,
                                "eval/calls_mean": rate, "eval/parse_rate": 1.0, "eval/correct_with_call": rate})
                    + "\n")
        f.write(json.dumps({"step": 1, "env/tool_calls": 40.0}) + "\n")
    assert plot.main([single, tools]) == 0
    assert not os.path.exists(os.path.join(single, "plots", "eval_tools.png"))
    assert not os.path.exists(os.path.join(single, "plots", "tool_calls.png"))
    assert os.path.getsize(os.path.join(tools, "plots", "eval_tools.png")) > 1000
    assert os.path.getsize(os.path.join(tools, "plots", "tool_calls.png")) > 1000
