"""Completions of task examples, their scores, and the held-out evaluation.

`Sampler` turns task examples into completions: chat template + assistant prefill -> left-padded tokens -> a
rollout engine (`grpo_jax.rollout`, chosen by `rollout.engine`; the jitted group sampler by default) -> decoded text
of the rows this process holds. The runner samples its training groups with it, and `evaluate` runs it over the
WHOLE held-out set in batches:

  eval/accuracy     greedy decoding, fraction of problems the task's accuracy reward marks solved (reward 1.0)
  eval/pass@k       k = eval.pass_k: n = eval.num_samples samples per problem at eval.temperature, and the
                    unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code",
                    eq. 1): pass@k = E[1 - C(n - c, k) / C(n, k)], c = correct samples of a problem
  eval/mean_reward  mean of the config's weighted reward over the greedy completions
  eval/mean_length  mean greedy completion length in tokens (episodes: the model's tokens)
  eval/mean_length_correct  the same over the correct completions only (0 when none is correct)
  eval/<name>       each of the task's own `eval_metrics` (name -> fn(completion text, example) -> float),
                    averaged over the greedy completions: e.g. format_rate / answer_rate for the tasks whose prompt
                    asks for the R1 `<think>...</think> <answer>...</answer>` format, intermediate_rate for
                    multi-step arithmetic (grpo_jax/tasks/eval_metrics.py)

With `environment.name` set (a multi-turn run; grpo_jax/environments), the sampler plays episodes instead
(`rollout.multiturn.generate_episodes`; see `Sampler`), and the eval adds

  eval/tool_call_rate     share of the greedy episodes with at least one tool call (the environments' `calls` stat)
  eval/calls_mean         tool calls per greedy episode
  eval/parse_rate         share of those calls that parse (1 - the environments' `parse_errors` / calls; 1.0
                          without calls)
  eval/correct_with_call  share of the correct greedy episodes that made at least one tool call (0 when none is
                          correct)

Multi-host: every process builds the same (small) prompt batch, the sampler splits its rows over the mesh, each
process decodes and scores only the rows it holds, and the per-row scores are gathered (`distributed`). Multi-turn
episodes run in one process (a multi-process run with an environment is refused).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from grpo_jax import batching, distributed, environments, rollout
from grpo_jax.rollout import multiturn
from grpo_jax.tasks import reward_columns


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1 and its numerically stable
    product form): 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def stop_ids(model_config, tokenizer) -> tuple[int, ...]:
    """The model's eos ids plus the tokenizer's eos token (chat models end a turn with it)."""
    ids = list(model_config.eos_token_ids)
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int) and eos not in ids:
        ids.append(eos)
    return tuple(ids)


def pad_id(model_config, tokenizer) -> int:
    for candidate in (model_config.pad_token_id, getattr(tokenizer, "pad_token_id", None),
                      *model_config.eos_token_ids):
        if isinstance(candidate, int) and candidate >= 0:
            return candidate
    return 0


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
                 + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    chars, extra = dict(zip(printable, printable)), 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = 256 + extra, extra + 1
    return {b: chr(c) for b, c in chars.items()}


BYTE_CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                      "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def byte_tokenizer(model_config):
    """A byte-level tokenizer (token id = UTF-8 byte value) with a plain chat template, for checkpoints that come
    without tokenizer files, such as tiny random test checkpoints (`model.tokenizer = 'bytes'`). The model's
    pad / bos / eos ids below 256 double as those special tokens; ids >= 256 decode to nothing."""
    from tokenizers import Regex, Tokenizer, decoders, models as tok_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if model_config.vocab_size < 256:
        raise ValueError(f"model.tokenizer 'bytes' needs a vocabulary of >= 256 tokens (one per byte), the model "
                         f"has {model_config.vocab_size}; give a tokenizer dir with --config.model.tokenizer=PATH")
    chars = _bytes_to_unicode()
    tok = Tokenizer(tok_models.WordLevel({chars[b]: b for b in range(256)}, unk_token=chars[0]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                                                 pre_tokenizers.Split(Regex("."), behavior="isolated")])
    tok.decoder = decoders.ByteLevel()
    special = {}
    for name, token_id in (("pad_token", model_config.pad_token_id), ("bos_token", model_config.bos_token_id),
                           ("eos_token", (model_config.eos_token_ids or (None,))[0])):
        if isinstance(token_id, int) and 0 <= token_id < 256:
            special[name] = chars[token_id]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    fast.chat_template = BYTE_CHAT_TEMPLATE
    return fast


@dataclasses.dataclass
class Completions:
    """The completions of the rows this process holds: global rows [start, start + len(texts)).

    Multi-turn (the sampler has an environment): texts are whole episodes (model turns and observations, as the
    rewards see them, TRL's convention); lengths count the model's tokens only (action_mask), sequence_lengths
    every token of the episode (what the train step's columns must hold); observations: each row's inserted
    texts (chat-template pieces included), in order; marked: each row's episode text, after its prompt's assistant
    prefill, with every observation between OBSERVATION_OPEN and OBSERVATION_CLOSE (for reading, never for
    rewards); calls / parse_errors: each row's tool calls and malformed calls (its environment's `calls` /
    `parse_errors` stats, 0 when it has none); episodes: the batch's `multiturn.EpisodeStats`. Single-turn: all of
    these are None."""
    start: int
    texts: list[str]
    lengths: np.ndarray     # int [n] tokens generated (stop token included)
    truncated: np.ndarray   # bool [n]
    sequence_lengths: np.ndarray | None = None
    observations: list | None = None
    calls: np.ndarray | None = None
    episodes: multiturn.EpisodeStats | None = None
    marked: list | None = None
    parse_errors: np.ndarray | None = None

    @property
    def columns(self) -> int:
        """Completion columns the train step needs at least: the longest row's tokens (episodes: observations
        included)."""
        lengths = self.lengths if self.sequence_lengths is None else self.sequence_lengths
        return int(np.max(lengths)) if len(lengths) else 0


# How a marked episode (`Completions.marked`) sets an inserted observation apart from the model's text.
OBSERVATION_OPEN, OBSERVATION_CLOSE = "⟦", "⟧"

# The observation piece of a chat template is found by rendering a conversation with these two sentinels.
_TURN_SENTINEL, _OBSERVATION_SENTINEL = "TURN7e1c9", "OBSERVATION7e1c9"


def role_pieces(tokenizer, role: str) -> tuple[str, str]:
    """(prefix, suffix) texts that insert an observation as a chat turn in `role` ('tool' / 'user') after a model
    turn: the tokenizer's chat template rendered for [user, assistant turn, `role` message] with the generation
    prompt, and the text between the assistant turn and the message (it closes the assistant turn and opens the
    role's) and after the message (it closes it and reopens an assistant turn) taken. A tokenizer without a chat
    template, or one that cannot render the role, gets plain text pieces: ('\\n<role>: ', '\\n')."""
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": _TURN_SENTINEL},
                {"role": role, "content": _OBSERVATION_SENTINEL}]
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception:  # noqa: BLE001  (no template, or one that refuses the role)
        text = None
    if isinstance(text, str) and text.count(_TURN_SENTINEL) == 1 and text.count(_OBSERVATION_SENTINEL) == 1:
        after = text.split(_TURN_SENTINEL, 1)[1]
        if _OBSERVATION_SENTINEL in after:
            prefix, suffix = after.split(_OBSERVATION_SENTINEL, 1)
            return prefix, suffix
    return f"\n<{role}>: ", "\n"


def turn_codec(tokenizer, env) -> multiturn.TurnCodec:
    """The codec of `tokenizer` for environments like `env`: its stop strings, and the pieces of its observation
    role when that is a chat role (`role_pieces`)."""
    role = getattr(env, "role", "inline")
    roles = {} if role == "inline" else {role: role_pieces(tokenizer, role)}
    return multiturn.TurnCodec.from_tokenizer(tokenizer, tuple(env.stop), roles=roles)


def episode_metrics(stats: multiturn.EpisodeStats) -> dict:
    """The env/* metrics of one batch of episodes (all rows):

      env/turns_mean          model turns per episode
      env/tool_calls          tool calls in the batch (the environments' `calls` stat, summed)
      env/tool_errors         calls that parsed but failed (`tool_errors`, summed)
      env/parse_rate          share of the calls that parse (1 - parse_errors / calls; 1.0 without calls)
      env/faults/<kind>       steps that raised / timed out / returned oversize text (`environments.FAULTS`)
      env/observation_tokens  tokens inserted (observations, chat-template pieces included)
      env/observations_cut    observations cut to environment.max_observation_tokens
      env/budget_cut          episodes ended by an observation that did not fit in rollout.max_new_tokens
      env/time                wall seconds of the environments' steps
      env/stats/<name>        every other counter of the environments' `stats`, mean per episode"""
    calls = float(stats.tool_calls)
    row = {"env/turns_mean": float(np.mean(stats.turns)) if len(stats.turns) else 0.0,
           "env/tool_calls": calls, "env/tool_errors": float(stats.tool_errors),
           "env/parse_rate": 1.0 - float(stats.parse_errors) / calls if calls else 1.0}
    row.update({f"env/faults/{kind}": int(stats.faults.get(kind, 0)) for kind in environments.FAULTS})
    row.update({"env/observation_tokens": int(stats.observation_tokens),
                "env/observations_cut": int(stats.observations_cut), "env/budget_cut": int(stats.budget_cut),
                "env/time": float(stats.environment_seconds)})
    episodes = max(len(stats.turns), 1)
    for name, value in stats.env_stats.items():
        if name not in ("calls", "tool_errors", "parse_errors", "turns"):
            row[f"env/stats/{name}"] = float(value) / episodes
    return row


class Sampler:
    """Examples -> completions with one model, tokenizer, mesh and rollout engine. Prompt tokens are cached by
    example id.

    environment: the run's `environment` config section when its name is set (None or name '' = single-turn):
    then every `sample` call plays episodes with `multiturn.generate_episodes` instead of the engine: one
    environment per row (`environments.make(environment)`, reset with the row's example, so the G rows of a
    group play the same example), the codec of `turn_codec` (the environment's stop strings; chat-template pieces
    for the 'tool' / 'user' observation roles), environment.max_turns / max_turn_tokens / max_observation_tokens /
    timeout_s; rollout.max_new_tokens bounds each whole episode; a mesh of several devices splits the rows as the
    engine does; rollout.max_decode_rows (> 0) plays the groups in waves of at most that many rows (at least one
    group). rollout.engine does not apply to episodes; one process, one policy.

    settings: the run's `rollout.Settings` (`Settings.from_config(config.rollout)`), the base of every `sample`
    call; the tokenizer's stop and pad ids are filled in here and its engine is the one used. Without settings,
    `engine` (a name registered in `grpo_jax.rollout`, or an engine object) and `max_decode_rows`
    (`rollout.max_decode_rows`: rows the engine decodes at once, refilling finished ones; 0 = all rows) apply and
    each `sample` call names group_size and max_new_tokens."""

    def __init__(self, model_config, tokenizer, mesh, *, bucket: int = 16, engine=None, max_decode_rows: int = 0,
                 settings: rollout.Settings | None = None, environment=None):
        if tokenizer is None:
            raise ValueError("the model has no tokenizer (a checkpoint dir without tokenizer files); training "
                             "needs one to build prompts and read completions")
        self.model_config, self.tokenizer, self.mesh, self.bucket = model_config, tokenizer, mesh, bucket
        self.stop_ids = stop_ids(model_config, tokenizer)
        self.pad_id = pad_id(model_config, tokenizer)
        if settings is not None:
            self.settings = settings.replace(stop_ids=self.stop_ids, pad_id=self.pad_id)
            self._defaults = None
        else:
            self.settings = None
            self._defaults = dict(stop_ids=self.stop_ids, pad_id=self.pad_id, max_decode_rows=int(max_decode_rows),
                                  engine=engine if isinstance(engine, str) else "jitted")
        if engine is None:
            engine = settings.engine if settings is not None else "jitted"
        self.engine = rollout.make(engine, model_config, mesh) if isinstance(engine, str) else engine
        self._cache: dict[str, list[int]] = {}
        self.environment = environment if environment is not None and environment["name"] else None
        self.codec = None
        if self.environment is not None:
            if jax.process_count() > 1:
                raise ValueError("environment.name is set: multi-turn episodes run in one process; this run has "
                                 f"{jax.process_count()}")
            self.codec = turn_codec(tokenizer, environments.make(self.environment))

    def settings_for(self, **changes) -> rollout.Settings:
        """The base settings with `changes` (Settings fields)."""
        if self.settings is not None:
            return self.settings.replace(**changes)
        return rollout.Settings(**{**self._defaults, **changes})

    def prompt_text(self, example: dict) -> str:
        text = self.tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False)
        return text + (example.get("prefill") or "")

    def prompt_tokens(self, example: dict) -> list[int]:
        key = repr((example.get("id") or example["prompt"], example.get("prefill")))  # a problem, with its prefill
        if key not in self._cache:
            self._cache[key] = list(self.tokenizer(self.prompt_text(example), add_special_tokens=False)["input_ids"])
        return self._cache[key]

    def encode(self, examples: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded prompt tokens int32 [P, S] and mask bool [P, S] of the examples."""
        return batching.left_pad([self.prompt_tokens(e) for e in examples], self.pad_id, self.bucket)

    def sample(self, params, examples: Sequence[dict], key, settings: rollout.Settings | None = None, **changes):
        """((prompt tokens, mask), rollout of all P * G rows as global arrays, Completions of this process's rows).
        settings: the whole settings of this call (default: the sampler's, `settings_for`), `changes` applied."""
        tokens, mask = self.encode(examples)
        settings = self.settings_for(**changes) if settings is None else settings.replace(**changes)
        if self.environment is not None:
            out, completions = self.episodes(params, examples, tokens, mask, key, settings)
            return (tokens, mask), out, completions
        out = self.engine.generate(params, tokens, mask, key, settings)
        return (tokens, mask), out, self.completions(out)

    def episodes(self, params, examples: Sequence[dict], tokens, mask, key, settings: rollout.Settings, *,
                 keep_cache: bool = True):
        """(Rollout with action_mask, Completions of whole episodes) of the examples' P * G rows (see the class
        docstring); keep_cache: `multiturn.generate_episodes`' (False: each row's history, prompt included, re-run
        at every turn boundary: the same episodes computed the long way)."""
        section = self.environment
        longest = int(np.asarray(mask).sum(axis=1).max())
        if longest + settings.max_new_tokens > self.model_config.max_position_embeddings:
            raise ValueError(f"a prompt has {longest} tokens; with max_new_tokens={settings.max_new_tokens} that is "
                             f"{longest + settings.max_new_tokens} positions, more than the model's context of "
                             f"{self.model_config.max_position_embeddings}")
        envs = []
        for example in examples:
            for _ in range(settings.group_size):
                env = environments.make(section)
                env.reset(example)
                envs.append(env)
        prefixes = [example.get("prefill") or "" for example in examples for _ in range(settings.group_size)]
        out, stats = multiturn.generate_episodes(
            self.model_config, params, tokens, mask, key, settings, envs, self.codec,
            max_turns=int(section["max_turns"]), max_turn_tokens=int(section["max_turn_tokens"]),
            max_observation_tokens=int(section["max_observation_tokens"]), timeout_s=float(section["timeout_s"]),
            max_chars=environments.max_observation_chars(section), keep_cache=keep_cache, turn_prefixes=prefixes,
            mesh=self.mesh if self.mesh is not None and self.mesh.size > 1 else None)
        seq, action, lengths, truncated = jax.device_get((out.tokens, out.action_mask, out.lengths, out.truncated))
        texts, observations, marked = [], [], []
        for prefix, row, act, n in zip(prefixes, np.asarray(seq), np.asarray(action) > 0, np.asarray(lengths)):
            texts.append(self.tokenizer.decode(row[:n].tolist(), skip_special_tokens=True))
            decoded = [(self.tokenizer.decode(row[a:b].tolist(), skip_special_tokens=True), model)
                       for a, b, model in _segments(act[:n])]
            observations.append([text for text, model in decoded if not model])
            marked.append(prefix + "".join(text if model else OBSERVATION_OPEN + text + OBSERVATION_CLOSE
                                           for text, model in decoded))
        calls, parse_errors = (np.asarray([float(getattr(env, "stats", {}).get(name, 0)) for env in envs], np.float32)
                               for name in ("calls", "parse_errors"))
        model_tokens = np.asarray(action).sum(axis=1).round().astype(np.int64)
        completions = Completions(0, texts, model_tokens, np.asarray(truncated), sequence_lengths=np.asarray(lengths),
                                  observations=observations, calls=calls, episodes=stats, marked=marked,
                                  parse_errors=parse_errors)
        return out, completions

    def completions(self, out) -> Completions:
        """The decoded completions of the rows of the rollout `out` that this process holds."""
        start, local_tokens = distributed.local_part(out.tokens)
        _, lengths = distributed.local_part(out.lengths)
        _, truncated = distributed.local_part(out.truncated)
        texts = [self.tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
                 for row, n in zip(local_tokens, lengths)]
        return Completions(start, texts, np.asarray(lengths), np.asarray(truncated))


def _segments(flags: np.ndarray) -> list[tuple[int, int, bool]]:
    """(start, end, value) of each run of equal values in a 1-D bool array, in order."""
    if not len(flags):
        return []
    cuts = (np.flatnonzero(flags[1:] != flags[:-1]) + 1).tolist()
    bounds = [0, *cuts, len(flags)]
    return [(a, b, bool(flags[a])) for a, b in zip(bounds[:-1], bounds[1:])]


def score(reward_fn: Callable, examples: Sequence[dict], completions: Completions, group_size: int):
    """Rewards of this process's rows: (total [n], {name: [n]}, {name: errors}); rows are p-major."""
    if completions.start % group_size or len(completions.texts) % group_size:
        raise ValueError(f"rows [{completions.start}, +{len(completions.texts)}) do not hold whole groups of "
                         f"{group_size}; the batch must divide over the mesh")
    first = completions.start // group_size
    local = examples[first: first + len(completions.texts) // group_size]
    columns = reward_columns(list(local), repeat=group_size)
    columns["completion_lengths"] = [int(n) for n in completions.lengths]
    if completions.observations is not None:  # episodes: each row's inserted texts, for rewards that skip them
        columns["observations"] = [list(o) for o in completions.observations]
    return reward_fn(completions.texts, **columns)


# ------------------------------------------------------------------------------------------------ evaluation

# The evaluator's own metrics (eval/<name>); a task's eval_metrics may not reuse these names.
BUILTIN_METRICS = ("accuracy", "mean_reward", "mean_length", "mean_length_correct", "num_examples",
                   "tool_call_rate", "calls_mean", "parse_rate", "correct_with_call")


@dataclasses.dataclass
class EvalResult:
    metrics: dict
    samples: list[dict]   # the first few problems: prompt, greedy completion, reward, correct


def _batches(n: int, size: int):
    for lo in range(0, n, size):
        yield lo, min(lo + size, n)


def tool_metrics(calls, malformed, correct) -> dict:
    """The eval's tool-use metrics (module docstring) from the greedy episodes' calls [E], malformed calls [E]
    (the environments' parse_errors) and whether each is correct [E]."""
    calls, malformed, correct = (np.asarray(x) for x in (calls, malformed, correct))
    correct = correct.astype(bool)
    solved = correct & (calls > 0)
    return {"eval/tool_call_rate": float((calls > 0).mean()),
            "eval/calls_mean": float(calls.mean()),
            "eval/parse_rate": float(1.0 - malformed.sum() / calls.sum()) if calls.sum() else 1.0,
            "eval/correct_with_call": float(solved.sum() / correct.sum()) if correct.any() else 0.0}


def evaluate(sampler: Sampler, params, examples: Sequence[dict], key, *, reward_fn: Callable, accuracy_fn: Callable,
             config, num_samples_shown: int = 4, eval_metrics: Mapping[str, Callable[[str, dict], float]] = None
             ) -> EvalResult:
    """Greedy accuracy, pass@k, mean reward and the task's own metrics over every example of `examples`.

    reward_fn: the config's combined reward; accuracy_fn: the task's accuracy reward, combined alone
    (`rewards.combine({task.accuracy_reward: 1.0})`): 1.0 means solved. eval_metrics: the task's
    `Task.eval_metrics` (name -> fn(greedy completion text, its example) -> float), logged as eval/<name> means.
    config: the whole ConfigDict (eval.*, rollout.max_new_tokens); the other rollout settings (top_p, top_k, the
    engine's) are the sampler's."""
    shards = int(sampler.mesh.shape["data"]) * int(sampler.mesh.shape["fsdp"])
    batch = max(shards, int(config.eval.batch_size) // shards * shards)
    max_new = int(config.eval.max_new_tokens) or int(config.rollout.max_new_tokens)
    k = int(config.eval.pass_k)
    n = int(config.eval.num_samples) or k
    own = dict(eval_metrics or {})
    for name in own:
        if name in BUILTIN_METRICS or name.startswith("pass@"):
            raise ValueError(f"task eval metric {name!r} has the name of a built-in eval metric")
    rows = []  # per problem: reward, correct, length, the task's metrics..., passes
    shown = []
    for b, (lo, hi) in enumerate(_batches(len(examples), batch)):
        chunk = list(examples[lo:hi])
        pad = -len(chunk) % shards
        chunk += [chunk[-1]] * pad  # padded rows are scored and dropped
        batch_key = jax.random.fold_in(key, b)
        _, _, greedy = sampler.sample(params, chunk, batch_key, group_size=1, max_new_tokens=max_new, greedy=True)
        total, _, _ = score(reward_fn, chunk, greedy, 1)
        correct = np.asarray(score(accuracy_fn, chunk, greedy, 1)[0]) >= 1.0 - 1e-6
        held = chunk[greedy.start: greedy.start + len(greedy.texts)]  # this process's rows (one per example)
        task_columns = [np.asarray([float(fn(t, ex)) for t, ex in zip(greedy.texts, held)], np.float32)
                        for fn in own.values()]
        if greedy.calls is not None:  # episodes: calls and malformed calls per row (the columns after the task's)
            task_columns += [np.asarray(greedy.calls, np.float32), np.asarray(greedy.parse_errors, np.float32)]
        local = np.stack([np.asarray(total, np.float32), correct.astype(np.float32),
                          greedy.lengths.astype(np.float32)] + task_columns, axis=1)
        passes = np.zeros((len(local), 1), np.float32)
        if k:
            _, _, sampled = sampler.sample(params, chunk, jax.random.fold_in(batch_key, 1), group_size=n,
                                           max_new_tokens=max_new, temperature=float(config.eval.temperature))
            ok = (np.asarray(score(accuracy_fn, chunk, sampled, n)[0]) >= 1.0 - 1e-6).reshape(-1, n)
            passes = np.asarray([[pass_at_k(n, int(c), k)] for c in ok.sum(axis=1)], np.float32)
        gathered = distributed.allgather_rows(np.concatenate([local, passes], axis=1))
        rows.append(gathered[: hi - lo])
        if len(shown) < num_samples_shown and greedy.start == 0:
            for i in range(min(num_samples_shown - len(shown), hi - lo, len(greedy.texts))):
                shown.append({"prompt": chunk[i]["prompt"][-1]["content"], "completion": greedy.texts[i],
                              "reward": float(total[i]), "correct": bool(correct[i])})
                if greedy.observations is not None:
                    shown[-1]["observations"] = list(greedy.observations[i])
                    shown[-1]["episode"] = greedy.marked[i]
    table = np.concatenate(rows, axis=0)
    correct_rows = table[:, 1] > 0.5
    metrics = {
        "eval/accuracy": float(table[:, 1].mean()),
        "eval/mean_reward": float(table[:, 0].mean()),
        "eval/mean_length": float(table[:, 2].mean()),
        "eval/mean_length_correct": float(table[correct_rows, 2].mean()) if correct_rows.any() else 0.0,
        "eval/num_examples": int(len(table)),
    }
    for i, name in enumerate(own):
        metrics[f"eval/{name}"] = float(table[:, 3 + i].mean())
    if sampler.environment is not None:
        metrics.update(tool_metrics(table[:, 3 + len(own)], table[:, 4 + len(own)], correct_rows))
    if k:
        metrics[f"eval/pass@{k}"] = float(table[:, -1].mean())
    return EvalResult(metrics, shown)


# ------------------------------------------------------------------------------------------------ sample table


def _clip(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(samples: Sequence[dict], columns: Sequence[str], width: int = 60) -> str:
    """A plain-text table of sample completions (prompt, completion, reward, advantage / correct)."""
    if not samples:
        return "(no samples)"
    widths = {c: (width if c in ("prompt", "completion") else 10) for c in columns}
    def cell(c, v):
        if isinstance(v, float):
            v = f"{v:+.3f}"
        return _clip(v, widths[c]).ljust(widths[c])
    lines = [" | ".join(c.ljust(widths[c]) for c in columns), "-+-".join("-" * widths[c] for c in columns)]
    def value(s, c):  # an episode's completion is shown marked (its observations set apart)
        return s.get("episode", s.get(c, "")) if c == "completion" else s.get(c, "")
    lines += [" | ".join(cell(c, value(s, c)) for c in columns) for s in samples]
    return "\n".join(lines)

