"""The side-by-side benchmarks with TRL (benchmarks/grpo_step.py, learning_curves.py, trl_reference.py) in tiny
configurations, so they cannot rot; no timing is asserted. (Their FLOP model: tests/test_bench_flops.py.)

Checked against hand-computed values or an independent reference:
  * both systems get the same settings: the TRL GRPOConfig and the grpo_jax config built from one `Settings`;
  * both systems see the same model and prompts: the HF copy TRL trains has grpo_jax's logits, TRL tokenises each
    prompt to grpo_jax's tokens, and TRL's first generation is the task's training batch 0, each prompt G times;
  * the grpo_step CLI runs both systems end to end and its JSON line is self-consistent;
  * the learning CLI runs a TRL piece, skips it when done, and its summary / within-spread fraction (by hand).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import flops, grpo_step, learning_curves
from benchmarks import trl_reference as ref
from grpo_jax import models, tasks
from grpo_jax.evaluation import Sampler
from grpo_jax.models.load import load
from tiny_checkpoints import make_gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(prompts_per_step=2, group_size=2, max_new_tokens=8)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A tiny random SmolLM2-shaped GGUF with a ChatML tokenizer: the stand-in for the embedded model."""
    return make_gguf("smollm2", tmp_path_factory.mktemp("bench") / "tiny.gguf", tokenizer=True, quant="F32")


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return tmp_path_factory.mktemp("caches")


