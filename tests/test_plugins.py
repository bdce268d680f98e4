"""Plug-ins own themselves: a loss variant registered from THIS module, with a new hyperparameter, a new max-metric
and a per-row input, trains through `experiments.train` (in-process, so the registration is visible), is
validated once per run, and its metric reaches metrics.jsonl; the registry, the metric reductions and the
rollout-engine seam by hand."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import tiny_run_config
from tiny_tokenizer import make_run_checkpoint
from train_fixtures import CFG, FAST_COMPILE, batch, config, params

from grpo_jax import config as config_lib
from grpo_jax import losses, registry, rollout, sharding, step_metrics, train_step
from grpo_jax.losses.ppo import ppo_clipped_loss, token_log_ratio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests", "tiny_run_config.py")
MESH = sharding.make_mesh(sharding.mesh_config())


def _check_scale(cfg):
    if not cfg.throwaway_scale > 0:
        raise ValueError(f"loss.throwaway_scale must be > 0, got {cfg.throwaway_scale!r}")


def throwaway(logps, old_logps, advantages, mask, config):
    """PPO-clipped loss times `loss.throwaway_scale`; metric throwaway/scaled_ratio_max = scale * max ratio."""
    ratio = jnp.exp(token_log_ratio(logps, old_logps, mask))
    loss = float(config.throwaway_scale) * ppo_clipped_loss(ratio, advantages[:, None], 0.2, 0.2)
    top = jnp.max(jnp.where(mask > 0, ratio, 0.0))
    metrics = step_metrics.Metrics().add("throwaway/scaled_ratio_max", float(config.throwaway_scale) * top, "max")
    return losses.PolicyTerm(loss, ratio, ratio < 0, ratio < 0, metrics=metrics)


def weighted(logps, old_logps, advantages, mask, config, *, row_weight):
    """-w_i A_i logp_t: REINFORCE with a per-row weight that comes through the batch; metric row_weight/max."""
    loss = -row_weight[:, None] * advantages[:, None] * jnp.where(mask > 0, logps, 0.0)
    ones = jnp.ones_like(logps)
    metrics = step_metrics.Metrics().add("row_weight/max", jnp.max(row_weight), "max")
    metrics.add("row_weight/min", jnp.min(row_weight), "min")
    return losses.PolicyTerm(loss, ones, ones < 0, ones < 0, metrics=metrics)


@pytest.fixture
def throwaway_variant():
    losses.register_variant("throwaway_test", fields={"throwaway_scale": 1.0}, validate=_check_scale)(throwaway)
    yield "throwaway_test"
    losses.VARIANTS.pop("throwaway_test")


@pytest.fixture
def weighted_variant():
    losses.register_variant("weighted_test", inputs=("row_weight",))(weighted)
    yield "weighted_test"
    losses.VARIANTS.pop("weighted_test")


# ---------------------------------------------------------------------------------------------- the CLI, in-process


def _train(argv, capsys, monkeypatch):
    """experiments.train as the CLI runs it (absl flag parsing + main), in this process: (exit code, stderr).
    ml_collections reads the --config.* overrides from sys.argv, so that is set too."""
    from absl import flags

    from experiments import train

    argv = ["train", *argv]
    monkeypatch.setattr(sys, "argv", argv)
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:  # an earlier parse's override flags
        delattr(flags.FLAGS, name)
    try:
        train.main(train.parse_flags(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_run_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_a_variant_registered_here_trains_through_the_cli(throwaway_variant, checkpoint, tmp_path, capsys,
                                                          monkeypatch):
    counts = {"config": 0, "loss": 0}
    real_validate, real_section = config_lib.validate, registry.validate_section

    def count_config(c):
        counts["config"] += 1
        return real_validate(c)

    def count_section(section, cfg):
        counts["loss"] += section == "loss"
        return real_section(section, cfg)

    monkeypatch.setattr(config_lib, "validate", count_config)
    monkeypatch.setattr(registry, "validate_section", count_section)
    base = ["--config", CONFIG, f"--config.model.path={checkpoint}", "--config.total_steps=2",
            "--config.eval.every=0", "--config.checkpoint.export_hf=False", "--config.logging.plots=False",
            "--config.logging.tensorboard=False", f"--config.loss.variant={throwaway_variant}"]

    workdir = str(tmp_path / "run")
    code, err = _train([*base, "--config.loss.throwaway_scale=2.5", f"--workdir={workdir}"], capsys, monkeypatch)
    assert code == 0, err
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:  # on-policy: every ratio is 1 up to the sampler/trainer gap, so the metric is the scale
        assert row["throwaway/scaled_ratio_max"] == pytest.approx(2.5, abs=1e-3)
        assert row["ratio/max"] == pytest.approx(1.0, abs=1e-3) and "loss" in row and "kl" in row
    assert counts == {"config": 1, "loss": 1}  # once per run, though the loss ran in 2 steps and traced code

    code, err = _train([*base, "--config.loss.throwaway_scale=-1.0", f"--workdir={tmp_path / 'bad'}"], capsys, monkeypatch)
    assert code == 2 and err.strip() == "error: loss.throwaway_scale must be > 0, got -1.0"
    code, err = _train([*base, "--config.loss.throwaway_scale=abc", f"--workdir={tmp_path / 'bad2'}"], capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "throwaway_scale" in err


def test_a_variant_field_is_in_the_schema_only_while_registered(throwaway_variant):
    c = config_lib.base_config()
    assert c.loss.throwaway_scale == 1.0
    c.loss.variant = throwaway_variant
    config_lib.validate(c)
    c.loss.throwaway_scale = 0.0
    with pytest.raises(ValueError, match="loss.throwaway_scale must be > 0, got 0.0"):
        config_lib.validate(c)
    c.loss.variant = "grpo"
    config_lib.validate(c)  # only the selected variant's checks run
    losses.VARIANTS.pop(throwaway_variant)
    assert "throwaway_scale" not in config_lib.base_config().loss
    losses.register_variant("throwaway_test", fields={"throwaway_scale": 1.0}, validate=_check_scale)(throwaway)


def test_a_conflicting_field_default_is_refused(throwaway_variant):
    with pytest.raises(ValueError, match="throwaway_scale = 2.0.*already declared with default 1.0"):
        losses.register_variant("other_test", fields={"throwaway_scale": 2.0})(throwaway)
    assert "other_test" not in losses.VARIANTS
    with pytest.raises(ValueError, match="already registered"):
        losses.register_variant(throwaway_variant)(throwaway)


# ---------------------------------------------------------------------------------------------- the train step


def test_a_per_row_input_travels_through_micro_batches_and_iterations(weighted_variant):
    """A batch key no module names reaches the variant, split with its rows over micro-batches; its max / min
    metrics combine by max / min (a sum would give 2x / 4x), and the gradient is the full-batch one."""
    p0 = params(0)
    b = batch(p=4, g=2, seed=1, model_params=p0)
    weight = np.array([0.5, 1.0, 3.0, 1.0, 2.0, 0.25, 1.0, 1.5], np.float32)
    b["row_weight"] = weight
    grads = {}
    for micro in (0, 4, 2):
        cfg = config(micro_batch_size=micro, kl_beta=0.0, variant=weighted_variant)
        g, metrics = train_step.make_grad_fn(CFG, cfg, MESH, FAST_COMPILE)(p0, None, None, b)
        assert float(metrics["row_weight/max"]) == 3.0 and float(metrics["row_weight/min"]) == 0.25, micro
        grads[micro] = g
    diff = max(float(jnp.max(jnp.abs(a - c))) for a, c in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[2])))
    assert diff < 1e-6
    b["row_weight"] = np.ones_like(weight)  # the weight changes the gradient: it really is read
    g1, _ = train_step.make_grad_fn(CFG, config(kl_beta=0.0, variant=weighted_variant), MESH, FAST_COMPILE)(
        p0, None, None, b)
    assert max(float(jnp.max(jnp.abs(a - c))) for a, c in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(g1))) > 1e-4
    del b["row_weight"]
    with pytest.raises(ValueError, match=r"reads the per-row inputs \['row_weight'\]; missing \['row_weight'\]"):
        train_step.make_grad_fn(CFG, config(kl_beta=0.0, variant=weighted_variant), MESH, FAST_COMPILE)(
            p0, None, None, b)
    b["row_weight"] = weight[:3]
    with pytest.raises(ValueError, match=r"batch\['row_weight'\] has shape \(3,\): a per-row input"):
        train_step.make_grad_fn(CFG, config(kl_beta=0.0, variant=weighted_variant), MESH, FAST_COMPILE)(
            p0, None, None, b)


# ---------------------------------------------------------------------------------------------- reductions by hand


def test_metric_reductions_by_hand():
    a = step_metrics.Metrics().add("s", 1.0).add("m", 2.0, "mean").add("hi", 3.0, "max").add("lo", 3.0, "min")
    a.add("first", 7.0, "max", iterations="first")
    b = step_metrics.Metrics().add("s", 4.0).add("m", 6.0, "mean").add("hi", 5.0, "max").add("lo", 1.0, "min")
    b.add("first", 9.0, "max", iterations="first")
    total = step_metrics.combine_micro_batches(step_metrics.identity(jax.tree.map(jnp.asarray, a)), a)
    total = step_metrics.finish_micro_batches(step_metrics.combine_micro_batches(total, b), 2)
    assert {k: float(v) for k, v in total.items()} == {"s": 5.0, "m": 4.0, "hi": 5.0, "lo": 1.0, "first": 9.0}
    stacked = jax.tree.map(lambda x, y: jnp.stack([jnp.asarray(x), jnp.asarray(y)]), a, b)  # 2 iterations
    per_run = step_metrics.reduce_iterations(stacked)
    assert {k: float(v) for k, v in per_run.items()} == {"s": 2.5, "m": 4.0, "hi": 5.0, "lo": 1.0, "first": 7.0}
    # The reductions survive jit (static pytree data), so the step's caller sees them too.
    out = jax.jit(lambda m: m)(jax.tree.map(jnp.asarray, a))
    assert isinstance(out, step_metrics.Metrics) and out.reduction("hi") == ("max", "max")
    with pytest.raises(ValueError, match="reduction must be one of"):
        step_metrics.Metrics().add("x", 1.0, "median")


# ---------------------------------------------------------------------------------------------- registry, config


def test_one_registry_for_every_kind():
    from grpo_jax import advantages, rewards, tasks

    for table in (losses.VARIANTS, losses.KL_ESTIMATORS, losses.AGGREGATIONS, advantages.ESTIMATORS,
                  advantages.BASELINES, advantages.SCALES, rewards.REWARDS, tasks.TASKS, rollout.ENGINES):
        assert isinstance(table, registry.Registry), table
    assert {r.kind for r in registry.kinds()} >= {
        "loss_variant", "kl_estimator", "aggregation", "advantage_estimator", "advantage_baseline",
        "advantage_scale", "reward", "task", "rollout_engine"}


def test_validation_happens_once_per_config_contents(monkeypatch):
    """The run's validation is remembered by content: later calls with the same section do not check again, a
    changed section is checked (and a bad one raises)."""
    calls = []
    real = registry.validate_section
    monkeypatch.setattr(registry, "validate_section", lambda s, c: (calls.append(s), real(s, c))[1])
    cfg = ml_collections.ConfigDict(config_lib.base_config().loss.to_dict())
    cfg.kl_beta = 0.0123  # contents no other test validated
    rewards = np.array([[1.0, 0.0], [0.5, 0.5]])
    from grpo_jax import advantages

    for _ in range(3):
        advantages.group_advantages(rewards, cfg)
        advantages.group_stats(rewards, cfg)
    assert calls == ["loss"]
    cfg.std_eps = -1.0
    with pytest.raises(ValueError, match="loss.std_eps must be >= 0"):
        advantages.group_advantages(rewards, cfg)


def test_config_schema_keys_and_choices():
    c = config_lib.base_config()
    assert (c.model.attention, c.rollout.engine, c.rollout.max_decode_rows) == ("xla", "jitted", 0)
    for key, value, match in (("model.attention", "flash", "unknown model.attention 'flash'"),
                              ("rollout.engine", "vllm", "unknown rollout.engine 'vllm'; valid: 'jitted'"),
                              ("rollout.max_decode_rows", -1, "rollout.max_decode_rows must be >= 0, got -1"),
                              ("loss.advantage_estimator", "ppo", "unknown loss.advantage_estimator 'ppo'")):
        bad = config_lib.base_config()
        section, field = key.split(".")
        bad[section][field] = value
        with pytest.raises(ValueError, match=match):
            config_lib.validate(bad)
    c.model.attention = "cudnn"
    config_lib.validate(c)


# ---------------------------------------------------------------------------------------------- rollout engines


def test_an_engine_is_chosen_by_name(checkpoint):
    from grpo_jax import evaluation, models, sampling

    with pytest.raises(ValueError, match="unknown rollout_engine 'nope'; known rollout_engines: jitted"):
        rollout.make("nope", CFG)
    calls = []

    class Recording:
        def __init__(self, model_config, mesh=None):
            self.inner = rollout.make("jitted", model_config, mesh)

        def generate(self, params, prompt_tokens, prompt_mask, key, settings):
            calls.append(settings)
            return self.inner.generate(params, prompt_tokens, prompt_mask, key, settings)

    rollout.register_engine("recording_test")(Recording)
    try:
        policy = models.load(checkpoint)
        sampler = evaluation.Sampler(policy.config, policy.tokenizer, MESH, engine="recording_test",
                                     max_decode_rows=1)
        example = {"prompt": [{"role": "user", "content": "1+1?"}], "id": "x"}
        (tokens, mask), out, completions = sampler.sample(policy.params, [example], jax.random.PRNGKey(0),
                                                          group_size=2, max_new_tokens=4)
        assert len(calls) == 1 and calls[0].group_size == 2 and calls[0].max_new_tokens == 4
        assert calls[0].max_decode_rows == 1  # rollout.max_decode_rows reaches the engine (1 slot, refilled)
        want = sampling.generate(policy.config, policy.params, tokens, mask, jax.random.PRNGKey(0), group_size=2,
                                 max_new_tokens=4, stop_ids=sampler.stop_ids, pad_id=sampler.pad_id, mesh=MESH)
        np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(want.tokens))
        assert isinstance(out, sampling.Rollout) and len(completions.texts) == 2
    finally:
        rollout.ENGINES.pop("recording_test")


# ---------------------------------------------------------------------------------------------- task eval metrics


def test_tasks_declare_the_eval_metrics_of_the_format_their_prompt_asks_for():
    from grpo_jax import tasks
    from grpo_jax.tasks.eval_metrics import answer_rate, format_rate

    r1 = "<think>2 + 2 is 4</think> <answer>4</answer>"
    assert (format_rate(r1), answer_rate(r1)) == (1.0, 1.0)
    assert (format_rate("<answer>4</answer>"), answer_rate("<answer>4</answer>")) == (0.0, 1.0)  # no </think>
    assert (format_rate("4"), answer_rate("<answer>4")) == (0.0, 0.0)
    countdown = tasks.get("countdown", eval_size=2)
    arithmetic = tasks.get("arithmetic", eval_size=2)
    assert "<think>" in countdown.eval_set()[0]["prefill"] and set(countdown.eval_metrics) == {"format_rate",
                                                                                             "answer_rate"}
    assert arithmetic.eval_set()[0]["prefill"] is None and set(arithmetic.eval_metrics) == {"answer_rate"}
    assert "<answer>" in arithmetic.eval_set()[0]["prompt"][-1]["content"]


# ---------------------------------------------------------------------------------------------- model.attention


def test_model_attention_reaches_the_train_step_and_the_sampler(checkpoint, tmp_path, monkeypatch):
    from grpo_jax import logprobs, runner

    seen = []
    real = logprobs.completion_logprobs

    def recording(model_config, *args, **kwargs):
        seen.append(model_config.attention)
        return real(model_config, *args, **kwargs)

    monkeypatch.setattr(logprobs, "completion_logprobs", recording)
    p0 = params(0)
    b = batch(p=2, g=2, seed=1, model_params=p0)
    grads = {}
    for attention in ("xla", "dot_product"):
        cfg = config(kl_beta=0.0)
        cfg.model.attention = attention
        seen.clear()
        grads[attention], _ = train_step.make_grad_fn(CFG, cfg, MESH, FAST_COMPILE)(p0, None, None, b)
        assert seen and set(seen) == {attention}  # the trainer's forward ran with the config's implementation
    diff = max(float(jnp.max(jnp.abs(a - c)))
               for a, c in zip(jax.tree.leaves(grads["xla"]), jax.tree.leaves(grads["dot_product"])))
    assert diff < 1e-5

    c = tiny_run_config.get_config()
    c.model.path = checkpoint
    c.model.attention = "dot_product"
    exp = runner.Experiment(c, str(tmp_path / "exp"))
    assert exp.sampler.model_config.attention == "dot_product"
    assert exp.sampler.engine.model_config.attention == "dot_product"
