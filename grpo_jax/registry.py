"""The one registry: named plug-ins of each kind, with the config fields they own. Imports nothing from grpo_jax.

A plug-in is an object registered under a name in the registry of its kind:

    kind                config key that selects it     what is registered
    loss_variant        loss.variant                   fn(logps, old_logps, advantages, mask, config, **inputs) -> PolicyTerm
    kl_estimator        loss.kl_estimator              fn(logps, ref_logps) -> per-token KL [N, T]
    aggregation         loss.aggregation               fn(per_token, mask, denominators) -> scalar
    advantage_estimator loss.advantage_estimator       fn(rewards [P, G], config, per_reward, reward_weights) -> [P, G]
    advantage_baseline  loss.advantage_baseline        fn(rewards [P, G]) -> baseline
    advantage_scale     loss.advantage_scale           fn(rewards [P, G], eps) -> divisor
    reward              rewards (name -> weight)       factory(**options) -> TRL reward fn
    task                task.name                      factory(**options) -> Task
    rollout_engine      rollout.engine                 factory(model_config, mesh) -> RolloutEngine
    environment         environment.name ('' = none)   factory(environment section) -> Environment (one per row)

Each entry may declare:
  fields    {name: default}: its own config keys, added to the section of its kind (`--config.loss.<name>=...`);
            a value must keep the default's type (bool, int, float (ints accepted), str, tuple); two plug-ins
            may share a field only with the same default;
  validate  fn(section) -> None, raising ValueError naming the field and value; called (with the type checks of
            `fields`) only when the entry is the one the config selects, once per run;
  presets   {field: value} the entry recommends for fields it shares with others (e.g. a paper's clip bounds),
            applied by helpers such as `grpo_jax.config.loss_config(variant)`, never silently;
  vanishes_at_zero_advantage
            a loss term's word about itself (loss variants, KL estimators): True when, for a completion whose
            advantage is exactly 0, its per-token loss is 0 whatever the log-probs (so is its gradient); the
            train step leaves such completions out where every selected term says so (optim.skip_zero_advantage)
  inputs    names of per-row batch arrays the entry reads (a loss variant's extra inputs, e.g. importance
            weights): the train step carries every batch key through its micro-batches, the loss hands these
            to the entry as keyword arguments.

Sections also hold core fields that belong to no single plug-in (e.g. `loss.kl_beta`), declared with
`declare_fields(section, owner, fields, validate)`. `config.base_config()` assembles every section from what is
declared when it runs, so a plug-in module must be imported before the config is built: built-ins are imported
by their packages (`grpo_jax.losses` imports every module in its folder), user plug-ins by the config file or
the caller.

`Registry` is also a mutable mapping name -> registered object (`losses.VARIANTS["grpo"]`, `.pop(name)` to
unregister), and for factory kinds (rewards, tasks, rollout engines) `get(name, **options)` builds one, with a
clear error for an unknown name or option.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import numbers
from collections.abc import MutableMapping
from typing import Any, Callable, Iterator, Optional


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered plug-in (see the module docstring for the fields)."""
    name: str
    obj: Any
    factory: bool = False
    fields: dict = dataclasses.field(default_factory=dict)
    validate: Optional[Callable] = None
    presets: dict = dataclasses.field(default_factory=dict)
    inputs: tuple = ()
    doc: str = ""
    vanishes_at_zero_advantage: bool = False


@dataclasses.dataclass(frozen=True)
class Kind:
    """A kind of plug-in: its registry, the config section its fields live in and the key that selects one."""
    name: str
    section: Optional[str] = None
    selector: Optional[str] = None


