"""The TRL side of the side-by-side benchmarks: a TRL `GRPOTrainer` set up exactly like a grpo_jax run.

    from benchmarks import trl_reference as ref
    settings = ref.Settings(prompts_per_step=8, group_size=8, max_new_tokens=64, kl_beta=0.04)
    trainer = ref.build_trainer(settings, steps=4, output_dir="/tmp/trl")
    timer = ref.StepTimer(trainer); trainer.train()     # timer.step_times: seconds per optimizer step

Needs the `bench` extra (`pip install -e '.[bench]'`: torch 2.13 CPU + trl 1.16); grpo_jax itself never imports
torch or TRL. This module imports them only inside its functions, so grpo_jax-side code can share `Settings`
without paying for torch.

How each shared setting becomes a TRL argument (grpo_jax's config key in brackets):

  model              both load the same file [model.path]: grpo_jax with `models.load(source)`, TRL with
                     transformers' `from_pretrained(dir, gguf_file=name, dtype=float32)` (each dequantises the GGUF
                     to float32), saved once as an HF dir because TRL's reference-model loader cannot read GGUF
                     (`hf_checkpoint`); the tokenizer is the GGUF's own on both sides (a test checks the prompt
                     tokens agree)
  prompts x group    num_generations = G [rollout.group_size]; per_device_train_batch_size x
                     gradient_accumulation_steps = P * G, so ONE optimizer step = ONE generation of P prompts x G
                     completions [rollout.prompts_per_step]; micro_batch_size -> per_device_train_batch_size
                     [optim.micro_batch_size]
  max_new_tokens     max_completion_length [rollout.max_new_tokens]
  temperature        temperature, top_p = 1.0, top_k = 0 (plain sampling) [rollout.temperature / top_p / top_k]
  kl_beta            beta; TRL's KL is DeepSeekMath's k3 [loss.kl_beta, loss.kl_estimator = 'k3']
  loss               loss_type = 'grpo': per-sequence token mean, then mean over sequences
                     [loss.aggregation = 'seq_mean_token_mean']; epsilon = 0.2 both sides [loss.clip_low/high];
                     scale_rewards = 'group' [loss.advantage_scale]; num_iterations = 1 [loss.num_iterations]
  optimizer          AdamW(lr, betas (0.9, adam_b2), eps 1e-8, weight decay 0), constant lr, no warmup, global-norm
                     clip 1.0 [optim.*]
  precision, device  bf16 = False (float32 everywhere), use_cpu = True, no vLLM
  activation ckpt    gradient_checkpointing = False (TRL defaults to True) [model.remat = False]
  data order         the task's training batches in order: step s uses `task.train_batch(seed, s, P)` on both
                     sides (shuffle_dataset = False)
  rewards            the same grpo_jax reward functions (TRL's signature), same weights
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Sequence


@dataclasses.dataclass
class Settings:
    """What both systems share in a benchmark run (see the module docstring for the mapping to each side)."""
    model: str = "smollm2-135m-instruct"   # models.load source: alias | .gguf file | HF checkpoint dir
    task: str = "arithmetic"
    task_options: dict = dataclasses.field(default_factory=dict)   # tasks.get(task, **task_options)
    rewards: dict = dataclasses.field(default_factory=lambda: {"arithmetic": 1.0})   # reward name -> weight
    prompts_per_step: int = 8
    group_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    kl_beta: float = 0.04
    clip: float = 0.2
    lr: float = 1e-6
    adam_b2: float = 0.99
    max_grad_norm: float = 1.0
    micro_batch_size: int = 0   # sequences per gradient-accumulation micro-batch; 0 = all P * G at once
    seed: int = 0

    def __post_init__(self):
        for name in ("prompts_per_step", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"Settings.{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"Settings.group_size must be >= 2 (GRPO compares a group), got {self.group_size}")
        n = self.prompts_per_step * self.group_size
        if self.micro_batch_size and (n % self.micro_batch_size or self.micro_batch_size % self.group_size):
            raise ValueError(f"Settings.micro_batch_size = {self.micro_batch_size} must divide the step's {n} "
                             f"sequences and be a multiple of group_size = {self.group_size}")

    @property
    def sequences(self) -> int:
        return self.prompts_per_step * self.group_size


# ------------------------------------------------------------------------------------------------ model, data


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "grpo_jax", "hf_from_gguf")


def hf_checkpoint(source: str, cache_dir: str | None = None) -> str:
    """An HF checkpoint dir (config.json + safetensors + tokenizer) holding the model of a grpo_jax `source`.

    A checkpoint dir is returned as is. A GGUF file (or the alias) is loaded ONCE with transformers'
    `from_pretrained(dir, gguf_file=name, dtype=float32)` -- transformers' own dequantisation -- and saved with
    its GGUF tokenizer under `cache_dir` (reused while the GGUF file is unchanged): TRL builds its reference model
    with `AutoConfig.from_pretrained(path)`, which cannot read a GGUF file, so it must be given a directory."""
    import torch
    from grpo_jax.models.load import resolve_source
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind, path = resolve_source(source)
    if kind == "dir":
        return path
    stat = os.stat(path)
    name = f"{os.path.basename(path)}-{stat.st_size}-{int(stat.st_mtime)}"
    target = os.path.join(cache_dir or default_cache_dir(), name)
    if os.path.exists(os.path.join(target, "config.json")):
        return target
    directory, gguf_file = os.path.split(os.path.abspath(path))
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    # A model loaded from GGUF is marked "quantized with gguf" and refuses save_pretrained: copy its (already
    # dequantised float32) weights into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):
        raise ValueError(f"{path}: transformers' GGUF model and its plain copy differ: missing {missing}, "
                         f"unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    partial = target + f".partial{os.getpid()}"
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.rename(partial, target)
    except OSError:  # another process finished first: use its copy
        import shutil
        shutil.rmtree(partial, ignore_errors=True)
    return target


def load_tokenizer(checkpoint: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(checkpoint)


def train_rows(task, seed: int, steps: int, prompts_per_step: int) -> list[dict]:
    """TRL dataset rows (`prompt` = chat messages, plus the reward columns) of steps 0 .. steps - 1, in order."""
    return [to_trl_row(example) for step in range(steps) for example in task.train_batch(seed, step, prompts_per_step)]


def to_trl_row(example: dict) -> dict:
    """A task example as a TRL conversational row."""
    from grpo_jax.tasks.base import NON_COLUMN_KEYS

    if example.get("prefill"):
        raise ValueError(f"TRL reference: example {example.get('id')!r} has an assistant prefill "
                         f"({example['prefill']!r}); TRL's GRPOTrainer has no prefill, so this task cannot be "
                         "compared like for like")
    return {"prompt": example["prompt"], **{k: v for k, v in example.items() if k not in NON_COLUMN_KEYS}}


def reward_functions(weights: dict) -> tuple[list, list[float]]:
    """grpo_jax's registered rewards as TRL reward functions (TRL names its `rewards/<name>/mean` metric after
    `__name__`), and their weights."""
    from grpo_jax import rewards

    functions = []
    for name in weights:
        fn = rewards.get(name)

        @functools.wraps(fn)
        def reward(completions, _fn=fn, **columns):
            return _fn(completions, **columns)
        reward.__name__ = name
        functions.append(reward)
    return functions, [float(w) for w in weights.values()]


# ------------------------------------------------------------------------------------------------ trainer


def grpo_config(settings: Settings, steps: int, output_dir: str):
    """TRL's GRPOConfig for `steps` optimizer steps with `settings` (the mapping in the module docstring)."""
    from trl import GRPOConfig

    micro = settings.micro_batch_size or settings.sequences
    return GRPOConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=settings.sequences // micro,
        num_generations=settings.group_size,
        max_completion_length=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=1.0,
        top_k=0,
        beta=settings.kl_beta,
        epsilon=settings.clip,
        loss_type="grpo",
        scale_rewards="group",
        num_iterations=1,
        mask_truncated_completions=False,
        learning_rate=settings.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta1=0.9,
        adam_beta2=settings.adam_b2,
        adam_epsilon=1e-8,
        weight_decay=0.0,
        max_grad_norm=settings.max_grad_norm,
        model_init_kwargs={"dtype": "float32"},
        disable_dropout=True,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        use_vllm=False,
        seed=settings.seed,
        data_seed=settings.seed,
        shuffle_dataset=False,
        logging_steps=1,
        log_completions=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def build_trainer(settings: Settings, steps: int, output_dir: str, callbacks: Sequence = (),
                  cache_dir: str | None = None):
    """A TRL GRPOTrainer that runs `steps` GRPO steps of `settings`; TRL loads the policy and the reference from
    `hf_checkpoint(settings.model, cache_dir)` (the same weights as grpo_jax's `models.load(settings.model)`)."""
    from datasets import Dataset
    from grpo_jax import tasks
    from trl import GRPOTrainer

    task = tasks.get(settings.task, **settings.task_options)
    dataset = Dataset.from_list(train_rows(task, settings.seed, steps, settings.prompts_per_step))
    functions, weights = reward_functions(settings.rewards)
    args = grpo_config(settings, steps, output_dir)
    args.reward_weights = weights
    checkpoint = hf_checkpoint(settings.model, cache_dir)
    return GRPOTrainer(model=checkpoint, reward_funcs=functions, args=args, train_dataset=dataset,
                       processing_class=load_tokenizer(checkpoint), callbacks=list(callbacks))


