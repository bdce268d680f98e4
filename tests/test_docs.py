"""README and docs/ stay true: every `python -m` module they name exists, every repository path they name exists,
the README links the design document, and nothing points to a design file outside the repository."""

import importlib.util
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(REPO, "docs")))
                        if f.endswith(".md")]
# Paths of the repository as the docs write them: a top-level folder, then a file or a folder.
PATH = re.compile(r"(?<![\w/.-])((?:grpo_jax|experiments|benchmarks|configs|docs|tests)/[\w./<>-]*[\w/>])")
# A path that stands for one you create: a <placeholder>, configs/X.py, an example's my_*.py.
PLACEHOLDER = re.compile(r"<|/X\.|/my_")
# Names of files outside the repository that docs and docstrings used to point to.
OUTSIDE = re.compile(r"DESIGN\.md|\.notes/|PARAMS\.md|shared design folder")


def _text(path: str) -> str:
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("doc", DOCS)
def test_every_module_a_doc_runs_exists(doc):
    modules = set(re.findall(r"python -m ([\w.]+)", _text(doc)))
    missing = [m for m in sorted(modules) if m not in ("pytest", "venv", "pip")
               and importlib.util.find_spec(m) is None]
    assert not missing, f"{doc} runs modules that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_a_doc_names_exists(doc):
    paths = {p.rstrip("./") for p in PATH.findall(_text(doc))}
    missing = sorted(p for p in paths if not PLACEHOLDER.search(p) and not os.path.exists(os.path.join(REPO, p)))
    assert not missing, f"{doc} names paths that do not exist: {missing}"


def test_readme_links_the_design_document():
    assert "](docs/design.md)" in _text("README.md")
    assert "](docs/performance.md)" in _text("README.md")  # the measurements' history, with dates and machines
    for heading in ("## Layout", "## One step", "## Contracts", "## Config schema", "## Adding a plug-in"):
        assert heading in _text(os.path.join("docs", "design.md")), heading


def test_nothing_points_outside_the_repository():
    files = DOCS + ["setup.py", "Makefile"]
    for folder in ("grpo_jax", "experiments", "benchmarks", "configs"):
        for root, _, names in os.walk(os.path.join(REPO, folder)):
            files += [os.path.relpath(os.path.join(root, n), REPO) for n in names if n.endswith(".py")]
    found = [f"{f}:{i}" for f in files for i, line in enumerate(_text(f).splitlines(), 1) if OUTSIDE.search(line)]
    assert not found, found
