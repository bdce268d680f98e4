"""Multi-turn runs end to end on a tiny random checkpoint: `runner.run` with `environment.name` set plays episodes
(grpo_jax/evaluation.py `Sampler.episodes`), logs env/* metrics, resumes exactly, survives an environment that
raises on every step; the calculator config file trains from the command line; the chat-template role pieces.

The environments here are scripted and registered by this module: 'scripted_calls' answers every turn (a turn
ends at '+', which the random model writes often, or after environment.max_turn_tokens tokens) with '=<answer>',
counting a call per turn; 'scripted_raises' raises on every step.
"""

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import tiny_run_config
from test_train_cli import REPO, cache, cli_env  # noqa: F401  (the compile cache)
from tiny_tokenizer import make_run_checkpoint, make_tokenizer

from grpo_jax import config as config_lib
from grpo_jax import environments, evaluation, runner, tasks
from grpo_jax.metrics import read_metrics, without_timing

ENV_KEYS = ("env/turns_mean", "env/tool_calls", "env/tool_errors", "env/parse_rate", "env/faults/error",
            "env/faults/timeout", "env/faults/oversize", "env/observation_tokens", "env/time")


@environments.register("scripted_calls", replace=True)
class ScriptedCalls(environments.Environment):
    stop = ("+",)

    def reset(self, example):
        self.answer = example["answer"]
        self.stats = {"turns": 0, "calls": 0, "parse_errors": 0, "tool_errors": 0}

    def step(self, turn):
        self.stats["turns"] += 1
        self.stats["calls"] += 1
        if "-" in turn:
            self.stats["parse_errors"] += 1
        return environments.Observation(f"={self.answer}\n")


@environments.register("scripted_raises", replace=True)
class ScriptedRaises(environments.Environment):
    def reset(self, example):
        self.stats = {}

    def step(self, turn):
        raise RuntimeError("the environment always fails")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # A context of 512 positions: the calculator config's system message makes prompts of ~300 tokens.
    return make_run_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", max_position_embeddings=512)


def _config(checkpoint, env="scripted_calls"):
    c = tiny_run_config.get_config()
    c.model.path = checkpoint
    c.total_steps = 2
    c.rollout.max_new_tokens = 16
    c.reward_options = {"overlong": {"max_length": 12, "buffer_length": 8}}
    c.environment.name = env
    c.environment.max_turns = 3
    c.environment.max_turn_tokens = 4
    c.environment.max_observation_tokens = 4
    return c


