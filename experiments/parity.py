"""Logit parity of grpo_jax against transformers (PyTorch) for one checkpoint: the check to run after adding a model.

    python -m experiments.parity --checkpoint smollm2-135m-instruct
    python -m experiments.parity --checkpoint /path/to/hf_dir --prompt "12 + 30 =" --dtype float32

Loads SOURCE (checkpoint dir | hub id | .gguf | alias, as `models.load`) into grpo_jax and into transformers
(`AutoModelForCausalLM.from_pretrained`, with `gguf_file=` for GGUF sources, float32, eager attention), runs both on
the tokenised prompt and prints ONE JSON line:
  {"checkpoint", "model_type", "max_abs_logit_diff", "mean_abs_logit_diff", "argmax_agreement", "num_tokens",
   "dtype", "tol"}
Exit status 1 when max_abs_logit_diff > tol (default 1e-4 for float32 safetensors, 1e-3 for float32 GGUF, and
5% of the largest reference logit for bfloat16). The reference needs torch (`pip install -e ".[parity]"`); it is
imported here only, never by grpo_jax itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


class MissingReference(RuntimeError):
    """The reference implementation (torch) is not installed."""


DEFAULT_PROMPT = "The capital of France is Paris. 12 + 30 = 42; def f(x): return x ** 2  # héllo 世界"


def prompt_tokens(policy, prompt: str) -> np.ndarray:
    """int32 [1, T]: the tokenised prompt, or (no tokenizer) its UTF-8 bytes modulo the vocabulary size."""
    if policy.tokenizer is not None:
        ids = policy.tokenizer(prompt)["input_ids"]
    else:
        ids = [b % policy.config.vocab_size for b in prompt.encode("utf-8")]
    return np.asarray([ids], dtype=np.int32)


def reference_logits(policy, tokens: np.ndarray) -> np.ndarray:
    """float32 logits of transformers' PyTorch model of the same source."""
    try:
        import torch
    except ImportError:
        raise MissingReference("the reference is transformers' PyTorch model, and torch is not installed: "
                               "pip install -e \".[parity]\"") from None
    import transformers

    path = policy.source
    kwargs = dict(dtype=torch.float32, attn_implementation="eager")
    if os.path.isfile(path):  # GGUF: transformers' own dequantisation and unpermutation
        kwargs["gguf_file"] = os.path.basename(path)
        path = os.path.dirname(os.path.abspath(path))
    model = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
    with torch.no_grad():
        return model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()


def parity(checkpoint: str, prompt: str = DEFAULT_PROMPT, dtype: str = "float32",
           tol: float | None = None) -> dict:
    """The parity report (the JSON line's fields) of one checkpoint."""
    import jax

    from grpo_jax import models
    from grpo_jax.models.load import load

    policy = load(checkpoint, dtype=dtype, compute_dtype=dtype)
    tokens = prompt_tokens(policy, prompt)
    ours = np.asarray(jax.jit(models.forward, static_argnums=0)(policy.config, policy.params, tokens))
    ref = reference_logits(policy, tokens)
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    if tol is None:
        if dtype == "bfloat16":
            tol = 0.05 * float(np.abs(ref).max())
        else:
            tol = 1e-3 if os.path.isfile(policy.source) else 1e-4
    return {
        "checkpoint": checkpoint,
        "model_type": policy.config.model_type,
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "argmax_agreement": float(np.mean(ours.argmax(-1) == ref.argmax(-1))),
        "num_tokens": int(tokens.shape[1]),
        "dtype": dtype,
        "tol": float(tol),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.parity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint dir, hub id, .gguf file, or alias (e.g. smollm2-135m-instruct)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="text to run both models on")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="grpo_jax param and compute dtype (the reference is always float32)")
    parser.add_argument("--tol", type=float, default=None, help="max allowed |logit difference|")
    args = parser.parse_args(argv)
    from grpo_jax.models.config import UnsupportedModelError
    from grpo_jax.models.errors import CheckpointError

    try:
        report = parity(args.checkpoint, args.prompt, args.dtype, args.tol)
    except (CheckpointError, UnsupportedModelError, MissingReference) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0 if report["max_abs_logit_diff"] <= report["tol"] else 1


if __name__ == "__main__":
    sys.exit(main())
