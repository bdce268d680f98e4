"""Logit parity with transformers' PyTorch models (the reference), for every family and option, GGUF, export.

Tolerances: 1e-4 absolute on float32 logits of tiny random checkpoints (logits are O(1): norms, biases and
projections are re-drawn so every tensor matters), 1e-3 on the real SmolLM2-135M GGUF (30 layers, logits ~40)
against transformers' own GGUF loading.
"""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from experiments import parity as parity_cli
from grpo_jax import models
from grpo_jax.models.export import export_hf
from grpo_jax.models.load import load, resolve_source
from grpo_jax.models.decoder import padded_positions
from tiny_checkpoints import load_torch_model, make_checkpoint, make_gguf, random_tokens, torch_logits

forward = jax.jit(models.forward, static_argnums=0)

CASES = {
    "llama": dict(),                                  # Llama 2: MHA, untied
    "llama-gqa-tied": dict(tied=True),                # (kv heads are 4 for "llama"; see the override below)
    "llama3": dict(),                                 # GQA, llama3 rope scaling
    "llama3-sharded": dict(sharded=True),
    "smollm2": dict(),                                # tied, GQA 4:1
    "smollm2-untied": dict(tied=False),
    "qwen2": dict(),                                  # qkv bias, untied
    "qwen2-tied-sharded": dict(tied=True, sharded=True),
    "qwen3": dict(),                                  # q/k norm, head_dim 32 != 64 / 4, tied
    "qwen3-untied-mha": dict(tied=False, num_key_value_heads=4),
    "gemma2": dict(),                                 # sliding window 4 < 12 tokens, both soft-caps, scalar 24
    "gemma2-untied-sharded": dict(tied=False, sharded=True),
    "gemma3": dict(),                                 # q/k norms, local rope base, linear scaling on global
    "gemma3-mha-window3": dict(num_key_value_heads=4, sliding_window=3,
                               layer_types=["full_attention", "sliding_attention"]),
}
CASES["llama-gqa-tied"]["num_key_value_heads"] = 2