def test_a_multiturn_run_logs_episodes_and_resumes_bit_identically(checkpoint, tmp_path):
    straight_dir, workdir = str(tmp_path / "straight"), str(tmp_path / "resumed")
    result = runner.run(_config(checkpoint), straight_dir)
    assert result.status == "completed" and result.step == 2
    rows = read_metrics(straight_dir)
    train = [r for r in rows if "reward" in r]
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in train] == [1, 2] and [r["step"] for r in evals] == [0, 2]
    for row in train:
        assert set(ENV_KEYS) <= set(row), set(ENV_KEYS) - set(row)
        assert all(np.isfinite(v) for v in row.values())
        assert row["env/tool_calls"] > 0 and row["env/observation_tokens"] > 0
        assert 1 <= row["env/turns_mean"] <= 3 and 0 <= row["env/parse_rate"] <= 1
        assert row["completions/max_length"] <= 3 * 4  # model tokens only: max_turns x max_turn_tokens
        # the sampler's log-probs are the trainer's on every model token (observations are not trained)
        assert row["logp_mismatch"] < 1e-4, row["logp_mismatch"]
    for row in evals:
        assert 0 <= row["eval/tool_call_rate"] <= 1 and row["eval/num_examples"] == 8
        # every greedy turn is a call here ('scripted_calls'), and a call with '-' in it a malformed one
        assert row["eval/calls_mean"] >= row["eval/tool_call_rate"] > 0
        assert 0 <= row["eval/parse_rate"] <= 1 and 0 <= row["eval/correct_with_call"] <= 1
    with open(os.path.join(straight_dir, "eval_samples.jsonl")) as f:
        samples = [json.loads(line) for line in f if line.strip()]
    assert samples and all("observations" in s and "episode" in s for s in samples)
    shown = [s for s in samples if s["observations"]]
    assert shown and all(o in s["completion"] for s in shown for o in s["observations"])  # the whole episode
    for s in shown:  # the marked episode: the completion's text, each observation between the markers
        marked = s["episode"]
        for o in s["observations"]:
            assert evaluation.OBSERVATION_OPEN + o + evaluation.OBSERVATION_CLOSE in marked
        plain = marked.replace(evaluation.OBSERVATION_OPEN, "").replace(evaluation.OBSERVATION_CLOSE, "")
        assert plain == s["completion"]
    table = subprocess.run([sys.executable, "-m", "experiments.samples", straight_dir], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and evaluation.OBSERVATION_OPEN in table.stdout, table.stderr

    first = runner.run(_config(checkpoint), workdir, preempt_after=1)
    assert first.status == "preempted" and first.step == 1
    second = runner.run(_config(checkpoint), workdir)
    assert second.status == "completed" and second.step == 2
    assert without_timing(read_metrics(workdir)) == without_timing(rows)  # bit-identical
    texts = [open(os.path.join(d, "eval_samples.jsonl")).read() for d in (workdir, straight_dir)]
    assert texts[0] == texts[1]


def test_an_environment_that_always_raises_is_counted_not_fatal(checkpoint, tmp_path):
    c = _config(checkpoint, "scripted_raises")
    c.total_steps = 1
    c.eval.every = 0
    c.environment.observation_role = "tool"  # the error observations go in as chat turns of the tiny template
    result = runner.run(c, str(tmp_path / "run"))
    assert result.status == "completed" and result.step == 1
    (row,) = [r for r in read_metrics(str(tmp_path / "run")) if "reward" in r]
    assert row["env/faults/error"] > 0 and math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
    assert row["env/tool_calls"] == 0 and row["env/parse_rate"] == 1.0


@environments.register("scripted_faulty", replace=True)
class ScriptedFaulty(environments.Environment):
    """The i-th object made fails in way i % 3 at every step: sleeps past environment.timeout_s (which ends its
    episode), answers 10 MB, or raises."""
    made = 0

    def __init__(self, config=None):
        super().__init__(config)
        self.way, ScriptedFaulty.made = ScriptedFaulty.made % 3, ScriptedFaulty.made + 1

    def reset(self, example):
        self.stats = {"turns": 0}

    def step(self, turn):
        self.stats["turns"] += 1
        if self.way == 0:
            time.sleep(1.0)
            return environments.Observation("too late")
        if self.way == 1:
            return environments.Observation("x" * (10 << 20))
        raise RuntimeError("the tool is down")


def test_a_tool_that_sleeps_floods_or_raises_is_counted_and_the_run_finishes(checkpoint, tmp_path):
    c = _config(checkpoint, "scripted_faulty")
    c.total_steps = 1
    c.eval.every = 0
    c.rollout.max_new_tokens = 32
    c.environment.max_turns = 4
    c.environment.timeout_s = 0.2
    c.environment.max_observation_tokens = 8
    result = runner.run(c, str(tmp_path / "run"))
    assert result.status == "completed" and result.step == 1
    (row,) = [r for r in read_metrics(str(tmp_path / "run")) if "reward" in r]
    assert row["env/faults/timeout"] > 0 and row["env/faults/oversize"] > 0 and row["env/faults/error"] > 0
    assert row["env/observations_cut"] > 0  # the 10 MB answer went in cut to max_observation_tokens
    assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) and row["logp_mismatch"] < 1e-4


