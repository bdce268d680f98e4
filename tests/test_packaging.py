"""What `pip install -e .` (no extras) gives: the library and the CLIs, trained and run without torch, TRL,
accelerate or the benchmark harness; the wheel ships grpo_jax, experiments and configs, not benchmarks/."""

import ast
import os
import runpy
import subprocess
import sys

import setuptools

from test_train_cli import CONFIG, REPO, cache, checkpoint, cli_env  # noqa: F401  (fixtures)

OPTIONAL = ("torch", "trl", "accelerate", "benchmarks")  # what the extras (and the checkout) add
# experiments/ may import one of them inside a function, where the CLI needs it and says how to install it:
ALLOWED = {("experiments/parity.py", "torch"),        # the parity reference; a one-line error without torch
           ("experiments/benchmark.py", "benchmarks")}  # the deprecated spelling of `python -m benchmarks`


def _imports(path: str):
    """(top-level package, at module level?) of every import statement in a file."""
    tree = ast.parse(open(path).read(), path)
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            yield name.split(".")[0], id(node) in top


def _sources(folder: str):
    for root, _, files in os.walk(os.path.join(REPO, folder)):
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.relpath(os.path.join(root, f), REPO)


def test_runtime_code_imports_no_optional_package():
    found = [(path, name) for folder in ("grpo_jax", "experiments", "configs") for path in _sources(folder)
             for name, _ in _imports(os.path.join(REPO, path)) if name in OPTIONAL]
    assert sorted(set(found) - ALLOWED) == []
    for path, name in ALLOWED:  # and those only inside a function, so importing the module needs nothing extra
        assert (name, True) not in set(_imports(os.path.join(REPO, path))), path


def test_the_wheel_and_the_extras(monkeypatch):
    seen = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: seen.update(kw))
    monkeypatch.chdir(REPO)
    runpy.run_path(os.path.join(REPO, "setup.py"))
    packages = set(seen["packages"])
    assert {"grpo_jax", "grpo_jax.models", "grpo_jax.rewards", "grpo_jax.tasks", "experiments", "configs",
            "configs.ablations"} <= packages
    assert not any(p.split(".")[0] in ("benchmarks", "tests") for p in packages), packages
    # every package under grpo_jax/ is shipped
    on_disk = {os.path.relpath(root, REPO).replace(os.sep, ".") for root, _, files in
               os.walk(os.path.join(REPO, "grpo_jax")) if "__init__.py" in files}
    assert on_disk <= packages, on_disk - packages

    def names(requirements):
        return {r.split("=")[0].split("<")[0].split(">")[0] for r in requirements}
    assert not names(seen["install_requires"]) & set(OPTIONAL)
    extras = {k: names(v) for k, v in seen["extras_require"].items()}
    assert {"torch", "accelerate", "trl"} <= extras["bench"] <= extras["test"]
    assert "torch" in extras["parity"]


def _without_optional(module: str, *args: str) -> list:
    """`python -m module args` with the optional packages unimportable, as in an install without extras."""
    code = ("import runpy, sys\n"
            f"for name in {OPTIONAL!r}: sys.modules[name] = None\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n")
    return [sys.executable, "-c", code, module, *args]


def test_the_clis_run_without_the_extras(checkpoint, cache, tmp_path):
    env = cli_env(cache)
    workdir = str(tmp_path / "run")
    train = subprocess.run(_without_optional("experiments.train", "--config", CONFIG, "--workdir", workdir,
                                             f"--config.model.path={checkpoint}", "--config.total_steps=2"),
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert os.path.exists(os.path.join(workdir, "metrics.jsonl"))

    plot = subprocess.run(_without_optional("experiments.plot", workdir, "--out", str(tmp_path / "plots")),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert plot.returncode == 0 and plot.stdout.strip(), plot.stderr[-3000:]

    demo = subprocess.run(_without_optional("experiments.demo", "--config", CONFIG, "--workdir",
                                            str(tmp_path / "demo"), f"--config.model.path={checkpoint}",
                                            "--config.total_steps=2"),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0 and "held-out accuracy" in demo.stdout, demo.stderr[-3000:]

    parity = subprocess.run(_without_optional("experiments.parity", "--checkpoint", checkpoint), cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert parity.returncode == 2, parity.stderr[-3000:]
    last = parity.stderr.strip().splitlines()[-1]  # (after transformers' own note that it found no PyTorch)
    assert last.startswith("error: ") and "torch is not installed" in last
    assert "Traceback" not in parity.stderr

    # the deprecated benchmark command says where the harness is instead of a traceback
    bench = subprocess.run(_without_optional("experiments.benchmark", "sampler"), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert bench.returncode == 1 and "benchmarks/ of a source checkout" in bench.stderr, bench.stderr[-3000:]
    assert "Traceback" not in bench.stderr