class Registry(MutableMapping):
    """Name -> Entry for one kind. As a mapping, name -> the registered object."""

    def __init__(self, kind: str, *, factory: bool = True, section: Optional[str] = None,
                 selector: Optional[str] = None):
        self.kind = kind
        self.info = Kind(kind, section, selector)
        self._default_factory = factory
        self._entries: dict[str, Entry] = {}

    # ---------------------------------------------------------------- registering

    def register(self, name: str, obj: Any = None, *, factory: Optional[bool] = None, fields: Optional[dict] = None,
                 validate: Optional[Callable] = None, presets: Optional[dict] = None, inputs=(),
                 replace: bool = False, vanishes_at_zero_advantage: bool = False):
        """Register `obj` under `name`; without `obj`, a decorator. factory=False (for factory kinds): `obj` is the
        thing itself, `get(name)` returns it and it takes no options."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        is_factory = self._default_factory if factory is None else factory
        fields = dict(fields or {})
        for field, default in fields.items():
            _check_default(self.kind, name, field, default)

        def add(fn):
            if name in self._entries and not replace:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            _check_shared_fields(self, name, fields)
            self._entries[name] = Entry(name, fn, is_factory, fields, validate, dict(presets or {}), tuple(inputs),
                                        inspect.getdoc(fn) or "", bool(vanishes_at_zero_advantage))
            _VALIDATED.clear()  # what is valid may have changed
            return fn

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)
        _VALIDATED.clear()  # a config that selected it is no longer valid

    # ---------------------------------------------------------------- looking up

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def entry(self, name: str) -> Entry:
        """The Entry of `name`; ValueError naming the known ones."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names()) or '(none)'}")
        return self._entries[name]

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def get(self, name: str, **options: Any) -> Any:
        """Factory kinds: build `name` with `options` (ValueError listing accepted options). Other kinds: the
        registered object (no options)."""
        entry = self.entry(name)
        if not entry.factory:
            if options:
                raise ValueError(f"{self.kind} {name!r}: bad options {sorted(options)}; accepted options: (none)")
            return entry.obj
        signature = inspect.signature(entry.obj)
        try:
            signature.bind(**options)
        except TypeError as e:
            accepted = list(signature.parameters)
            unknown = sorted(set(options) - set(accepted))
            raise ValueError(f"{self.kind} {name!r}: bad options {unknown or sorted(options)} ({e}); "
                             f"accepted options: {', '.join(accepted) or '(none)'}") from None
        return entry.obj(**options)

    # ---------------------------------------------------------------- mapping protocol

    def __getitem__(self, name: str) -> Any:
        return self._entries[name].obj

    def __setitem__(self, name: str, obj: Any) -> None:
        self.register(name, obj, factory=False, replace=True)

    def __delitem__(self, name: str) -> None:
        del self._entries[name]
        _VALIDATED.clear()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<{self.kind} registry: {', '.join(self.names())}>"


# ---------------------------------------------------------------------------------------- kinds and sections

_KINDS: dict[str, Registry] = {}
# section -> owner -> (fields, validate): core fields that belong to no single plug-in.
_CORE: dict[str, dict[str, tuple[dict, Optional[Callable]]]] = {}


def kind(name: str, *, factory: bool = False, section: Optional[str] = None,
         selector: Optional[str] = None) -> Registry:
    """The registry of kind `name`, created on first use (later calls must not change its section / selector)."""
    if name not in _KINDS:
        _KINDS[name] = Registry(name, factory=factory, section=section, selector=selector)
    registry = _KINDS[name]
    if (section, selector) != (None, None) and (registry.info.section, registry.info.selector) != (section, selector):
        raise ValueError(f"kind {name!r} is already defined with section {registry.info.section!r}, "
                         f"selector {registry.info.selector!r}")
    return registry


def kinds() -> list[Registry]:
    return [_KINDS[k] for k in sorted(_KINDS)]


def declare_fields(section: str, owner: str, fields: dict, validate: Optional[Callable] = None) -> None:
    """Core fields of `section` owned by `owner` (a module name), validated by `validate(section_cfg)` always."""
    for field, default in fields.items():
        _check_default(owner, section, field, default)
    _CORE.setdefault(section, {})[owner] = (dict(fields), validate)
    _VALIDATED.clear()


def section_fields(section: str) -> dict:
    """Every field of `section`, core ones first, then each registered plug-in's, with their defaults."""
    out: dict = {}
    for owner, (fields, _) in _CORE.get(section, {}).items():
        _merge(out, fields, f"{owner}", section)
    for registry in kinds():
        if registry.info.section != section:
            continue
        for entry in registry.entries():
            _merge(out, entry.fields, f"{registry.kind} {entry.name!r}", section)
    return out


def core_validators(section: str) -> list[tuple[dict, Optional[Callable]]]:
    return list(_CORE.get(section, {}).values())


