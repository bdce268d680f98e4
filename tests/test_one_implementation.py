"""One implementation of the model math: outside grpo_jax/models/, no module computes a norm, a rotary embedding,
attention or an MLP activation (by the names that compute them). The sampler and the trainer call the decoder."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "grpo_jax"
# Names whose use means computing a decoder piece: RMSNorm's rsqrt, rope, attention kernels, MLP activations.
MODEL_MATH = {"rsqrt", "rms_norm", "RMSNorm", "rope_cos_sin", "rope_inv_freq", "rotate", "apply_rope",
              "dot_product_attention", "KVBlock", "silu", "gelu", "swish", "GatedMlp", "DecoderLayer"}


def _used_names(tree: ast.AST) -> set:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(alias.name for alias in node.names)
    return names


def test_no_module_outside_models_computes_model_math():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "models" in path.relative_to(PACKAGE).parts:
            continue
        used = _used_names(ast.parse(path.read_text()))
        bad = sorted(used & MODEL_MATH)
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = bad
    assert not offenders, offenders


def test_the_check_sees_model_math():
    """The scan would flag a module that normalises or rotates by itself."""
    code = "import jax\ndef f(x):\n    return x * jax.lax.rsqrt((x * x).mean()) + rotate(x)\n"
    assert {"rsqrt", "rotate"} <= _used_names(ast.parse(code)) & MODEL_MATH
