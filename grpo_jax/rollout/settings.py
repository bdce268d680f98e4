"""`Settings`: every rollout setting in one hashable object, built from the config once and passed whole.

    settings = rollout.Settings.from_config(config.rollout, stop_ids=..., pad_id=...)   # once per run
    out = engine.generate(params, prompt_tokens, prompt_mask, key, settings)            # the engine gets it whole
    greedy = settings.replace(group_size=1, greedy=True)                                # a variant for evaluation

The core fields are the sampling knobs every engine understands. `engine` names the engine the settings were built
for and `options` holds that engine's own settings, the fields it declares with
`@rollout.register_engine(name, fields={...})`: one (name, value) pair per declared field, sorted by name, read with
`settings.option(name)`. So an engine's new setting is declared on the engine and read where it is used; the config
(`--config.rollout.<name>=...`), validation and this object carry it without naming it.

Invariants:
- Settings is immutable and hashable, and equal settings hash equal: it is the compiled program's cache key
  (`program_key()`), so values are normalised on construction (numpy ints -> int, sequences -> tuples,
  stop_ids -> a tuple of ints, options sorted), and a call with the defaults spelled out finds the same program.
- temperature and top_p are traced values of a compiled program, never part of its key: `program_key()` replaces
  them by `TRACED` (top_p only when top-p is on; off, top_p = 1.0). With greedy decoding neither matters (greedy
  log-probs are at temperature 1) and top_k is 0 in the key.
- temperature / top_p are one float, or a tuple of K floats (one per population member, `generate_members`).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Optional, Union

import numpy as np

from grpo_jax.rollout.engine import ENGINES


class _Traced:
    """Marks a setting that is an argument of the compiled program, not part of its key."""

    def __repr__(self) -> str:
        return "TRACED"

    def __reduce__(self):
        return "TRACED"


TRACED = _Traced()


def _plain(value):
    """A hashable plain-Python value: numpy scalars -> Python scalars, lists / arrays -> tuples."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def _knob(value):
    """temperature / top_p: a float, a tuple of floats (one per member), or TRACED."""
    if value is TRACED:
        return value
    if isinstance(value, (list, tuple)) or np.ndim(value) > 0:
        return tuple(float(v) for v in np.asarray(value, np.float64).reshape(-1))
    return float(value)


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to sample: G completions of at most max_new_tokens per prompt.

    group_size, max_new_tokens: G and T. temperature, top_k, top_p: transformers' order (logits / temperature, then
    top-k, then top-p); greedy: argmax, log-probs at temperature 1. stop_ids: a row ends at the first of these
    tokens; pad_id fills the columns after it. max_decode_rows (`rollout.max_decode_rows`): rows decoded at once,
    finished rows' slots refilled with waiting ones (0 = all rows at once); compact: shrink the decode batch as
    rows finish (None = the engine's default). An engine may use max_decode_rows and compact to bound its memory
    and work, never to change the result. engine / options: see the module docstring."""
    group_size: int
    max_new_tokens: int
    temperature: Union[float, tuple] = 1.0
    top_k: int = 0
    top_p: Union[float, tuple] = 1.0
    greedy: bool = False
    stop_ids: tuple = ()
    pad_id: int = 0
    max_decode_rows: int = 0
    compact: Optional[bool] = None
    engine: str = "jitted"
    options: tuple = ()

    def __post_init__(self):
        set_ = _setter(self)
        for name in ("group_size", "max_new_tokens", "top_k", "pad_id", "max_decode_rows"):
            value = getattr(self, name)
            if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
                set_(name, int(value))
        set_("temperature", _knob(self.temperature))
        set_("top_p", _knob(self.top_p))
        set_("greedy", bool(self.greedy))
        set_("stop_ids", tuple(int(s) for s in self.stop_ids))
        set_("compact", None if self.compact is None else bool(self.compact))
        set_("options", tuple(sorted((str(k), _plain(v)) for k, v in dict(self.options).items())))

    # ------------------------------------------------------------------ building

    @classmethod
    def from_config(cls, section, **changes) -> "Settings":
        """The settings of a config's `rollout` section (validated here unless the run validated it already): every
        Settings field that is a key of the section (group_size, max_new_tokens, temperature, top_k, top_p,
        max_decode_rows, engine), and the selected engine's declared fields as `options`. `changes` set the rest
        (stop_ids and pad_id come from the tokenizer) or override."""
        from grpo_jax import registry

        registry.ensure_valid("rollout", section)
        engine = str(section["engine"])
        declared = ENGINES.entry(engine).fields
        values = {f.name: section[f.name] for f in dataclasses.fields(cls) if f.name != "options" and f.name in section}
        values.update(engine=engine, options=tuple((name, section[name]) for name in sorted(declared)))
        values.update(changes)
        return cls(**values)

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ reading

    def option(self, name: str) -> Any:
        """The engine's own setting `name`: its value in `options`, else the default the engine declares."""
        own = dict(self.options)
        if name in own:
            return own[name]
        declared = ENGINES.entry(self.engine).fields if self.engine in ENGINES else {}
        if name in declared:
            return _plain(declared[name])
        raise ValueError(f"rollout engine {self.engine!r} declares no setting {name!r}; declared: "
                         f"{', '.join(sorted(declared)) or '(none)'}")

    @property
    def use_top_p(self) -> bool:
        """Top-p is on: some top_p value is below 1 (or it is a traced value in a program key)."""
        if self.top_p is TRACED:
            return True
        return bool(np.any(np.asarray(self.top_p, np.float64) < 1.0))

    @property
    def members(self) -> int:
        """K when temperature / top_p hold one value per population member (tuples), else 0."""
        sizes = {len(v) for v in (self.temperature, self.top_p) if isinstance(v, tuple)}
        return max(sizes) if sizes else 0

    def program_key(self) -> "Settings":
        """What a compiled program is specialised on (its cache key): these settings with the traced values
        replaced by TRACED (see the module docstring)."""
        if self.greedy:
            return self.replace(temperature=TRACED, top_p=1.0, top_k=0)
        return self.replace(temperature=TRACED, top_p=TRACED if self.use_top_p else 1.0)


def _setter(obj):
    """Setter of a frozen dataclass's field during __post_init__."""
    return lambda name, value: object.__setattr__(obj, name, value)
