"""Every model family through the sampler: its log-probs are the trainer's, and greedy decoding is transformers'.

Tiny random HF checkpoints of each family (tests/tiny_checkpoints.py, written by transformers itself): Llama 2 and
3.x, SmolLM2, Qwen2, Qwen3, Gemma 2 (sliding window 4, both soft-caps, query_pre_attn_scalar 24) and Gemma 3
(q/k norms, sliding + global layers with their own rope bases). Prompts are left-padded and of mixed lengths, and
completions run past the sliding window, so every family switch is exercised in the decode step.
"""

import functools

import jax
import numpy as np
import pytest
import torch
import transformers

from grpo_jax import batching, logprobs, models, sampling
from tiny_checkpoints import FAMILIES, load_torch_model, make_checkpoint

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [3], [40, 41, 42, 43, 44]]
NEW_TOKENS = 12
STOP = 2  # the tiny checkpoints' eos id


@functools.lru_cache(maxsize=None)
def _checkpoint(family, root):
    return make_checkpoint(family, f"{root}/{family}", seed=11)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("families"))


_trainer_logprobs = jax.jit(logprobs.completion_logprobs, static_argnums=(0, 5), static_argnames="temperature")


@pytest.mark.parametrize("family", FAMILIES)
def test_sampler_logps_equal_trainer_logps(root, family):
    """|sampler log-prob - trainer log-prob| <= 1e-5 on every generated token (T = 0.8, 3 completions each)."""
    policy = models.load(_checkpoint(family, root))
    tokens, mask = batching.left_pad(PROMPTS, pad_id=0, bucket=8)
    out = sampling.generate(policy.config, policy.params, tokens, mask, jax.random.PRNGKey(5), group_size=3,
                            max_new_tokens=NEW_TOKENS, temperature=0.8, stop_ids=(STOP,), pad_id=0)
    want, _ = _trainer_logprobs(policy.config, policy.params, tokens, mask, out.tokens, 3, temperature=0.8)
    m = np.asarray(out.mask)
    assert m.sum() > len(PROMPTS) * 3 * 4  # enough tokens compared, past the window of 4
    assert np.max(np.abs(np.asarray(out.logps) - np.asarray(want)) * m) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_transformers_generate(root, family):
    """Greedy decoding of left-padded prompts of mixed lengths, token for token against transformers' greedy
    `generate` (eager attention) on the same checkpoint, stopping at eos the same way."""
    path = _checkpoint(family, root)
    policy = models.load(path)
    tokens, mask = batching.left_pad(PROMPTS, pad_id=0, bucket=8)
    ours = sampling.generate(policy.config, policy.params, tokens, mask, jax.random.PRNGKey(0), group_size=1,
                             max_new_tokens=NEW_TOKENS, greedy=True, stop_ids=(STOP,), pad_id=0)
    model = load_torch_model(path)
    config = transformers.GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=STOP,
                                           pad_token_id=0)
    with torch.no_grad():
        ref = model.generate(torch.as_tensor(np.asarray(tokens), dtype=torch.long),
                             attention_mask=torch.as_tensor(np.asarray(mask), dtype=torch.long),
                             generation_config=config).numpy()[:, tokens.shape[1]:]
    ref = np.pad(ref, ((0, 0), (0, NEW_TOKENS - ref.shape[1])))  # transformers stops once every row has
    np.testing.assert_array_equal(np.asarray(ours.tokens), ref)
    assert np.asarray(ours.lengths).max() > 4  # the comparison runs past the sliding window


@pytest.mark.parametrize("family,lora_rank", [("gemma2", 2), ("gemma3", 0)])
def test_runner_trains_and_exports_a_gemma_checkpoint_unchanged(tmp_path, family, lora_rank):
    """`experiments.train` on a tiny Gemma checkpoint (with LoRA for Gemma 2): metrics for every step, and the
    exported HF dir opens in transformers with the trained policy's logits."""
    import subprocess
    import sys

    from test_train_cli import cli_env, train_command
    from tiny_tokenizer import make_run_checkpoint

    from grpo_jax.metrics import read_metrics

    checkpoint = make_run_checkpoint(tmp_path / "ckpt", family=family)
    workdir = str(tmp_path / "run")
    result = subprocess.run(train_command(checkpoint, workdir, "--config.total_steps=2", "--config.eval.every=0",
                                          f"--config.model.lora_rank={lora_rank}"),
                            env=cli_env(str(tmp_path / "xla_cache")), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for r in read_metrics(workdir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    exported = models.load(f"{workdir}/export")
    assert exported.config.model_type == {"gemma2": "gemma2", "gemma3": "gemma3_text"}[family]
    tokens = np.asarray([[5, 6, 7, 8, 9, 10]], np.int32)
    ref = load_torch_model(f"{workdir}/export")(torch.as_tensor(tokens, dtype=torch.long)).logits.detach().numpy()
    np.testing.assert_allclose(np.asarray(models.forward(exported.config, exported.params, tokens)), ref, atol=1e-4)


@pytest.mark.parametrize("family", ["llama3", "qwen2", "gemma2", "gemma3"])
def test_unrolled_layers_compute_what_the_scanned_ones_do(root, family):
    """model.scan_layers False (each layer on its own weights and cache buffers) is the same decoder: logits within
    1e-5 of the scanned pass, the same sampled tokens, and sampler log-probs equal to the trainer's."""
    policy = models.load(_checkpoint(family, root))
    unrolled = policy.config.replace(scan_layers=False)
    tokens, mask = batching.left_pad(PROMPTS, pad_id=0, bucket=8)
    np.testing.assert_allclose(np.asarray(models.forward(unrolled, policy.params, tokens, mask)),
                               np.asarray(models.forward(policy.config, policy.params, tokens, mask)), atol=1e-5)
    runs = [sampling.generate(c, policy.params, tokens, mask, jax.random.PRNGKey(5), group_size=2,
                              max_new_tokens=NEW_TOKENS, temperature=0.8, stop_ids=(STOP,))
            for c in (policy.config, unrolled)]
    np.testing.assert_array_equal(np.asarray(runs[0].tokens), np.asarray(runs[1].tokens))
    want, _ = _trainer_logprobs(policy.config, policy.params, tokens, mask, runs[1].tokens, 2, temperature=0.8)
    assert np.max(np.abs(np.asarray(runs[1].logps) - np.asarray(want)) * np.asarray(runs[1].mask)) <= 1e-5
