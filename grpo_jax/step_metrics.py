"""Metrics of the train step, each carrying how it combines over micro-batches and over the mu iterations.

`Metrics` is a dict name -> scalar array with a static `reductions` table name -> (over micro-batches,
over iterations). It is a JAX pytree whose reductions are static auxiliary data, so it passes through `jax.grad`
(has_aux), `lax.scan`, `jax.jit` and `jax.device_get` with its reductions intact: whoever computes a metric
declares its reduction, and the train step and the runner need no table of names.

    m = Metrics()
    m.add("ratio/max", jnp.max(r), "max")       # "sum" | "mean" | "max" | "min"
    m.add("gap/max", x, "max", iterations="first")

Reductions (micro-batches, iterations):
  sum   a local sum over a global denominator (the loss terms): summed over micro-batches, averaged over iterations
  mean  a micro-batch mean: averaged over micro-batches (equal-sized) and over iterations
  max   / min: the max / min over both
Over iterations the default follows the micro-batch rule ("sum" and "mean" average); `iterations="first"` keeps the
first iteration's value (e.g. the sampler-vs-trainer gap, defined before any update).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

REDUCTIONS = ("sum", "mean", "max", "min")
ITERATION_REDUCTIONS = ("mean", "max", "min", "first")
_ITERATION_DEFAULT = {"sum": "mean", "mean": "mean", "max": "max", "min": "min"}


class Metrics(dict):
    """name -> scalar array, plus `reductions`: name -> (micro-batch reduction, iteration reduction)."""

    def __init__(self, values: Optional[dict] = None):
        super().__init__()
        self.reductions: dict = {}
        if values:
            self.update_from(values)

    def add(self, name: str, value, reduction: str = "sum", iterations: Optional[str] = None) -> "Metrics":
        if reduction not in REDUCTIONS:
            raise ValueError(f"metric {name!r}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        iterations = iterations or _ITERATION_DEFAULT[reduction]
        if iterations not in ITERATION_REDUCTIONS:
            raise ValueError(f"metric {name!r}: iteration reduction must be one of {ITERATION_REDUCTIONS}, "
                             f"got {iterations!r}")
        self[name] = value
        self.reductions[name] = (reduction, iterations)
        return self

    def update_from(self, other: dict) -> "Metrics":
        """Add every metric of `other` (a Metrics keeps its reductions; a plain dict's entries are 'sum')."""
        for name, value in other.items():
            self.add(name, value, *getattr(other, "reductions", {}).get(name, ("sum", "mean")))
        return self

    def reduction(self, name: str) -> tuple:
        return self.reductions.get(name, ("sum", "mean"))

    def __repr__(self) -> str:
        return f"Metrics({dict(self)!r}, reductions={self.reductions!r})"


def _flatten(m: Metrics):
    names = tuple(sorted(m))
    return [m[n] for n in names], (names, tuple(m.reduction(n) for n in names))


def _unflatten(aux, values) -> Metrics:
    names, reductions = aux
    out = Metrics()
    for name, reduction, value in zip(names, reductions, values):
        dict.__setitem__(out, name, value)
        out.reductions[name] = reduction
    return out


jax.tree_util.register_pytree_node(Metrics, _flatten, _unflatten)


def as_metrics(m: dict) -> Metrics:
    return m if isinstance(m, Metrics) else Metrics().update_from(m)


def combine_micro_batches(total: dict, new: dict) -> Metrics:
    """Combine the metrics of two micro-batches of one step (jit-friendly). For 'mean' metrics `total` holds the
    running sum; `finish_micro_batches` divides by the count."""
    total, new = as_metrics(total), as_metrics(new)
    out = Metrics()
    for name in total:
        rule = total.reduction(name)
        op = {"sum": jnp.add, "mean": jnp.add, "max": jnp.maximum, "min": jnp.minimum}[rule[0]]
        out.add(name, op(total[name], new[name]), *rule)
    return out


def finish_micro_batches(total: dict, count: int) -> Metrics:
    """Divide the 'mean' metrics' running sums by the number of micro-batches."""
    total = as_metrics(total)
    out = Metrics()
    for name in total:
        rule = total.reduction(name)
        out.add(name, total[name] / count if rule[0] == "mean" else total[name], *rule)
    return out


def identity(like: dict) -> Metrics:
    """The neutral element of `combine_micro_batches` for metrics shaped like `like` (a Metrics of shapes)."""
    like = as_metrics(like)
    out = Metrics()
    for name in like:
        rule = like.reduction(name)
        fill = {"sum": 0.0, "mean": 0.0, "max": -jnp.inf, "min": jnp.inf}[rule[0]]
        out.add(name, jnp.full(like[name].shape, fill, like[name].dtype), *rule)
    return out


def reduce_iterations(per_iteration: dict) -> Metrics:
    """Metrics stacked over the mu iterations ([mu] arrays) -> one value each, by their iteration reduction."""
    per_iteration = as_metrics(per_iteration)
    out = Metrics()
    for name, value in per_iteration.items():
        rule = per_iteration.reduction(name)
        reduce = {"mean": jnp.mean, "max": jnp.max, "min": jnp.min, "first": lambda v: v[0]}[rule[1]]
        out.add(name, reduce(value), *rule)
    return out
