"""The sampler profile: its trace/HLO join on hand-made input, and its code path end to end on a tiny model."""

import json

from benchmarks import __main__ as benchmark
from benchmarks import sampler_profile as prof

HLO = """
  %ynn_fusion.3 = f32[97,4]{1,0} fusion(%a, %b), kind=kCustom, calls=%c, metadata={op_name="jit(program)/while/body/dot_general" stack_frame_id=1}
  %exp_fusion = f32[4,8]{1,0} fusion(%d), kind=kLoop, calls=%e, metadata={op_name="jit(program)/while/body/exp" stack_frame_id=2}
  %exp_fusion.2 = f32[4,8]{1,0} fusion(%d2), kind=kLoop, calls=%e2, metadata={op_name="jit(program)/cond/branch_1_fun/while/body/exp"}
  %dot.7 = f32[4,97]{1,0} dot(%x, %w), metadata={op_name="jit(program)/while/body/dot_general"}
  %ynn_fusion.9 = f32[16,8]{1,0} fusion(%f, %g), kind=kCustom, calls=%h, metadata={op_name="jit(program)/Decoder/while/body/closed_call/dot_general" stack_frame_id=3}
"""


def test_instructions_and_decode_loop_table_by_hand():
    ins = prof.hlo_instructions(HLO)
    assert ins["ynn_fusion.3"] == ("jit(program)/while/body/dot_general", "f32[97,4]")
    assert ins["exp_fusion"] == ("jit(program)/while/body/exp", "f32[4,8]")
    events = [
        {"ph": "X", "name": "ynn_fusion.3", "ts": 0, "dur": 100},     # head, step 1
        {"ph": "X", "name": "exp_fusion", "ts": 110, "dur": 10},
        {"ph": "X", "name": "exp_fusion", "ts": 130, "dur": 30},
        {"ph": "X", "name": "ynn_fusion.3", "ts": 1000, "dur": 300},  # head, step 2
        {"ph": "X", "name": "exp_fusion.2", "ts": 1310, "dur": 20},   # a later phase of the loop (inside a cond)
        {"ph": "X", "name": "ynn_fusion.9", "ts": 5, "dur": 999},     # prefill (Decoder scan): not the decode loop
        {"ph": "X", "name": "unknown", "ts": 5, "dur": 999},          # not in the HLO
        {"ph": "i", "name": "exp_fusion", "ts": 5},                   # not a complete event
    ]
    table = prof.decode_loop_table(events, ins, steps=2, vocab=97)
    assert table["step_ms"] == 1.0 and table["head_ms"] == 0.2
    assert table["ops"] == [
        {"op": "dot_general", "shape": "f32[97,4]", "ms_per_step": 0.2, "per_step": 1.0, "median_us": 200.0},
        {"op": "exp", "shape": "f32[4,8]", "ms_per_step": 0.03, "per_step": 1.5, "median_us": 20.0}]
    # a head computed rows-first, logits [N, V], is found too
    rows_first = [{"ph": "X", "name": "dot.7", "ts": 0, "dur": 50}, {"ph": "X", "name": "dot.7", "ts": 2000, "dur": 70}]
    table = prof.decode_loop_table(rows_first, ins, steps=2, vocab=97)
    assert table["step_ms"] == 2.0 and table["head_ms"] == 0.06


def test_profile_runs_on_a_tiny_model(tmp_path, capsys):
    out = tmp_path / "profile.jsonl"
    line = benchmark.main(["sampler_profile", "--model", "tiny-random", "--prompts", "2", "--group", "2",
                           "--new-tokens", "4", "--top", "400", "--results", str(out)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == line
    assert [json.loads(x) for x in out.read_text().splitlines()] == [line]
    assert line["benchmark"] == "sampler_profile" and line["call_s"] > 0
    assert line["step_ms"] > 0 and 0 <= line["head_ms"] <= line["step_ms"]
    # every op of a tiny model's loop fits in 400 rows: which op is largest is the machine's business (under
    # make test's XLA -O0 a copy can outweigh the matmuls), only that the matmuls are found and the rows sorted
    ms = [r["ms_per_step"] for r in line["ops"]]
    assert 0 < len(ms) < 400 and ms == sorted(ms, reverse=True)
    assert any(r["op"] == "dot_general" for r in line["ops"])
