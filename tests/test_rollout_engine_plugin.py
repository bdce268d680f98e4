"""A rollout engine's own setting is one declaration on the engine: registered here with `fields={"my_setting": 3}`,
it becomes `--config.rollout.my_setting` (absl/ml_collections flags, as experiments/train.py parses them), is
validated by the engine's `validate`, is carried by `rollout.Settings.from_config` and reaches the engine's compiled
program, where it is read at trace time. No file outside this test names it."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from grpo_jax import config as config_lib, evaluation, rollout
from grpo_jax.models import ModelConfig
from tiny_tokenizer import VOCAB_SIZE, make_tokenizer

ENGINE = "probe_engine_test"
TINY_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_run_config.py")
MODEL = ModelConfig(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                    num_kv_heads=2, head_dim=8, max_position_embeddings=128, eos_token_ids=(2,), pad_token_id=0)
EXAMPLES = [{"id": f"e{i}", "prompt": [{"role": "user", "content": text}]} for i, text in enumerate(["1+2=", "7"])]

TRACED_WITH = []  # my_setting as each trace of the probe's program saw it


@functools.lru_cache(maxsize=None)
def _probe_program(model_config, settings: rollout.Settings):
    """The probe engine's compiled program, one per Settings (its cache key, as the jitted engine's): every token
    is my_setting, read from the settings at trace time."""
    def program(prompt_tokens):
        value = settings.option("my_setting")
        TRACED_WITH.append(value)
        n, t = prompt_tokens.shape[0] * settings.group_size, settings.max_new_tokens
        tokens = jnp.full((n, t), value, jnp.int32)
        return rollout.Rollout(tokens, jnp.ones((n, t), jnp.float32), jnp.zeros((n, t), jnp.float32),
                               jnp.full((n,), t, jnp.int32), jnp.ones((n,), bool), jnp.ones((n, t), jnp.float32))
    return jax.jit(program)


class ProbeEngine:
    def __init__(self, model_config, mesh=None):
        self.model_config = model_config

    def generate(self, params, prompt_tokens, prompt_mask, key, settings):
        return _probe_program(self.model_config, settings)(jnp.asarray(prompt_tokens))


def _validate(section):
    if section.my_setting < 1:
        raise ValueError(f"rollout.my_setting must be >= 1, got {section.my_setting!r}")


@pytest.fixture
def probe_engine():
    rollout.register_engine(ENGINE, fields={"my_setting": 3}, validate=_validate)(ProbeEngine)
    try:
        yield
    finally:
        rollout.ENGINES.pop(ENGINE)


def _parse(*overrides):
    """The config as `python -m experiments.train --config tests/tiny_run_config.py <overrides>` builds it."""
    argv = ["train", f"--config={TINY_CONFIG}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "experiment config", flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


def test_an_engine_setting_is_declared_once_and_reaches_the_compiled_program(probe_engine):
    config = _parse(f"--config.rollout.engine={ENGINE}", "--config.rollout.my_setting=5")
    assert config.rollout.my_setting == 5
    config_lib.validate(config)
    settings = rollout.Settings.from_config(config.rollout)
    assert settings.engine == ENGINE and settings.options == (("my_setting", 5),)
    assert settings.option("my_setting") == 5 and hash(settings) == hash(rollout.Settings.from_config(config.rollout))

    sampler = evaluation.Sampler(MODEL, make_tokenizer(), None, settings=settings)
    assert isinstance(sampler.engine, ProbeEngine)
    TRACED_WITH.clear()
    _, out, completions = sampler.sample(None, EXAMPLES, jax.random.PRNGKey(0))
    assert TRACED_WITH == [5]  # the program was traced with the config's value
    assert out.tokens.shape == (2 * config.rollout.group_size, config.rollout.max_new_tokens)
    assert np.all(np.asarray(out.tokens) == 5) and len(completions.texts) == out.tokens.shape[0]

    sampler.sample(None, EXAMPLES, jax.random.PRNGKey(1))
    assert TRACED_WITH == [5]  # same settings: the same compiled program
    other = rollout.Settings.from_config(_parse(f"--config.rollout.engine={ENGINE}",
                                                "--config.rollout.my_setting=7").rollout)
    _, out, _ = sampler.sample(None, EXAMPLES, jax.random.PRNGKey(0), other)
    assert TRACED_WITH == [5, 7] and np.all(np.asarray(out.tokens) == 7)  # a new value: a new program


def test_the_default_is_the_declared_one_and_a_bad_value_is_refused(probe_engine):
    config = _parse(f"--config.rollout.engine={ENGINE}")
    assert config.rollout.my_setting == 3
    config_lib.validate(config)
    assert rollout.Settings.from_config(config.rollout).option("my_setting") == 3
    config.rollout.my_setting = 0
    with pytest.raises(ValueError, match="rollout.my_setting must be >= 1, got 0"):
        config_lib.validate(config)
    with pytest.raises(ValueError, match="rollout.my_setting must be >= 1, got 0"):
        rollout.Settings.from_config(config.rollout)  # built from an unvalidated section: validated here
    # another engine selected: its settings carry only its own declared fields
    config.rollout.engine = "jitted"
    assert rollout.Settings.from_config(config.rollout).options == ()


def test_settings_are_one_hashable_key():
    """Settings normalise their values (equal settings hash equal), and the program key drops the traced values."""
    a = rollout.Settings(group_size=np.int64(2), max_new_tokens=4, stop_ids=[1, np.int32(2)], top_p=np.float32(0.5))
    b = rollout.Settings(group_size=2, max_new_tokens=4, stop_ids=(1, 2), top_p=0.5)
    assert a == b and hash(a) == hash(b)
    assert a.replace(temperature=0.3, top_p=0.9).program_key() == b.program_key()  # traced: one program
    assert b.replace(top_p=1.0).program_key() != b.program_key()                     # top-p off: another
    assert b.replace(greedy=True, temperature=0.3, top_k=5).program_key() == b.replace(greedy=True).program_key()
    members = b.replace(temperature=[1.0, 0.7], top_p=(0.9, 0.8))
    assert members.members == 2 and members.temperature == (1.0, 0.7)
    with pytest.raises(ValueError, match="declares no setting 'nope'"):
        b.option("nope")
