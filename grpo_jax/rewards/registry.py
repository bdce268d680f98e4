"""Look things up by name: a config says `rewards = {"format": 0.5, "countdown": 1.0}` or `task.name = "gsm8k"`.

Every entry is a factory `factory(**options) -> thing` whose options all have defaults, so `get(name)` works bare and
`get(name, **options)` configures it (e.g. `get("overlong", max_length=512)`). The rewards and tasks packages each
hold one `Registry`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable


class Registry:
    """Name -> factory. `kind` ("reward", "task") only appears in error messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, *, factory: bool = True) -> Callable[[Callable], Callable]:
        """Decorator registering `fn` under `name`. With factory=False, `fn` is the thing itself (takes no options)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def decorator(fn: Callable) -> Callable:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = fn if factory else (lambda: fn)
            return fn

        return decorator

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._factories)

    def get(self, name: str, **options: Any) -> Any:
        """Build the entry `name` with `options`; a ValueError names the known entries or accepted options."""
        if name not in self._factories:
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}")
        factory = self._factories[name]
        signature = inspect.signature(factory)
        try:
            signature.bind(**options)
        except TypeError as e:
            accepted = list(signature.parameters)
            unknown = sorted(set(options) - set(accepted))
            raise ValueError(
                f"{self.kind} {name!r}: bad options {unknown or sorted(options)} ({e}); "
                f"accepted options: {', '.join(accepted) or '(none)'}"
            ) from None
        return factory(**options)


REWARDS = Registry("reward")
