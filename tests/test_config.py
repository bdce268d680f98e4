"""Config schema and validation, the experiment files, pass@k, the metrics file and the sample table (no model)."""

import importlib
import json
import math
import types

import pytest

from grpo_jax import config as config_lib
from grpo_jax import evaluation, metrics

# The config schema (docs/design.md), key by key.
SCHEMA = """
seed total_steps
model.path model.dtype model.compute_dtype model.lora_rank model.remat model.attention model.scan_layers
task.name rewards
rollout.prompts_per_step rollout.group_size rollout.max_new_tokens rollout.temperature rollout.top_p rollout.top_k
loss.variant loss.clip_low loss.clip_high loss.dual_clip loss.kl_beta loss.kl_estimator loss.aggregation
loss.advantage_scale loss.advantage_baseline loss.entropy_coef loss.mask_truncated loss.num_iterations
optim.lr optim.warmup_steps optim.schedule optim.weight_decay optim.max_grad_norm optim.micro_batch_size
mesh.data mesh.fsdp mesh.tensor
eval.every eval.num_examples eval.pass_k
checkpoint.every checkpoint.keep
""".split()

CONFIG_FILES = ["default", "countdown", "gsm8k", "reasoning", "calculator", "ablations.grpo", "ablations.dr_grpo",
                "ablations.dapo", "ablations.gspo", "ablations.cispo"]


def _get(config, path):
    node = config
    for part in path.split("."):
        node = node[part]
    return node


def test_base_config_has_every_schema_key_and_validates():
    c = config_lib.base_config()
    for key in SCHEMA:
        _get(c, key)  # raises KeyError when missing
    config_lib.validate(c)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_experiment_files_validate_with_each_arg(name):
    module = importlib.import_module(f"configs.{name}")
    assert "python -m experiments.train --config configs/" in module.__doc__  # the exact command is on top
    for arg in (None,) + tuple(a for a in getattr(module, "ARGS", ()) if a):
        c = module.get_config(arg)
        config_lib.validate(c)
        for key in SCHEMA:
            _get(c, key)
    with pytest.raises(ValueError, match="unknown arg"):
        module.get_config("no-such-arg")


def test_ablations_switch_what_their_name_says():
    get = {n: importlib.import_module(f"configs.ablations.{n}").get_config() for n in
           ("grpo", "dr_grpo", "dapo", "gspo", "cispo")}
    base = get["grpo"]
    assert get["dr_grpo"].loss.aggregation == "seq_mean_token_sum_norm"
    assert get["dr_grpo"].loss.advantage_scale == "none"
    dapo = get["dapo"].loss
    assert (dapo.aggregation, dapo.clip_high, dapo.drop_zero_std_groups) == ("token_mean", 0.28, True)
    assert dapo.kl_beta == 0.0
    assert "overlong" in get["dapo"].rewards
    assert get["dapo"].reward_options.overlong.max_length == get["dapo"].rollout.max_new_tokens
    assert (get["gspo"].loss.variant, get["gspo"].loss.clip_low, get["gspo"].loss.clip_high) == ("gspo", 3e-4, 4e-4)
    assert get["cispo"].loss.variant == "cispo"
    # Everything but the loss (and DAPO's extra reward) is the same experiment.
    for name, c in get.items():
        for section in ("model", "task", "rollout", "optim", "eval"):
            assert c[section].to_dict() == base[section].to_dict(), (name, section)
        assert c.total_steps == base.total_steps and c.seed == base.seed


@pytest.mark.parametrize("path, value, message", [
    ("rollout.group_size", 1, "group_size must be >= 2"),
    ("task.name", "chess", "unknown task.name 'chess'"),
    ("rewards", {"nope": 1.0}, "unknown reward 'nope'"),
    ("rewards", {}, "rewards is empty"),
    ("rollout.temperature", 0.0, "rollout.temperature must be > 0"),
    ("rollout.top_p", 1.5, "rollout.top_p must be <= 1"),
    ("loss.variant", "ppo", "unknown loss.variant 'ppo'"),
    ("model.dtype", "float16", "unknown model.dtype 'float16'"),
    ("model.attention", "flash", "unknown model.attention 'flash'"),
    ("mesh.data", 0, "mesh.data must be a positive size or -1"),
    ("eval.num_samples", 2, r"eval.num_samples \(2\) must be >= eval.pass_k \(4\)"),
    ("total_steps", -1, "total_steps must be >= 0"),
])
def test_validate_names_the_bad_key_and_value(path, value, message):
    c = config_lib.base_config()
    c.eval.pass_k = 4
    parent, _, leaf = path.rpartition(".")
    node = _get(c, parent) if parent else c
    node[leaf] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate(c)


def test_reward_options_must_name_a_configured_reward():
    c = config_lib.base_config()
    c.reward_options = {"overlong": {"max_length": 8}}
    with pytest.raises(ValueError, match="reward_options.overlong is set but 'overlong' is not in config.rewards"):
        config_lib.validate(c)


def _mesh(data, fsdp=1, tensor=1):
    return types.SimpleNamespace(shape={"data": data, "fsdp": fsdp, "tensor": tensor})


