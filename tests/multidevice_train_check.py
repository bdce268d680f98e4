"""Run as a subprocess by tests/test_sharding.py, with XLA_FLAGS=--xla_force_host_platform_device_count=8 set
before jax is imported (pytest-xdist workers import every test module in one process, so this cannot run there).

One train step (full finetuning with a KL reference, 2 micro-batches, mu = 2, completions packed) on a single device
and on meshes (data, fsdp, tensor) = (8,1,1), (2,4,1), (2,2,2) of 8 virtual CPU devices, and the padded step
(optim.pack_completions False) on the single device. Prints one JSON object: the max
differences of loss and updated params against the single device, the shardings actually used, and the errors
raised for a bad mesh and a batch that does not divide over the mesh.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from grpo_jax import sharding, train_step  # noqa: E402
from train_fixtures import FAST_COMPILE as FAST, CFG, batch, config, max_abs_diff, params  # noqa: E402

MESHES = {"single": None, "8,1,1": (8, 1, 1), "2,4,1": (2, 4, 1), "2,2,2": (2, 2, 2)}


def _mesh(shape):
    if shape is None:
        return sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    return sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)))


def _spec(x) -> str:
    return str(tuple(x.sharding.spec))


def _run(shape, cfg, b, p0, ref):
    mesh = _mesh(shape)
    state, frozen = train_step.init_train_state(CFG, p0, cfg, mesh)
    ref_on_mesh = None if ref is None else sharding.shard_params(ref, CFG, mesh)
    state, metrics = train_step.make_train_step(CFG, cfg, mesh, FAST)(state, frozen, ref_on_mesh, b)
    out = {"loss": float(metrics["loss"]), "kl": float(metrics.get("kl", 0.0)),
           "params": jax.tree.map(np.asarray, state.params)}
    out["spec_q"] = _spec(state.params["layers"]["attn"]["q_proj"]["kernel"])
    out["spec_lm_head"] = _spec(state.params["lm_head"]["kernel"])
    out["spec_adam_mu_q"] = _spec(state.opt_state[1][0].mu["layers"]["attn"]["q_proj"]["kernel"])
    return out


def main() -> None:
    assert len(jax.devices()) == 8, f"expected 8 virtual devices, got {len(jax.devices())} (set XLA_FLAGS)"
    p0, ref = params(0), params(1)
    b = batch(p=8, g=2, seed=7, model_params=p0)
    report = {"full": {}}
    full_cfg = config(micro_batch_size=8, num_iterations=2, lr=1e-3)
    runs = {name: _run(shape, full_cfg, b, p0, ref) for name, shape in MESHES.items()}
    padded_cfg = full_cfg.copy_and_resolve_references()
    padded_cfg.optim.pack_completions = False  # the meshes above run packed (the default); this is the padded step
    padded = _run(None, padded_cfg, b, p0, ref)
    report["packed_vs_padded"] = {"loss_diff": abs(padded["loss"] - runs["single"]["loss"]),
                                  "params_diff": max_abs_diff(padded["params"], runs["single"]["params"])}
    for kind, results in (("full", runs),):
        base = results["single"]
        for name, r in results.items():
            report[kind][name] = {
                "loss": r["loss"], "kl": r["kl"],
                "loss_diff": abs(r["loss"] - base["loss"]),
                "params_diff": max_abs_diff(r["params"], base["params"]),
                "moved": max_abs_diff(r["params"], p0),
                **{k: v for k, v in r.items() if k.startswith("spec_")},
            }
    errors = {}
    try:
        sharding.make_mesh({"data": 3, "fsdp": 1, "tensor": 1})
    except ValueError as e:
        errors["mesh"] = str(e)
    try:
        mesh = _mesh((8, 1, 1))
        state, frozen = train_step.init_train_state(CFG, p0, full_cfg, mesh)
        small = batch(p=4, g=2, seed=8)
        train_step.make_train_step(CFG, full_cfg, mesh)(state, frozen, sharding.shard_params(ref, CFG, mesh), small)
    except ValueError as e:
        errors["batch"] = str(e)
    report["errors"] = errors
    print(json.dumps(report))


if __name__ == "__main__":
    main()
