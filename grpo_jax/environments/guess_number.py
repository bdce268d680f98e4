"""Environment 'guess_number': guess a secret integer; each wrong guess is answered 'higher' or 'lower'.

In the spirit of AgileRL's GuessTheNumber. The secret is `example['secret']` when the example has one (an int),
else a draw in [guess_min, guess_max] seeded by the example's identity (its 'id', else its prompt), so every row
of a group, and every rerun, plays the same game. A turn's guess is the last integer in it. The observation, in
the user role by default, is 'higher' (the secret is higher than the guess), 'lower', or 'correct' (done); the
episode also ends after `environment.max_turns` guesses. A turn without a number is answered with a reminder
and counts as a guess.

info (each observation): solved (bool), guesses (int); `solved` is also an attribute, for a reward column.
stats (per episode): turns, invalid_guesses, solved (0 / 1).
"""

from __future__ import annotations

import hashlib
import re

from grpo_jax.environments.base import Environment, Observation, register

_NUMBER = re.compile(r"-?\d{1,18}")
SCAN_CHARS = 256  # a guess is looked for in the last SCAN_CHARS characters of the turn


def _validate(section) -> None:
    if section["guess_min"] > section["guess_max"]:
        raise ValueError(f"environment.guess_min ({section['guess_min']}) must be <= environment.guess_max "
                         f"({section['guess_max']})")


def secret_for(example: dict, low: int, high: int) -> int:
    """example['secret'], or a draw in [low, high] determined by the example's identity alone."""
    secret = example.get("secret")
    if isinstance(secret, int) and not isinstance(secret, bool):
        return secret
    identity = str(example.get("id", example.get("prompt", "")))
    digest = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big")
    return low + digest % (high - low + 1)


@register("guess_number", fields={"guess_min": 1, "guess_max": 100}, validate=_validate)
class GuessNumber(Environment):
    observation_role = "user"

    def __init__(self, config=None):
        super().__init__(config)
        self.low, self.high = int(self.config["guess_min"]), int(self.config["guess_max"])
        self.reset({})

    def reset(self, example: dict) -> None:
        self.secret = secret_for(example, self.low, self.high)
        self.solved = False
        self.stats = {"turns": 0, "invalid_guesses": 0, "solved": 0}

    def step(self, turn: str) -> Observation:
        self.stats["turns"] += 1
        out_of_turns = self.stats["turns"] >= int(self.config["max_turns"])
        numbers = _NUMBER.findall(turn[-SCAN_CHARS:]) if isinstance(turn, str) else []
        if not numbers:
            self.stats["invalid_guesses"] += 1
            text = f"Guess an integer between {self.low} and {self.high}."
        else:
            guess = int(numbers[-1])
            self.solved = guess == self.secret
            text = "correct" if self.solved else ("higher" if self.secret > guess else "lower")
        self.stats["solved"] = int(self.solved)
        return Observation(text, done=self.solved or out_of_turns,
                           info={"solved": self.solved, "guesses": self.stats["turns"]})