def test_batch_must_divide_over_the_mesh():
    c = config_lib.base_config()
    c.rollout.prompts_per_step, c.rollout.group_size = 6, 4
    config_lib.validate_for_mesh(c, _mesh(2, 3))
    with pytest.raises(ValueError, match=r"prompts_per_step = 6 does not divide over the mesh's data x fsdp = 4"):
        config_lib.validate_for_mesh(c, _mesh(2, 2))
    c.optim.micro_batch_size = 9
    with pytest.raises(ValueError, match="micro_batch_size = 9 does not divide the step's 24 sequences"):
        config_lib.validate_for_mesh(c, _mesh(1))


def test_fingerprint_ignores_cadence_but_not_the_experiment():
    a = config_lib.base_config()
    b = config_lib.base_config()
    b.checkpoint.every, b.logging.progress, b.eval.every = 7, False, 3
    assert config_lib.fingerprint(a) == config_lib.fingerprint(b)
    b.optim.lr = 2e-5
    assert config_lib.fingerprint(a) != config_lib.fingerprint(b)
    assert config_lib.diff(config_lib.trajectory_dict(a), config_lib.trajectory_dict(b)) == [
        f"optim.lr: {a.optim.lr!r} -> 2e-05"]


def test_pass_at_k_is_the_unbiased_estimator():
    # Hand values: n=5, c=2, k=1 -> c/n; n=4, c=1, k=2 -> 1 - C(3,2)/C(4,2) = 1 - 3/6.
    assert evaluation.pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert evaluation.pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert evaluation.pass_at_k(8, 0, 4) == 0.0
    assert evaluation.pass_at_k(8, 5, 4) == 1.0  # n - c < k: every k-subset holds a correct sample
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                assert evaluation.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError):
        evaluation.pass_at_k(3, 4, 1)


def test_metrics_writer_resume_drops_rows_after_the_checkpoint(tmp_path):
    w = metrics.MetricsWriter(str(tmp_path), tensorboard=False)
    for step in range(4):
        w.write({"step": step, "reward": step / 2, "step_time": 1.0 + step})
    w.close()
    metrics.MetricsWriter(str(tmp_path), resume_step=2, tensorboard=False).close()
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path))] == [0, 1, 2]
    assert metrics.without_timing(metrics.read_metrics(str(tmp_path)))[1] == {"step": 1, "reward": 0.5}
    metrics.MetricsWriter(str(tmp_path), resume_step=None, tensorboard=False).close()  # a fresh start
    assert metrics.read_metrics(str(tmp_path)) == []
    with pytest.raises(ValueError, match="needs 'step'"):
        metrics.MetricsWriter(str(tmp_path), tensorboard=False).write({"reward": 1.0})
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_eval_samples_are_kept_in_full_cut_back_on_resume_and_tabled_before_after(tmp_path, capsys):
    from experiments import samples as samples_cli

    w = metrics.MetricsWriter(str(tmp_path), tensorboard=False)
    long = "3 * 4 = 12, 2 + 12 = 14 " * 10 + "<answer>14</answer>"
    for step, completion, correct in ((0, "2 + 3 * 4 = 20", False), (5, long, True), (9, "late | row", True)):
        w.write_samples(step, [{"prompt": "What is 2 + 3 * 4? Work it out", "completion": completion,
                                "reward": float(correct), "correct": correct}], {"member": 1} if step == 9 else None)
    w.close()
    metrics.MetricsWriter(str(tmp_path), resume_step=5, tensorboard=False).close()
    rows = samples_cli.read_samples(str(tmp_path))
    assert sorted(rows) == [0, 5] and rows[5][0]["completion"] == long  # in full; step 9 (after 5) dropped
    assert samples_cli.main([str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| problem | step 0 | step 5 |"
    assert table[2] == f"| What is 2 + 3 * 4? | ✗ 2 + 3 * 4 = 20 | ✓ {' '.join(long.split())} |"
    assert samples_cli.main([str(tmp_path), "--width", "12"]) == 0
    assert capsys.readouterr().out.splitlines()[2] == "| What is 2 + 3 * 4? | ✗ 2 + 3 * 4... | ✓ 3 * 4 = 1... |"  # 9 characters + ...
    assert samples_cli.main([str(tmp_path), "--member", "1"]) == 2 and "no samples of member 1" in capsys.readouterr().err
    assert samples_cli.main([str(tmp_path / "nope")]) == 2


def test_metrics_writer_disabled_writes_nothing(tmp_path):
    w = metrics.MetricsWriter(str(tmp_path / "x"), enabled=False)
    assert w.write({"step": 1, "reward": 1}) == {"step": 1, "reward": 1}
    assert not (tmp_path / "x").exists()


def test_metrics_rows_hold_python_scalars(tmp_path):
    import numpy as np

    w = metrics.MetricsWriter(str(tmp_path), tensorboard=False)
    row = w.write({"step": np.int32(3), "kl": np.float32(0.5), "flag": np.bool_(True)})
    assert row == {"step": 3, "kl": 0.5, "flag": True} and type(row["step"]) is int
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == row


def test_sample_table_lists_each_sample():
    table = evaluation.format_table([{"prompt": "What is 1 + 2?", "completion": "3\n", "reward": 1.0,
                                      "advantage": -0.25}], ("prompt", "completion", "reward", "advantage"))
    lines = table.splitlines()
    assert len(lines) == 3 and "What is 1 + 2?" in lines[2] and "+1.000" in lines[2] and "-0.250" in lines[2]