@pytest.fixture()
def cache_env(tmp_path, monkeypatch, caches):
    """Keep trl_reference's GGUF -> HF cache out of the home directory, and let the benchmarks' subprocesses share
    a JAX compilation cache (the tests compile the same tiny programs in several processes)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(caches / "xdg"))
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(caches / "jax"))
    return tmp_path


def test_both_systems_get_the_same_settings(tmp_path):
    s = ref.Settings(prompts_per_step=4, group_size=8, max_new_tokens=48, kl_beta=0.04, lr=1e-5,
                     micro_batch_size=16, seed=3)
    trl_args = ref.grpo_config(s, steps=20, output_dir=str(tmp_path))
    assert (trl_args.num_generations, trl_args.max_completion_length, trl_args.max_steps) == (8, 48, 20)
    # one optimizer step = one generation of 4 prompts x 8 completions, in 2 micro-batches of 16
    assert (trl_args.per_device_train_batch_size, trl_args.gradient_accumulation_steps) == (16, 2)
    assert trl_args.generation_batch_size == 32 and trl_args.steps_per_generation == 2
    assert (trl_args.beta, trl_args.epsilon, trl_args.loss_type, trl_args.scale_rewards) == (0.04, 0.2, "grpo", "group")
    assert (trl_args.learning_rate, trl_args.adam_beta2, trl_args.weight_decay, trl_args.max_grad_norm) == (
        1e-5, 0.99, 0.0, 1.0)
    assert (trl_args.temperature, trl_args.top_p, trl_args.top_k, trl_args.num_iterations) == (1.0, 1.0, 0, 1)
    assert not trl_args.bf16 and trl_args.use_cpu and not trl_args.use_vllm and not trl_args.gradient_checkpointing
    assert not trl_args.shuffle_dataset and trl_args.seed == 3

    c = grpo_step.grpo_jax_config(s, total_steps=20)
    assert (c.rollout.prompts_per_step, c.rollout.group_size, c.rollout.max_new_tokens) == (4, 8, 48)
    assert (c.loss.kl_beta, c.loss.kl_estimator, c.loss.aggregation, c.loss.advantage_scale) == (
        0.04, "k3", "seq_mean_token_mean", "group")
    assert (c.loss.clip_low, c.loss.clip_high, c.loss.num_iterations) == (0.2, 0.2, 1)
    assert (c.optim.lr, c.optim.b2, c.optim.schedule, c.optim.micro_batch_size) == (1e-5, 0.99, "constant", 16)
    assert (c.model.lora_rank, c.model.remat, c.seed, c.total_steps) == (0, False, 3, 20)

    with pytest.raises(ValueError, match="micro_batch_size = 12"):
        ref.Settings(prompts_per_step=4, group_size=8, micro_batch_size=12)


def test_learning_config_file_is_the_trl_settings():
    exp = learning_curves.experiment()
    s, c = exp.settings(), exp.get_config()
    assert (s.prompts_per_step, s.group_size, s.max_new_tokens, exp.steps()) == (4, 8, 48, 20)
    assert (c.rollout.prompts_per_step, c.rollout.group_size, c.rollout.max_new_tokens, c.total_steps) == (4, 8, 48, 20)
    assert c.optim.lr == s.lr and c.loss.kl_beta == s.kl_beta and c.eval.every == 20
    with pytest.raises(ValueError, match="unknown arg"):
        exp.settings("huge")


def test_trl_trains_the_same_model_on_the_same_prompts(tiny_gguf, cache_env):
    policy = load(tiny_gguf)
    checkpoint = ref.hf_checkpoint(tiny_gguf)
    assert checkpoint.startswith(os.environ["XDG_CACHE_HOME"]) and ref.hf_checkpoint(tiny_gguf) == checkpoint

    # the HF copy TRL loads has grpo_jax's weights (independent dequantisation: transformers' GGUF reader)
    import torch
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tokens = np.random.default_rng(0).integers(0, policy.config.vocab_size, (2, 9)).astype(np.int32)
    with torch.no_grad():
        theirs = hf(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
    ours = np.asarray(models.forward(policy.config, policy.params, tokens))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)

    # TRL tokenises every prompt to grpo_jax's prompt tokens
    task = tasks.get("arithmetic")
    examples = task.train_batch(0, 0, 2) + task.train_batch(0, 1, 2)
    sampler = Sampler(policy.config, policy.tokenizer, mesh=None)
    tokenizer = ref.load_tokenizer(checkpoint)
    for example in examples:
        row = ref.to_trl_row(example)
        trl_ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
        assert list(trl_ids) == sampler.prompt_tokens(example)

    # TRL's first generation is training batch 0 of the seed, each prompt group_size times in a row
    settings = ref.Settings(model=tiny_gguf, **TINY)
    trainer = ref.build_trainer(settings, steps=1, output_dir=str(cache_env / "trl"))
    seen = []
    generate = trainer._generate

    def spy(prompts):
        seen.extend(prompts)
        return generate(prompts)
    trainer._generate = spy
    timer = ref.StepTimer(trainer)
    trainer.train()
    assert seen == [e["prompt"] for e in task.train_batch(0, 0, 2) for _ in range(2)]
    assert len(timer.step_times) == len(timer.phases) == 1 and set(timer.phases[0]) == {
        "sampling", "reward", "scoring", "train"}
    logged = [r for r in trainer.state.log_history if "reward" in r]
    assert len(logged) == 1 and logged[0]["completions/mean_length"] <= 8


def test_grpo_step_cli_runs_both_systems(tiny_gguf, cache_env):
    results = cache_env / "results.jsonl"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)  # with cache_env's XDG / JAX cache dirs
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "grpo_step", "--vs-trl", "--model", tiny_gguf, "--prompts", "2",
         "--group", "2", "--new-tokens", "8", "--steps", "1", "--warmup", "1", "--matmul-size", "128",
         "--results", str(results)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout[-2000:]  # ONE JSON line on stdout
    line = json.loads(lines[0])
    assert [json.loads(x) for x in results.read_text().splitlines()] == [line]
    assert line["benchmark"] == "grpo_step" and line["settings"]["group_size"] == 2
    for side in ("grpo_jax", "trl"):
        r = line[side]
        assert len(r["step_times_s"]) == 1 and len(r["warmup"]) == 1 and r["peak_rss_gb"] > 0
        assert r["step_time_s"] == r["step_times_s"][0] > 0
        assert sum(r["phases_s"].values()) <= r["step_time_s"] * 1.001
        assert 1 <= r["mean_completion_length"] <= 8
        tokens = r["tokens"]  # per step, 2 x 2 rows of at most 8 tokens
        assert tokens["generated"] == pytest.approx(r["mean_completion_length"] * 4)
        assert tokens["generated"] <= tokens["computed_sampling"] <= 4 * 8
        assert tokens["trained"] <= tokens["computed_train"] <= 4 * 16  # grpo_jax: width rounded up to 16
    assert line["grpo_jax"]["tokens"]["trained"] == pytest.approx(line["grpo_jax"]["tokens"]["generated"])
    assert line["pack_completions"] is True
    assert line["speedup"] == pytest.approx(line["trl"]["step_time_s"] / line["grpo_jax"]["step_time_s"])
    roof = line["roofline"]
    assert roof["seconds"] == pytest.approx(roof["flops"]["total"] / roof["matmul_flops_per_s"])
    want = flops.grpo_step(load(tiny_gguf).config, 2, 2, roof["mean_prompt_tokens"], 8, True)
    assert roof["flops"] == pytest.approx(want) and roof["flops"] == line["grpo_jax"]["flops"]
    # grpo_jax's train step ran on its sampler's own log-probs: the importance ratio is 1 at the first iteration
    assert line["grpo_jax"]["last_metrics"]["logp_mismatch/max"] < 1e-4


def test_learning_summary_by_hand():
    curves = [{"system": sys_, "seed": seed, "step": step, "reward": r}
              for sys_, seed, rewards in [("trl", 0, [0.1, 0.5]), ("trl", 1, [0.3, 0.6]),
                                          ("grpo_jax", 0, [0.2, 0.9]), ("grpo_jax", 1, [0.3, 0.9])]
              for step, r in enumerate(rewards, 1)]
    evals = [{"system": s, "seed": k, "before": {"eval/accuracy": 0.5}, "after": {"eval/accuracy": 0.5 + k / 10},
              "wall_s": 10.0 if s == "trl" else 2.0, "train_s": 1.0} for s in ("trl", "grpo_jax") for k in (0, 1)]
    summary = learning_curves.summarize(curves, evals)
    # step 1: grpo_jax mean 0.25 in TRL's [0.1, 0.3]; step 2: 0.9 outside [0.5, 0.6]
    assert summary["within_trl_spread"] == 0.5 and summary["steps_compared"] == 2
    assert summary["trl"]["mean_reward"]["mean"] == pytest.approx((0.3 + 0.45) / 2)
    assert summary["grpo_jax"]["accuracy_after"]["mean"] == pytest.approx(0.55)
    assert summary["wall_time_ratio"] == pytest.approx(0.2)


def test_learning_cli_runs_both_systems_piecewise(tiny_gguf, cache_env):
    out = cache_env / "learning"
    args = ["--config-arg", "tiny", "--model", tiny_gguf, "--seeds", "0", "--out", str(out), "--results", ""]
    line = learning_curves.main(args + ["--systems", "trl"])
    assert line["trl"]["seeds"] == [0] and "grpo_jax" not in line and "within_trl_spread" not in line
    done = (out / "runs" / "trl-seed0" / "run.json").read_text()

    line = learning_curves.main(args)  # both systems: the finished TRL piece is not run again
    assert (out / "runs" / "trl-seed0" / "run.json").read_text() == done
    curve = [json.loads(x) for x in (out / "curves.jsonl").read_text().splitlines()]
    assert sorted((r["system"], r["seed"], r["step"]) for r in curve) == [
        ("grpo_jax", 0, 1), ("grpo_jax", 0, 2), ("trl", 0, 1), ("trl", 0, 2)]
    evals = {e["system"]: e for e in map(json.loads, (out / "evals.jsonl").read_text().splitlines())}
    for system in ("grpo_jax", "trl"):  # the whole (tiny) eval split, before and after, greedy
        assert evals[system]["before"]["eval/num_examples"] == evals[system]["after"]["eval/num_examples"] == 4
    # the same initial model, greedy, same problems: the two evaluators agree before training
    assert evals["grpo_jax"]["before"]["eval/accuracy"] == evals["trl"]["before"]["eval/accuracy"]
    assert line["steps_compared"] == 2 and 0.0 <= line["within_trl_spread"] <= 1.0
    assert (out / "learning.png").stat().st_size > 0
