"""The benchmarks' one FLOP model (benchmarks/flops.py) by hand, and its per-token costs against XLA's own count
of a forward pass; the one matmul-rate probe (benchmarks/machine.py)."""

import jax
import numpy as np
import pytest

from benchmarks import flops, machine
from grpo_jax import models

# V = 10, D = 4, F = 6, L = 1, H = 2 query heads, K = 1 kv head, hd = 2: layer params 4 * 2 * (2 * 2 + 2 * 1) = 48
# (attention) + 3 * 4 * 6 = 72 (MLP) = 120; head 10 * 4 = 40; attention 4 * 1 * 2 * 2 = 16 FLOPs per (query, key).
HAND = models.ModelConfig(vocab_size=10, hidden_size=4, intermediate_size=6, num_layers=1, num_heads=2,
                          num_kv_heads=1, head_dim=2, tie_word_embeddings=True)


def test_parameter_counts_by_hand():
    assert (flops.layer_params(HAND), flops.head_params(HAND), flops.matmul_params(HAND)) == (120, 40, 160)
    assert flops.all_params(HAND) == 160  # tied: the embedding is the head
    untied = models.ModelConfig(**{**HAND.__dict__, "tie_word_embeddings": False})
    assert flops.all_params(untied) == 200 and flops.matmul_params(untied) == 160


def test_matmul_params_of_smollm2_135m():
    # 30 layers x (576 x 64 x (2 x 9 + 2 x 3) attention + 3 x 576 x 1536 MLP) + 49152 x 576 LM head (tied).
    config = models.ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                                num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True)
    assert flops.matmul_params(config) == 30 * (884_736 + 2_654_208) + 28_311_552 == 134_479_872


def test_sampling_by_hand():
    # P = 2 prompts of S = 5 tokens, G = 3, T = 4 new tokens (N = 6 rows).
    # prefill: layers 2 * 120 * 10 = 2400, head at the 2 last positions 2 * 40 * 2 = 160, 2 * 25 / 2 causal pairs
    # * 16 = 400 -> 2960. decode: 3 steps of 6 rows: layers 2 * 120 * 18 = 4320, head 2 * 40 * 18 = 1440,
    # keys 6 * (6 + 7 + 8) = 126 pairs * 16 = 2016 -> 7776.
    assert flops.sampling(HAND, 2, 3, 5, 4) == {"matmul_params": 160, "prefill": 2960, "decode": 7776,
                                                "total": 10736}


def test_train_step_by_hand():
    # executed forward: layers on 2 * 5 prompt (once per group) + 6 * 3 completion inputs = 28 tokens -> 6720;
    # head on 6 * 4 completion positions -> 1920; pairs 2 * 5 * 5 + 6 * 3 * (5 + 3) = 194 -> 3104. 11744 in all.
    with_ref = flops.train_step(HAND, 2, 3, 5, 4, True)
    assert with_ref == {"params": 160, "tokens": 54, "nominal": 8 * 160 * 54, "executed": 4 * 11744,
                        "executed_forward": 11744}
    without = flops.train_step(HAND, 2, 3, 5, 4, False)
    assert (without["nominal"], without["executed"]) == (6 * 160 * 54, 3 * 11744)


def test_grpo_step_is_sampling_plus_the_executed_train_step():
    assert flops.grpo_step(HAND, 2, 3, 5, 4, True) == {"matmul_params": 160, "sampling": 10736, "train": 46976,
                                                       "total": 57712}
    assert flops.grpo_step(HAND, 2, 3, 5, 4, False)["total"] == 10736 + 3 * 11744


@pytest.mark.parametrize("tied,kv_heads", [(True, 2), (False, 4)])
def test_forward_matches_xla_count_of_a_forward_pass(tied, kv_heads):
    """XLA's cost analysis of `models.forward` (one layer: the layer scan's body is counted once) counts every op;
    ours counts the matmuls and attention only, so it is at most XLA's and within the few percent of norms,
    rope and softmax. 256 tokens, so attention is a fifth of the count and a wrong attention term shows."""
    c = models.ModelConfig(vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=1, num_heads=4,
                           num_kv_heads=kv_heads, head_dim=32, tie_word_embeddings=tied)
    params = jax.eval_shape(lambda key: models.init_params(c, key), jax.random.PRNGKey(0))
    b, t = 1, 256
    lowered = jax.jit(models.forward, static_argnums=0).lower(c, params, jax.ShapeDtypeStruct((b, t), np.int32))
    theirs = lowered.cost_analysis()["flops"]
    ours = flops.forward(c, layer_tokens=b * t, head_positions=b * t, attention_pairs=b * t * t)
    assert ours <= theirs <= 1.03 * ours, (ours, theirs)


def test_fastest_rate_and_the_probe():
    rates = [machine.MatmulRate(wall=3.0, cpu=1.0), machine.MatmulRate(wall=2.0, cpu=5.0)]
    assert machine.fastest(rates) == machine.MatmulRate(wall=3.0, cpu=5.0)
    rate = machine.matmul_rate(64, repeats=2)
    assert rate.wall > 0 and rate.cpu > 0
