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