def selected(section: str, section_cfg) -> list[Entry]:
    """The entries the section's config selects (one per kind whose selector lives in `section`)."""
    out = []
    for registry in kinds():
        if registry.info.section == section and registry.info.selector:
            value = _field(section_cfg, section, registry.info.selector)
            if not isinstance(value, str) or value not in registry:
                valid = ", ".join(repr(n) for n in registry.names())
                raise ValueError(f"unknown {section}.{registry.info.selector} {value!r}; valid: {valid}")
            out.append(registry.entry(value))
    return out


def check_types(section: str, section_cfg, fields: dict) -> None:
    """Each field of `fields` is present in `section_cfg` with the type of its default."""
    for field, default in fields.items():
        _check_value(section, field, _field(section_cfg, section, field), default)


# ---------------------------------------------------------------------------------------- helpers

_TYPES = (bool, int, float, str, tuple)


def _check_default(owner, where, field, default) -> None:
    if not isinstance(field, str) or not field.isidentifier():
        raise ValueError(f"{owner} {where!r}: config field names must be identifiers, got {field!r}")
    if not isinstance(default, _TYPES):
        raise ValueError(f"{owner} {where!r}: field {field!r} needs a default of type bool, int, float, str or "
                         f"tuple, got {default!r}")


def _merge(out: dict, fields: dict, owner: str, section: str) -> None:
    for field, default in fields.items():
        if field in out and (type(out[field]), out[field]) != (type(default), default):
            raise ValueError(f"{owner} declares {section}.{field} = {default!r}, but it is already declared with "
                             f"default {out[field]!r}")
        out[field] = default


def _check_shared_fields(registry: Registry, name: str, fields: dict) -> None:
    if registry.info.section is None:
        return
    others = {f: d for r in kinds() if r.info.section == registry.info.section
              for e in r.entries() if e.name != name or r is not registry for f, d in e.fields.items()}
    for owner_fields, _ in _CORE.get(registry.info.section, {}).values():
        others.update(owner_fields)
    for field, default in fields.items():
        if field in others and (type(others[field]), others[field]) != (type(default), default):
            raise ValueError(f"{registry.kind} {name!r} declares {registry.info.section}.{field} = {default!r}, "
                             f"but it is already declared with default {others[field]!r}")


def _field(section_cfg, section: str, field: str):
    try:
        return section_cfg[field]
    except (KeyError, AttributeError, TypeError):
        raise ValueError(f"{section} config has no field {field!r} (every experiment file starts from "
                         "base_config())") from None


def _check_value(section: str, field: str, value, default) -> None:
    path = f"{section}.{field}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{path} must be True or False, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{path} must be an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            raise ValueError(f"{path} must be a finite number, got {value!r}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{path} must be a string, got {value!r}")
    elif isinstance(default, tuple):
        if not isinstance(value, (tuple, list)):
            raise ValueError(f"{path} must be a sequence, got {value!r}")


# ---------------------------------------------------------------------------------------- validating a section

_VALIDATED: dict = {}  # (section, contents) of sections `validate_section` accepted, oldest first
_MAX_VALIDATED = 256


def validate_section(section: str, section_cfg) -> None:
    """Check `section_cfg` against what is declared for `section`: the core fields' types and validators, then, for
    each kind whose selector lives in the section, the selected entry's field types and its `validate`. Raises
    ValueError with one message naming the first bad field and value. Remembers the contents it accepted, so
    `ensure_valid` on the same contents does not check again."""
    for fields, validate in core_validators(section):
        check_types(section, section_cfg, fields)
        if validate is not None:
            validate(section_cfg)
    for entry in selected(section, section_cfg):
        check_types(section, section_cfg, entry.fields)
        if entry.validate is not None:
            entry.validate(section_cfg)
    key = (section, _contents(section_cfg))
    _VALIDATED[key] = None
    while len(_VALIDATED) > _MAX_VALIDATED:
        _VALIDATED.pop(next(iter(_VALIDATED)))


def ensure_valid(section: str, section_cfg) -> None:
    """`validate_section` unless these exact contents were validated already (by the run's one validation, before
    anything is traced): functions that take a config section call this, so a run validates once and a direct
    call with a bad value still raises."""
    if (section, _contents(section_cfg)) not in _VALIDATED:
        validate_section(section, section_cfg)


def _contents(section_cfg) -> str:
    plain = section_cfg.to_dict() if hasattr(section_cfg, "to_dict") else dict(section_cfg)
    return json.dumps(plain, sort_keys=True, default=repr)