def test_a_task_names_its_default_environment():
    task = tasks.get("arithmetic")
    section = environments.environment_config()  # name '' = the task's default
    assert environments.for_task(section, task) is None  # the arithmetic task names none: single-turn
    task.default_environment = "calculator"
    played = environments.for_task(section, task)
    assert played["name"] == "calculator" and section["name"] == ""  # a copy; the config is unchanged
    assert environments.for_task(environments.environment_config("none"), task) is None  # forced single-turn
    own = environments.environment_config("scripted_calls")
    assert environments.for_task(own, task)["name"] == "scripted_calls"  # the config's own name wins
    with pytest.raises(ValueError, match="single-turn"):
        environments.make(environments.environment_config("none"))


def test_role_pieces_come_from_the_chat_template():
    tiny = make_tokenizer()  # "<{role}>{content}\n" per message, "<assistant>" opens the model's turn
    assert evaluation.role_pieces(tiny, "tool") == ("\n<tool>", "\n<assistant>")
    assert evaluation.role_pieces(tiny, "user") == ("\n<user>", "\n<assistant>")
    tiny.chat_template = None
    assert evaluation.role_pieces(tiny, "tool") == ("\n<tool>: ", "\n")  # no template: plain text pieces
    tiny.chat_template = evaluation.BYTE_CHAT_TEMPLATE
    assert evaluation.role_pieces(tiny, "tool") == ("\n<|tool|>\n", "\n<|assistant|>\n")


def test_the_arithmetic_task_takes_a_system_message():
    example = tasks.get("arithmetic", system="Use the tool.").train_example(0, 0)
    assert example["prompt"][0] == {"role": "system", "content": "Use the tool."}
    assert tasks.get("arithmetic").train_example(0, 0)["prompt"] == example["prompt"][1:]


@pytest.mark.parametrize("lora_rank", [4, 0], ids=["lora", "full"])
def test_population_members_play_episodes_and_each_equals_the_single_run(checkpoint, tmp_path, lora_rank):
    """Two identical members of a multi-turn population: each member's rows are the single run's (the same
    episodes from the same key, the same train step on them)."""
    def config():
        c = _config(checkpoint)
        c.model.lora_rank = lora_rank
        c.eval.every = 0
        c.optim.pack_completions = False
        c.logging.num_samples = 0
        return c
    runner.run(config(), str(tmp_path / "single"))
    want = [r for r in read_metrics(str(tmp_path / "single")) if "loss" in r]
    c = config()
    c.population.size = 2
    c.population.fitness_examples = 4
    c.population.evolve_every = 100
    c.population.mutate = ("lr",)
    c.population.ranges.lr = (1e-3, 1e-1)
    result = runner.run(c, str(tmp_path / "pop"))
    assert result.status == "completed" and result.step == 2
    rows = read_metrics(str(tmp_path / "pop"))
    assert want[0]["env/tool_calls"] > 0 and want[0]["env/observation_tokens"] > 0
    for k in range(2):
        got = [r for r in rows if r.get("member") == k and "loss" in r]
        assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2]
        for a, b in zip(got, want):
            for key in ("reward", "loss", "grad_norm", "env/tool_calls", "env/observation_tokens",
                        "completions/mean_length", "logp_mismatch"):
                assert abs(a[key] - b[key]) <= 1e-5 * max(1.0, abs(b[key])), (k, a["step"], key, a[key], b[key])


def test_the_calculator_config_trains_from_the_command_line(checkpoint, cache, tmp_path):  # noqa: F811
    workdir = str(tmp_path / "calculator")
    command = [sys.executable, "-m", "experiments.train", "--config", os.path.join(REPO, "configs/calculator.py:tiny"),
               "--workdir", workdir, f"--config.model.path={checkpoint}", "--config.logging.progress=False"]
    proc = subprocess.run(command, cwd=REPO, env=cli_env(cache), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(workdir)
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["loss"]) and "env/tool_calls" in r for r in train)
    assert all("eval/tool_call_rate" in r for r in rows if "eval/accuracy" in r)


