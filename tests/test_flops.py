"""apollo.flops (counted from the model on fake tensors) against torch's FlopCounterMode on the stock
Hugging Face models, and against the analytic GPT-2 and BERT formulas (the documented reference).

What FlopCounterMode counts for attention on CPU (torch 2.13):
- eager attention is torch.matmul, which dispatches to aten.bmm: both products are counted.
- SDPA picks a backend at run time. With dropout active (train mode, attn dropout 0.1) the CPU
  picks the math backend, which decomposes into aten.bmm: counted. Otherwise (eval mode, or
  dropout 0) it runs the fused aten._scaled_dot_product_flash_attention_for_cpu (and its
  _backward), for which FlopCounterMode has no formula: attention counts 0. The comparisons below
  therefore pass a custom mapping for the CPU kernels built from torch's own sdpa formulas
  (apollo.flops.CPU_SDPA_FLOPS), and one test pins down the stock behaviour so we notice when torch
  adds the formula.
Counts here agree exactly with the analytic ones; the 3% tolerance is the brief's.
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

from apollo.flops import CPU_SDPA_FLOPS, forward_flops, reference_forward_flops, training_flops

BATCH, SEQ, HIDDEN, HEADS, VOCAB = 2, 32, 64, 4, 1000
DEPTHS = (1, 3, 7, 12)
REL_TOL = 0.03

aten = torch.ops.aten


def make_config(kind, depth, attn="sdpa", **overrides):
    if kind == "gpt2":
        # Token ids inside the tiny vocabulary, to keep the config validator quiet.
        return GPT2Config(n_embd=HIDDEN, n_head=HEADS, n_layer=depth, vocab_size=VOCAB, n_positions=SEQ,
                          bos_token_id=0, eos_token_id=0, attn_implementation=attn, **overrides)
    # intermediate_size != 4 * hidden so a formula that assumes 4x would fail.
    return BertConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, num_hidden_layers=depth,
                      intermediate_size=3 * HIDDEN, vocab_size=VOCAB, max_position_embeddings=SEQ,
                      attn_implementation=attn, **overrides)


def make_model(config):
    torch.manual_seed(0)
    model_cls = GPT2LMHeadModel if config.model_type == "gpt2" else BertForMaskedLM
    return model_cls(config)


def measure(model, backward=False, custom_mapping=CPU_SDPA_FLOPS):
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False, custom_mapping=custom_mapping)
    with counter:
        if backward:
            model(ids, labels=ids).loss.backward()
        else:
            with torch.no_grad():
                model(ids)
    return counter.get_total_flops()


def attention_flops(depth):
    return depth * 2 * 2 * BATCH * SEQ * SEQ * HIDDEN


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["gpt2", "bert"])
@pytest.mark.parametrize("depth", DEPTHS)
def test_forward_flops_match_flop_counter(kind, attn, depth):
    config = make_config(kind, depth, attn)
    measured = measure(make_model(config).eval())
    assert forward_flops(config, BATCH, SEQ, depth) == measured  # exact


def test_gpt2_n_inner_is_used():
    config = make_config("gpt2", 2, "eager", n_inner=96)
    measured = measure(make_model(config).eval())
    assert forward_flops(config, BATCH, SEQ, 2) == measured == reference_forward_flops(config, BATCH, SEQ, 2)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_stock_counter_on_cpu_fused_sdpa(kind):
    """Stock FlopCounterMode, eval mode, SDPA on CPU: attention is invisible unless torch has a formula."""
    depth = 3
    config = make_config(kind, depth, "sdpa")
    measured = measure(make_model(config).eval(), custom_mapping=None)
    from torch.utils.flop_counter import flop_registry
    if aten._scaled_dot_product_flash_attention_for_cpu in flop_registry:
        expected = forward_flops(config, BATCH, SEQ, depth)
    else:
        expected = forward_flops(config, BATCH, SEQ, depth) - attention_flops(depth)
    assert measured == expected


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_stock_counter_sees_sdpa_math_backend_in_train_mode(kind):
    """Train mode with attention dropout makes CPU SDPA fall back to the math backend (aten.bmm)."""
    depth = 3
    config = make_config(kind, depth, "sdpa")
    measured = measure(make_model(config).train(), custom_mapping=None)
    assert abs(forward_flops(config, BATCH, SEQ, depth) - measured) / measured < REL_TOL


@pytest.mark.parametrize("kind, attn", [("gpt2", "sdpa"), ("bert", "eager")])
def test_forward_plus_backward_is_three_forwards(kind, attn):
    depth = 3
    config = make_config(kind, depth, attn)
    model = make_model(config).train()
    forward = measure(model)
    both = measure(model, backward=True)
    assert abs(both / forward - 3.0) < 3.0 * REL_TOL, both / forward
    analytic = training_flops(config, BATCH, SEQ, depth)
    assert abs(analytic - both) / both < REL_TOL, (analytic, both)


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_training_flops_linear_in_depth(kind):
    config = make_config(kind, 12)
    flops = [training_flops(config, BATCH, SEQ, d) for d in range(0, 13)]
    steps = {b - a for a, b in zip(flops, flops[1:])}
    layer = reference_forward_flops(config, BATCH, SEQ, 1) - reference_forward_flops(config, BATCH, SEQ, 0)
    assert steps == {3 * layer}
    assert all(isinstance(f, int) for f in flops)
    # The configured depth does not matter; only the executed one does.
    assert training_flops(make_config(kind, 1), BATCH, SEQ, 7) == flops[7]


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
@pytest.mark.parametrize("batch, seq, depth, extra", [(2, 32, 3, {}), (3, 17, 5, {}), (1, 8, 1, {"vocab_size": 999})])
def test_general_count_equals_the_reference_formula(kind, batch, seq, depth, extra):
    """The count from the model's own modules reproduces the documented GPT-2 and BERT formulas exactly,
    at shapes where no term can stand in for another (odd sequence length, vocabulary, batch)."""
    config = make_config(kind, depth)
    for key, value in extra.items():
        setattr(config, key, value)
    assert forward_flops(config, batch, seq, depth) == reference_forward_flops(config, batch, seq, depth)
    assert forward_flops(config, batch, seq, 0) == reference_forward_flops(config, batch, seq, 0)  # the head


def test_rejects_bad_sizes_and_the_reference_covers_gpt2_and_bert_only():
    with pytest.raises(ValueError):
        forward_flops(make_config("gpt2", 1), 0, SEQ, 1)
    with pytest.raises(ValueError):
        forward_flops(make_config("gpt2", 1), BATCH, SEQ, -1)

    class Other:
        model_type = "llama"
    with pytest.raises(ValueError, match="gpt2 and bert"):
        reference_forward_flops(Other(), BATCH, SEQ, 1)