def _transformers_callback_base():
    from transformers import TrainerCallback
    return TrainerCallback


class StepTimer:
    """Times each optimizer step of a GRPOTrainer (on_step_begin -> on_step_end: generation, rewards, reference
    pass, forward/backward of every micro-batch, optimizer update) and the phases inside it.

    step_times[i]  seconds of step i
    phases[i]      {"sampling": s, "reward": s, "scoring": s (reference / old log-probs + advantages), "train": s}
    Attach with `StepTimer(trainer)` before `trainer.train()`."""

    def __init__(self, trainer):
        base = _transformers_callback_base()
        timer = self

        class _Callback(base):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._begin()

            def on_step_end(self, args, state, control, **kwargs):
                timer._end()

        self.step_times: list[float] = []
        self.phases: list[dict] = []
        self._start = None
        self._acc = {}
        trainer.add_callback(_Callback())
        self._wrap(trainer, "_generate", "sampling")
        self._wrap(trainer, "_calculate_rewards", "reward")
        self._wrap(trainer, "_generate_and_score_completions", "generate_and_score")

    def _wrap(self, trainer, method: str, phase: str):
        original = getattr(trainer, method)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self._acc[phase] = self._acc.get(phase, 0.0) + time.perf_counter() - t
        setattr(trainer, method, timed)

    def _begin(self):
        self._start, self._acc = time.perf_counter(), {}

    def _end(self):
        total = time.perf_counter() - self._start
        self.step_times.append(total)
        sampling, reward = self._acc.get("sampling", 0.0), self._acc.get("reward", 0.0)
        scored = self._acc.get("generate_and_score", 0.0)
        self.phases.append({"sampling": sampling, "reward": reward, "scoring": max(scored - sampling - reward, 0.0),
                            "train": max(total - scored, 0.0)})


