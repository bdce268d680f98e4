"""The population's host-side random stream (selection and mutation draws) and its JSON-able state.

    rng = population_rng(config.seed)         # numpy Generator (PCG64), its own stream of the run's seed
    state = rng_state(rng)                    # a dict of str / int: json.dumps-able, e.g. into a checkpoint's meta
    rng = rng_from_state(state)               # the same future draws as the generator `state` was taken from

Every draw of an evolution comes from this one generator, in a fixed order (selection, then each member's
mutation in member order), so a run that saves the state with the population and restores it resumes exactly.
PCG64's 128-bit state and increment are written as decimal strings: JSON numbers that large are not exact in every
reader.
"""

from __future__ import annotations

import numpy as np

# Mixed into the seed so this stream differs from every other stream derived from the run's seed.
POPULATION_STREAM = 0x504F50  # "POP"
_BIT_GENERATOR = "PCG64"


def population_rng(seed: int, *stream: int) -> np.random.Generator:
    """The generator of the population's draws for run seed `seed` (any Python int; negative ones are taken
    modulo 2**64); extra `stream` integers derive independent sub-streams (e.g. init's per-hyperparameter grids)."""
    words = [int(seed) % 2**64, POPULATION_STREAM, *(int(s) % 2**64 for s in stream)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def rng_state(rng: np.random.Generator) -> dict:
    """The generator's state as a JSON-able dict (PCG64 only: the generator `population_rng` makes)."""
    state = rng.bit_generator.state
    if state["bit_generator"] != _BIT_GENERATOR:
        raise ValueError(f"population RNG state: expected a {_BIT_GENERATOR} generator, got {state['bit_generator']}")
    return {"bit_generator": _BIT_GENERATOR, "state": str(state["state"]["state"]),
            "inc": str(state["state"]["inc"]), "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"])}


def rng_from_state(state: dict) -> np.random.Generator:
    """The generator `rng_state` described: its next draws are the ones the saved generator would have made."""
    if not isinstance(state, dict) or state.get("bit_generator") != _BIT_GENERATOR:
        raise ValueError(f"population RNG state must be a {_BIT_GENERATOR} state dict from rng_state, got {state!r}")
    bit_generator = np.random.PCG64()
    bit_generator.state = {"bit_generator": _BIT_GENERATOR,
                           "state": {"state": int(state["state"]), "inc": int(state["inc"])},
                           "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}
    return np.random.Generator(bit_generator)
