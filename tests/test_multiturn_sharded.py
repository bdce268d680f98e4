"""Multi-turn episodes on a mesh: the same key gives the same episodes on 1 and 8 virtual devices
(tests/multiturn_sharded_check.py runs in a fresh interpreter with 8 host devices)."""

import os

from virtual_devices import run_report

HERE = os.path.dirname(os.path.abspath(__file__))


def test_the_same_key_gives_the_same_episodes_on_1_and_8_devices():
    report = run_report(os.path.join(HERE, "multiturn_sharded_check.py"), devices=8)
    assert sum(report["turns"]) > len(report["turns"]) and report["observation_tokens"] > 0  # real episodes
    for mesh in ("data8", "d2f2t2", "d2f2t2_compact", "d2f2t2_waves", "d2f2t2_rebuilt"):
        got = report[mesh]
        assert got["rows"] == 9, got  # the padding rows are dropped
        assert got["same_tokens"] and got["same_turns"] and got["same_observation_tokens"], (mesh, got)
        assert got["logp_diff"] <= 1e-5, (mesh, got)
    assert report["d2f2t2_compact"]["tokens_computed"] < report["d2f2t2"]["tokens_computed"]  # compaction ran
    assert report["d2f2t2_rebuilt"]["tokens_computed"] > report["d2f2t2_compact"]["tokens_computed"]  # re-runs
