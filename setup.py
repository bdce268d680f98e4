"""grpo_jax: GRPO finetuning of LLMs in JAX/Flax. `make test` and `make demo` install everything from here."""

from setuptools import find_packages, setup

RUNTIME = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "datasets==5.2.0",
    "ml_collections==1.1.0",
    "safetensors==0.8.0",
    "gguf==0.19.0",
    "huggingface_hub==2.4.0",
    "numpy>=2.0,<3",
    "absl-py==2.5.1",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "tensorboardX==2.6.5",
]

# torch (CPU) is a reference for tests, benchmarks and experiments.parity only; the library never imports it.
TORCH = ["torch==2.13.0"]
# The benchmark harness (benchmarks/, run from a checkout: `python -m benchmarks`) compares against transformers'
# PyTorch models and TRL's GRPOTrainer; with the pins above trl adds only itself.
BENCH = TORCH + ["accelerate==1.15.0", "trl==1.16.0"]
# The tests run the benchmarks' tiny configurations too (tests/test_bench_*.py).
TEST = BENCH + ["pytest==9.2.0", "pytest-xdist==3.8.0", "hypothesis==6.170.17"]

# The runtime wheel: the library, the CLIs (experiments/: train, demo, parity, plot) and the experiment configs.
# benchmarks/ and tests/ stay in the source checkout.
PACKAGES = find_packages(include=["grpo_jax", "grpo_jax.*", "experiments", "configs", "configs.*"])

setup(
    name="grpo_jax",
    version="0.1.0",
    description="GRPO finetuning of LLMs on verifiable reasoning tasks, in JAX/Flax",
    packages=PACKAGES,
    python_requires=">=3.10",
    install_requires=RUNTIME,
    extras_require={
        "test": TEST,
        "math": ["math-verify==0.9.0"],
        "bench": BENCH,
        "parity": TORCH,
        "wandb": ["wandb"],
    },
)