def _gguf_ref_logits(path, tokens):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32,
        attn_implementation="eager").eval()
    return torch_logits(model, tokens)


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(tmp_path, case):
    family = case.split("-")[0]
    path = make_checkpoint(family, tmp_path / case, seed=len(case), **CASES[case])
    policy = load(path)
    tokens = random_tokens(policy.config.vocab_size, batch=3, length=12, seed=1)
    ours = np.asarray(forward(policy.config, policy.params, tokens))
    ref = torch_logits(load_torch_model(path), tokens)
    assert ours.dtype == np.float32 and ours.shape == ref.shape == (3, 12, policy.config.vocab_size)
    assert np.abs(ref).std() > 0.5  # the test is not trivially satisfied by tiny logits
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gemma3"])
def test_left_padded_batch_matches_transformers(tmp_path, family):
    """Real tokens of a left-padded batch match transformers given the same mask and position ids (Gemma: the
    sliding window of 4 counts positions of real tokens, as transformers' mask does)."""
    path = make_checkpoint(family, tmp_path / "pad", tied=False)
    policy = load(path)
    tokens = random_tokens(policy.config.vocab_size, batch=3, length=12, seed=2)
    mask = np.ones_like(tokens)
    mask[0, :5] = 0
    mask[2, :2] = 0
    ours = np.asarray(forward(policy.config, policy.params, tokens, mask))
    model = load_torch_model(path)
    with torch.no_grad():
        ref = model(torch.as_tensor(tokens, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                    position_ids=torch.tensor(np.array(padded_positions(mask)), dtype=torch.long)).logits
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref.numpy()[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["llama", "smollm2", "qwen2"])
def test_quantised_gguf_matches_transformers_gguf_loading(tmp_path, family):
    """Q8_0 GGUF written the llama.cpp way: grpo_jax vs transformers' own dequantisation and q/k unpermutation."""
    path = make_gguf(family, tmp_path / f"{family}.gguf", quant="Q8_0")
    policy = load(path)
    tokens = random_tokens(policy.config.vocab_size, batch=2, length=12, seed=3)
    ours = np.asarray(forward(policy.config, policy.params, tokens))
    np.testing.assert_allclose(ours, _gguf_ref_logits(path, tokens), atol=1e-4, rtol=0)


def test_qwen3_gguf_matches_its_hf_checkpoint(tmp_path):
    # transformers' GGUF config reader ignores qwen3.attention.key_length, so the reference is the source model.
    path = make_gguf("qwen3", tmp_path / "qwen3.gguf", quant="F32")
    policy = load(path)
    tokens = random_tokens(policy.config.vocab_size, batch=2, length=12, seed=4)
    ours = np.asarray(forward(policy.config, policy.params, tokens))
    np.testing.assert_allclose(ours, torch_logits(load_torch_model(path + ".hf"), tokens), atol=1e-4, rtol=0)


EXPORT_CLASSES = {"llama3": "LlamaForCausalLM", "smollm2": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}


@pytest.mark.parametrize("family", sorted(EXPORT_CLASSES))
def test_export_opens_in_transformers_with_the_same_logits(tmp_path, family):
    policy = load(make_checkpoint(family, tmp_path / "src", seed=5))
    out = export_hf(policy, str(tmp_path / "export"))
    tokens = random_tokens(policy.config.vocab_size, batch=2, length=12, seed=5)
    ours = np.asarray(forward(policy.config, policy.params, tokens))
    model = load_torch_model(out)
    assert type(model).__name__ == EXPORT_CLASSES[family]
    np.testing.assert_allclose(torch_logits(model, tokens), ours, atol=1e-4, rtol=0)
    again = load(out)
    assert again.config == policy.config  # the exported config.json reads back to the same ModelConfig


def test_gemma3_multimodal_checkpoint_loads_its_text_tower(tmp_path):
    """A gemma3 (image-text) checkpoint: config.json with a text_config, text weights under
    model.language_model.*, a vision tower beside them. models.load reads the text tower alone."""
    from safetensors.numpy import load_file, save_file

    src = make_checkpoint("gemma3", tmp_path / "text", seed=8)
    with open(os.path.join(src, "config.json")) as f:
        text_config = json.load(f)
    tensors = {name.replace("model.", "model.language_model.", 1): x
               for name, x in load_file(os.path.join(src, "model.safetensors")).items()}
    tensors["model.vision_tower.vision_model.embeddings.patch_embedding.weight"] = np.ones((4, 3, 2, 2), np.float32)
    tensors["model.multi_modal_projector.mm_input_projection_weight"] = np.ones((4, 64), np.float32)
    mm = tmp_path / "mm"
    mm.mkdir()
    save_file(tensors, str(mm / "model.safetensors"))
    with open(mm / "config.json", "w") as f:
        json.dump({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
                   "text_config": text_config, "vision_config": {"model_type": "siglip_vision_model"}}, f)
    policy, text = load(str(mm)), load(src)
    assert policy.config == text.config and policy.config.model_type == "gemma3_text"
    tokens = random_tokens(text.config.vocab_size, batch=2, length=10, seed=8)
    np.testing.assert_array_equal(np.asarray(forward(policy.config, policy.params, tokens)),
                                  np.asarray(forward(text.config, text.params, tokens)))


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "gemma3"])
def test_attention_implementations_agree(tmp_path, family):
    """model.attention 'dot_product' (jax.nn.dot_product_attention over the concatenated key blocks) equals the
    einsum path within 1e-5 (+ 1e-6 relative), for a left-padded prefill and for completions over a shared prompt."""
    from grpo_jax import logprobs

    policy = load(make_checkpoint(family, tmp_path / family, seed=9))
    tokens = random_tokens(policy.config.vocab_size, batch=3, length=12, seed=9)
    mask = np.ones_like(tokens)
    mask[0, :4] = 0
    other = policy.config.replace(attention="dot_product")
    np.testing.assert_allclose(np.asarray(forward(other, policy.params, tokens, mask))[mask.astype(bool)],
                               np.asarray(forward(policy.config, policy.params, tokens, mask))[mask.astype(bool)],
                               atol=1e-5, rtol=1e-6)  # logits reach ~30: a few float32 ulps there exceed 1e-5
    completions = random_tokens(policy.config.vocab_size, batch=6, length=7, seed=10)
    lp = [np.asarray(logprobs.completion_logprobs(c, policy.params, tokens, mask, completions, 2)[0])
          for c in (policy.config, other)]
    np.testing.assert_allclose(lp[1], lp[0], atol=1e-5, rtol=1e-6)  # log-probs reach ~-22: as above


def test_unavailable_attention_is_a_clear_error(tmp_path):
    policy = load(make_checkpoint("gemma2", tmp_path / "g2"))
    with pytest.raises(ValueError, match="soft-capping"):
        policy.config.replace(attention="dot_product")
    with pytest.raises(ValueError, match="attention must be one of"):
        policy.config.replace(attention="flash")
    if jax.default_backend() != "gpu":
        cfg = load(make_checkpoint("qwen2", tmp_path / "q2")).config.replace(attention="cudnn")
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            models.forward(cfg, models.init_params(cfg, jax.random.PRNGKey(0)), random_tokens(cfg.vocab_size, 1, 4))


def test_bfloat16_compute_is_close_to_float32(tmp_path):
    path = make_checkpoint("qwen2", tmp_path / "bf16")
    f32 = load(path)
    bf16 = load(path, dtype="bfloat16", compute_dtype="bfloat16")
    tokens = random_tokens(f32.config.vocab_size, batch=2, length=12, seed=6)
    a = np.asarray(forward(f32.config, f32.params, tokens))
    b = np.asarray(forward(bf16.config, bf16.params, tokens))
    assert b.dtype == np.float32 and np.isfinite(b).all()
    err = np.abs(a - b).max() / np.abs(a).max()
    assert 0 < err < 5e-2  # bfloat16 really was used (not bit-equal) and stays close
    assert np.mean(a.argmax(-1) == b.argmax(-1)) >= 0.9