def test_role_pieces_of_the_embedded_models_chat_template():
    """SmolLM2-135M-Instruct's own template (ChatML): an observation in the user or tool role closes the assistant
    turn, opens the role's, and reopens the assistant's; the codec carries them as token ids."""
    from grpo_jax.models.gguf_io import GGUFCheckpoint, load_gguf_tokenizer
    from grpo_jax.models.load import resolve_source

    tok = load_gguf_tokenizer(GGUFCheckpoint(resolve_source("smollm2-135m-instruct")[1]))
    for role in ("user", "tool"):
        prefix, suffix = evaluation.role_pieces(tok, role)
        assert (prefix, suffix) == (f"<|im_end|>\n<|im_start|>{role}\n", "<|im_end|>\n<|im_start|>assistant\n")
    env = environments.make(environments.environment_config("calculator", observation_role="user"))
    codec = evaluation.turn_codec(tok, env)
    prefix_ids, suffix_ids = codec.wrapping("user")
    assert prefix_ids[0] == tok.convert_tokens_to_ids("<|im_end|>")  # one special token, not its characters
    assert tok.decode(list(prefix_ids) + codec.encode("<result>6</result>") + list(suffix_ids)) == (
        "<|im_end|>\n<|im_start|>user\n<result>6</result><|im_end|>\n<|im_start|>assistant\n")
    assert tok.encode("</calc>", add_special_tokens=False) in [list(s) for s in codec.stop_sequences]


def test_the_calculator_settings_change_what_they_say():
    sys.path.insert(0, REPO)
    from configs import calculator

    best = calculator.get_config("")
    assert best.to_dict() == calculator.get_config(calculator.DEFAULT).to_dict()
    assert (best.task.prefill, best.environment.observation_role, best.task.spelling) == ("<calc>", "user", "symbols")
    assert best.reward_options.arithmetic.to_dict() == {"require_answer": False, "skip_observations": True}
    got = {s: calculator.get_config(s) for s in calculator.SETTINGS}
    assert got["one_op"].environment.max_operations == 1 and "one operation" in got["one_op"].task.system
    assert (got["words"].task.spelling, got["unicode"].task.spelling) == ("words", "unicode")
    assert got["open_tag"].task.prefill == "<" and got["no_prefill"].task.prefill == ""
    for s in ("inline_result", "no_prefill"):
        assert got[s].environment.observation_role == "inline" and got[s].reward_options.arithmetic.require_answer
    for c in got.values():
        config_lib.validate(c)
        assert (c.task.num_operands, c.task.digits, c.environment.name) == (3, 2, "calculator")


def test_the_prompt_cache_keeps_a_problem_with_two_prefills_apart():
    from grpo_jax.models import ModelConfig

    config = ModelConfig(vocab_size=300, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
                         num_kv_heads=1, head_dim=4, max_position_embeddings=64, eos_token_ids=(2,))
    sampler = evaluation.Sampler(config, make_tokenizer(), None)
    hinted, plain = ({"id": "p", "prompt": [{"role": "user", "content": "Q"}], "prefill": p} for p in ("<calc>", "<"))
    assert sampler.prompt_tokens(hinted) != sampler.prompt_tokens(plain)
    assert sampler.prompt_text(hinted).endswith("<calc>") and sampler.prompt_text(plain).endswith("<")


def test_eval_tool_metrics_by_hand():
    """Five greedy episodes: calls (0, 1, 2, 1, 0), malformed (0, 1, 0, 0, 0), correct (yes, yes, no, yes, no).
    Calling episodes 3/5; calls 4/5 = 0.8 per episode; 3 of 4 calls parse; of the 3 correct episodes, 2 called."""
    got = evaluation.tool_metrics([0, 1, 2, 1, 0], [0, 1, 0, 0, 0], [True, True, False, True, False])
    assert got == {"eval/tool_call_rate": 0.6, "eval/calls_mean": 0.8, "eval/parse_rate": 0.75,
                   "eval/correct_with_call": pytest.approx(2 / 3)}
    none = evaluation.tool_metrics([0, 0], [0, 0], [False, False])  # no call, none correct
    assert none == {"eval/tool_call_rate": 0.0, "eval/calls_mean": 0.0, "eval/parse_rate": 1.0,
                    "eval/correct_with_call": 0.0}
