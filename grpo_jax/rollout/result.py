"""What a rollout engine returns: `Rollout`, the completions of all rows with their exact log-probs.

Rows are p-major (row = p * G + g; with population members, member-major before that); T = settings.max_new_tokens
columns. Invariants: mask[r, t] = 1 exactly for t < lengths[r]; tokens and logps are pad_id and 0 where mask is 0;
truncated[r] iff the row reached T tokens without a stop token (multi-turn: its episode ran out of budget before
it ended). action_mask[r, t] = 1 where the policy sampled token t, 0 on tokens inserted into the sequence
(a multi-turn episode's observations) and where mask is 0, so action_mask <= mask; single-turn, action_mask ==
mask. logps are 0 where action_mask is 0. Losses, KL, entropy, their denominators and length metrics use
action_mask.
"""

from __future__ import annotations

from typing import NamedTuple

import jax


class Rollout(NamedTuple):
    tokens: jax.Array     # int32 [N, T] completion tokens (T = max_new_tokens), pad_id after the end
    mask: jax.Array       # float32 [N, T] 1.0 on generated tokens up to and including the stop token
    logps: jax.Array      # float32 [N, T] log p under softmax(logits / temperature), 0 where mask is 0
    lengths: jax.Array    # int32 [N] generated tokens per row (stop token included)
    truncated: jax.Array  # bool [N] reached max_new_tokens without a stop token
    action_mask: jax.Array  # float32 [N, T] 1.0 on tokens the policy sampled, 0.0 on inserted (observation) tokens
