#!/usr/bin/env bash
# The check for a lent GPU: `benchmarks ragged_sampler` and `benchmarks multiturn` on random weights of the
# Qwen2.5-0.5B shape in bfloat16, each bounded by `timeout`, at most 8 minutes in all. One JSON line each, in
# $OUT/results.jsonl (and on stdout).
#
#   bash benchmarks/device_check.sh --prepare    # here, first: the embedded model's tokenizer into .device/tokenizer
#   bash benchmarks/device_check.sh              # there: run(command=..., carry=[".device"])
#   bash benchmarks/device_check.sh --smoke      # here: the same commands on the tiny shape, in seconds
set -uo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python   # here; the device's image has its own python (no .venv is carried)
TOKENIZER=.device/tokenizer

if [ "${1:-}" = "--prepare" ]; then
    exec "$PY" -c "
from benchmarks.policy import load_policy
load_policy('smollm2-135m-instruct')[2].save_pretrained('$TOKENIZER')
print('saved the tokenizer of smollm2-135m-instruct to $TOKENIZER')"
fi

OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
SHAPE=qwen2.5-0.5b; DTYPE=bfloat16
RAGGED=(); MULTI=(--prompts 16 --group 8 --new-tokens 256 --max-turn-tokens 32)
if [ "${1:-}" = "--smoke" ]; then
    SHAPE=tiny; DTYPE=float32
    RAGGED=(--prompts 2 --group 4 --new-tokens 32 --mean-length 8)
    MULTI=(--prompts 2 --group 2 --new-tokens 80 --max-turn-tokens 4)
    TOKENIZER=$("$PY" -c "import sys; sys.path.insert(0, 'tests')  # the tests' char-level tokenizer
from tiny_tokenizer import save_tokenizer; print(save_tokenizer('$OUT/tiny_tokenizer'))")
fi
if [ ! -d "$TOKENIZER" ]; then
    echo "no tokenizer at $TOKENIZER: run 'bash benchmarks/device_check.sh --prepare' first"; exit 2
fi
"$PY" -c "import jax, grpo_jax, benchmarks; print('backend', jax.default_backend(), jax.devices())" || exit 2
status=0
timeout 210 "$PY" -m benchmarks ragged_sampler --shape "$SHAPE" --dtype "$DTYPE" --repeats 1 "${RAGGED[@]}" \
    --results "$OUT/results.jsonl" || { echo "ragged_sampler failed or ran past 210 s"; status=1; }
timeout 210 "$PY" -m benchmarks multiturn --shape "$SHAPE" --dtype "$DTYPE" --tokenizer "$TOKENIZER" \
    --environment guess_number --max-turns 4 --repeats 1 "${MULTI[@]}" \
    --results "$OUT/results.jsonl" || { echo "multiturn failed or ran past 210 s"; status=1; }
exit $status