# ------------------------------------------------------------------------------------- the real SmolLM2 GGUF
@pytest.fixture(scope="module")
def smollm2():
    """The embedded SmolLM2-135M-Instruct (Q4_1 GGUF), loaded once: (policy, gguf path)."""
    return load("smollm2-135m-instruct"), resolve_source("smollm2-135m-instruct")[1]


@pytest.fixture(scope="module")
def smollm2_reference_tokenizer(smollm2):
    """transformers' own GGUF tokenizer, loaded independently of grpo_jax."""
    path = smollm2[1]
    return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


def test_smollm2_gguf_logits_match_transformers_gguf(smollm2):
    policy, path = smollm2
    assert (policy.config.num_layers, policy.config.num_heads, policy.config.num_kv_heads) == (30, 9, 3)
    assert policy.config.tie_word_embeddings and policy.config.model_type == "llama"
    tokens = np.asarray([policy.tokenizer("The capital of France is")["input_ids"]], np.int32)
    ours = np.asarray(forward(policy.config, policy.params, tokens))
    ref = _gguf_ref_logits(path, tokens)
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


CORPUS = [
    "Hello world",
    "",
    "  leading spaces,\ttabs\r\nand\n\n\nnewlines   ",
    "12345678901234567890 + 0.5e-3 = -7,000.25 (3/4) 1st 2nd",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # comment\n",
    "héllo wörld ñ 日本語 中文 한국어 Ελληνικά русский عربى 😀🎉👩‍💻",
    "Ünïcödé — “quotes” … ‘single’ «guillemets» \u00a0nbsp \u200bzwsp",
    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n<think>5</think><|im_end|>",
    "<|endoftext|>special tokens mid-text<|im_end|>and<|im_start|>",
    "Countdown: using [3, 7, 25, 50] make 100. Answer: <answer>(50 - 25) * (7 - 3)</answer>",
]


def test_gguf_tokenizer_encodes_like_transformers_gguf_tokenizer(smollm2, smollm2_reference_tokenizer):
    ours, ref = smollm2[0].tokenizer, smollm2_reference_tokenizer
    for text in CORPUS:
        ids = ours(text)["input_ids"]
        assert ids == ref(text)["input_ids"], text
        assert ours.decode(ids) == text
    assert ours("Hello world 123")["input_ids"][-3:] == [33, 34, 35]  # SmolLM2 splits digits one by one
    assert ours.batch_decode([[1, 2]]) == ["<|im_start|><|im_end|>"]
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (1, 2, 2)
    assert (ours.bos_token, ours.eos_token, ours.unk_token) == (ref.bos_token, ref.eos_token, ref.unk_token)
    assert len(ours) == len(ref) == smollm2[0].config.vocab_size


def test_gguf_chat_template_matches_transformers(smollm2, smollm2_reference_tokenizer):
    ours, ref = smollm2[0].tokenizer, smollm2_reference_tokenizer
    assert ours.chat_template == ref.chat_template and "<|im_start|>" in ours.chat_template
    conversations = [
        [{"role": "user", "content": "What is 2+3?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo 日本"},
         {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "def f(x): pass"}],
    ]
    for messages in conversations:
        for gen in (True, False):
            text = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert text == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(messages, add_generation_prompt=gen)["input_ids"] == \
                ref.apply_chat_template(messages, add_generation_prompt=gen)["input_ids"]
    first = ours.apply_chat_template(conversations[0], tokenize=False, add_generation_prompt=True)
    assert first.startswith("<|im_start|>system\n") and first.endswith("<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------------- the parity CLI
def test_parity_cli_prints_one_json_line_and_exits_by_tolerance(tmp_path, capsys):
    path = make_checkpoint("llama3", tmp_path / "cli")
    assert parity_cli.main(["--checkpoint", path, "--prompt", "12 + 30 = 42"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert set(report) >= {"checkpoint", "model_type", "max_abs_logit_diff", "mean_abs_logit_diff",
                           "argmax_agreement", "num_tokens", "dtype"}
    assert report["model_type"] == "llama" and report["num_tokens"] == len("12 + 30 = 42")
    assert report["max_abs_logit_diff"] < 1e-4 and report["argmax_agreement"] == 1.0 and report["tol"] == 1e-4
    assert parity_cli.main(["--checkpoint", path, "--tol", "0"]) == 1  # float32 sums differ in the last bits
    capsys.readouterr()
    assert parity_cli.main(["--checkpoint", str(tmp_path / "missing")]) == 2
    assert "missing: no such file or directory" in capsys.readouterr().err
