"""A tiny character-level tokenizer with a chat template, for runner tests on tiny random checkpoints.

Tiny random checkpoints (tests/tiny_checkpoints.py) have no tokenizer files, but the runner needs one to build
prompts and read completions. `save_tokenizer(path)` writes a `PreTrainedTokenizerFast` into a checkpoint dir, so
`models.load(path)` picks it up; `make_run_checkpoint(path)` builds both, with vocab_size = the tokenizer's size.

The vocabulary is small on purpose: ids 0/1/2 = <pad>/<s>/</s> (the tiny checkpoints' pad/bos/eos), the digits, a
few symbols, and <unk> for everything else (letters of the prompts). A random model then stops (emits </s>) often
enough that completion lengths vary within a group, and writes digits, so length and number rewards differ
between completions and the advantages are not all zero.
"""

from __future__ import annotations

import os
import string

SPECIALS = ("<pad>", "<s>", "</s>")
CHARS = list(string.digits + " +-*/=?<>\n")
VOCAB_SIZE = len(SPECIALS) + len(CHARS) + 1  # + <unk>

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def make_tokenizer():
    """A transformers PreTrainedTokenizerFast: char-level, specials <pad>=0, <s>=1, </s>=2, <unk> last."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    vocab["<unk>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(path) -> str:
    path = str(path)
    os.makedirs(path, exist_ok=True)
    make_tokenizer().save_pretrained(path)
    return path


def make_run_checkpoint(path, family: str = "llama", seed: int = 0, **overrides) -> str:
    """A tiny random checkpoint of `family` with this tokenizer saved beside it (vocab sizes agree)."""
    from tiny_checkpoints import make_checkpoint

    overrides.setdefault("vocab_size", VOCAB_SIZE)
    make_checkpoint(family, path, seed=seed, **overrides)
    return save_tokenizer(path)