# ------------------------------------------------------------------------------------------------ evaluation


def greedy_accuracy(model, tokenizer, examples: Sequence[dict], accuracy_fn, max_new_tokens: int,
                    batch_size: int = 64) -> dict:
    """Greedy completions of every example with transformers' `generate` (stop at the model's eos ids) scored by
    the task's accuracy reward: {"eval/accuracy", "eval/mean_length", "eval/num_examples"}."""
    import torch
    from grpo_jax.tasks import reward_columns

    eos = model.generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    was_training = model.training
    model.eval()
    correct, lengths = [], []
    try:
        for lo in range(0, len(examples), batch_size):
            chunk = [to_trl_row(e) for e in examples[lo: lo + batch_size]]
            ids = [tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"] for r in chunk]
            width = max(len(x) for x in ids)
            input_ids = torch.tensor([[pad] * (width - len(x)) + list(x) for x in ids])
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                     max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad,
                                     temperature=None, top_p=None, top_k=None)
            texts = []
            for row in out[:, width:].tolist():
                n = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
                lengths.append(n)
                texts.append(tokenizer.decode(row[:n], skip_special_tokens=True))
            columns = reward_columns(list(examples[lo: lo + batch_size]))
            correct += [float(s) >= 1.0 - 1e-6 for s in accuracy_fn(texts, **columns)]
    finally:
        model.train(was_training)
    return {"eval/accuracy": sum(correct) / len(correct), "eval/mean_length": sum(lengths) / len(lengths),
            "eval/num_examples": len(correct)}


def versions() -> dict[str, Any]:
    """Versions of the TRL stack (for the results line)."""
    import torch
    import transformers
    import trl
    return {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}
