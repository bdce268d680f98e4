"""benchmarks/reasoning_sweep.py: a row from hand-made metrics, the table, and one setting run end to end on a tiny
model; configs/reasoning.py's settings change what they say."""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import reasoning_sweep as sweep  # noqa: E402
from configs import reasoning  # noqa: E402
from tiny_checkpoints import make_gguf  # noqa: E402


def test_a_row_by_hand():
    rows = [{"step": 0, "eval/accuracy": 0.05, "eval/num_examples": 100, "eval/intermediate_rate": 0.2},
            *({"step": s, "step_time": t, "reward": r} for s, t, r in
              ((1, 90.0, 0.0), (2, 10.0, 0.1), (3, 12.0, 0.2), (4, 14.0, 0.4), (5, 11.0, 0.5), (6, 13.0, 0.6),
               (7, 12.0, 0.7), (8, 12.0, 0.8))),
            {"step": 8, "eval/accuracy": 0.305, "eval/num_examples": 100, "eval/intermediate_rate": 0.5,
             "eval/mean_length_correct": 21.0}]
    r = sweep.row("x", "what", rows, 123.456)
    assert (r["steps"], r["accuracy_first"], r["accuracy_last"], r["points"]) == (8, 0.05, 0.305, 25.5)
    assert r["reward_first_quarter"] == 0.05 and r["reward_last_quarter"] == 0.75  # steps 1-2 and 7-8
    assert r["step_s"] == 12.0 and r["wall_s"] == 123.5  # the median after the first (compiling) step
    assert (r["intermediate_rate_first"], r["intermediate_rate_last"], r["mean_length_correct_last"]) == (0.2, 0.5, 21.0)
    md = sweep.table([r]).splitlines()
    assert len(md) == 3 and "| x | what | 8 | 5.0% -> 30.5% (100) | 25.5 | 50.0% |" in md[2]


def test_a_multiturn_row_adds_the_tool_columns():
    rows = [{"step": 0, "eval/accuracy": 0.02, "eval/num_examples": 200, "eval/tool_call_rate": 0.1,
             "eval/correct_with_call": 0.5},
            {"step": 1, "step_time": 5.0, "reward": 0.1},
            {"step": 1, "eval/accuracy": 0.6, "eval/num_examples": 200, "eval/tool_call_rate": 0.9,
             "eval/correct_with_call": 0.95}]
    r = sweep.row("calc", "what", rows, 10.0)
    assert (r["tool_call_rate_first"], r["tool_call_rate_last"], r["correct_with_call_last"]) == (0.1, 0.9, 0.95)
    md = sweep.table([r, sweep.row("plain", "single-turn", rows[1:2], 1.0)]).splitlines()
    assert md[2].endswith("| 10.0% -> 90.0% | 95.0% |") and md[3].endswith("| - -> - | - |")
    assert "tool_call_rate_last" not in sweep.row("plain", "single-turn", rows[1:2], 1.0)


def test_the_settings_change_what_they_say():
    plain, lora, mix = (reasoning.get_config(s) for s in ("plain", "steps_lora", "steps_mix"))
    assert set(reasoning.SETTINGS) <= set(reasoning.ARGS) and reasoning.DEFAULT == "pm_mix"
    assert (plain.task.steps, plain.model.lora_rank, tuple(plain.task.train_operands)) == (False, 0, ())
    assert (lora.task.steps, lora.model.lora_rank, lora.optim.lr) == (True, 16, 3e-4)
    assert (mix.task.steps, tuple(mix.task.train_operands), mix.model.lora_rank) == (True, (2, 3), 0)
    assert reasoning.get_config("").to_dict() == reasoning.get_config(reasoning.DEFAULT).to_dict()
    pm, pm_mix, g16 = (reasoning.get_config(s) for s in ("pm_steps", "pm_mix", "steps_g16"))
    assert tuple(pm.task.operators) == ("+", "-") and tuple(pm_mix.task.train_operands) == (2, 3)
    assert (g16.rollout.prompts_per_step, g16.rollout.group_size, g16.optim.lr) == (4, 16, 5e-5)
    for c in (plain, lora, mix, pm, pm_mix, g16):
        assert (c.task.num_operands, c.task.eval_size, c.rollout.max_new_tokens) == (3, 200, 48)


def test_one_setting_end_to_end_on_a_tiny_model(tmp_path, capsys):
    model = make_gguf("smollm2", str(tmp_path / "tiny.gguf"), tokenizer=True, quant="F32", max_position_embeddings=256)
    argv = ["--settings", "steps_mix", "--steps", "1", "--eval-examples", "3", "--model", model,
            "--set", "rollout.max_new_tokens=4", "--set", "rollout.prompts_per_step=4",
            "--out", str(tmp_path / "out"), "--results", str(tmp_path / "r.jsonl")]
    line = sweep.main(argv)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == line
    (r,) = line["rows"]
    assert r["setting"] == "steps_mix" and r["steps"] == 1 and r["eval_examples"] == 3
    config = json.loads((tmp_path / "out" / "steps_mix" / "config.json").read_text())
    assert config["rollout"]["max_new_tokens"] == 4 and config["task"]["train_operands"] == [2, 3]
    assert 0 <= r["accuracy_first"] <= 1 and r["points"] is not None and r["wall_s"] > 0
    with pytest.raises(SystemExit, match="give a fresh --out"):
        sweep.main(argv)
    with pytest.raises(SystemExit, match="unknown settings"):
        sweep.main(["--settings", "nope", "--out", str(tmp_path / "o2")])
