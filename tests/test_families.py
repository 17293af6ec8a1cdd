"""Decoder families beyond GPT-2 (issue 10): shared pass = unrolled stock model, FLOPs = FlopCounterMode,
and the refusals, decided from the config.

Every supported family is built from its own default config with tiny overrides passed to the
constructor (so derived fields such as head_dim follow), cache left on (the default): the hook itself
must make the shared-cache trap impossible. Grouped-query attention (2 key/value heads for 4 query
heads) wherever the family has it; Mistral with a sliding window shorter than the sequence.
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM

from apollo import families
from apollo.families import MLP_MATRICES, build_config, check_family
from apollo.flops import forward_flops, training_flops
from apollo.plan import depth_plan
from apollo.shared_layers import find_layer_list, layer_slots, run_along
from conftest import assert_grads_are_summed_over_uses
from test_flops import CPU_SDPA_FLOPS
from test_shared_layers import _unrolled

L, VOCAB = 6, 101


def tiny(kind, depth=L, vocab=VOCAB, width=32, seq=64, **extra):
    overrides = dict(hidden_size=width, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                     num_hidden_layers=depth, vocab_size=vocab, max_position_embeddings=seq, bos_token_id=1,
                     eos_token_id=2, pad_token_id=None, **extra)
    if kind == "gpt_neox":  # no grouped-query attention in GPT-NeoX
        overrides.pop("num_key_value_heads")
    if kind == "qwen3":  # Qwen3 states head_dim (default 128) instead of deriving it
        overrides["head_dim"] = width // 4
    if kind == "mistral":  # a window shorter than the sequence, the same on every layer
        overrides.setdefault("sliding_window", 8)
    return build_config(kind, overrides)


def make(config, attn="sdpa"):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn)


def ids(vocab=VOCAB, shape=(2, 16)):
    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(1))


# ---- a shared pass equals the explicitly unrolled stock model -----------------------------------
@pytest.mark.parametrize("kind", list(MLP_MATRICES))
@pytest.mark.parametrize("unique,depth,method", [(3, 6, "extend"), (2, 5, "stack")])
def test_shared_pass_equals_unrolled_copies(kind, unique, depth, method):
    model = make(tiny(kind)).eval()  # eval: no dropout; the cache is on in eval mode too
    assert model.config.use_cache and check_family(model.config) is None
    plan = depth_plan(unique, depth, method)
    ref = _unrolled(model, plan).eval()
    x = ids()

    with run_along(model, plan):
        loss = model(input_ids=x, labels=x).loss
    loss.backward()
    ref_loss = ref(input_ids=x, labels=x).loss
    ref_loss.backward()

    assert torch.allclose(loss, ref_loss, rtol=0, atol=1e-6), (loss.item(), ref_loss.item())
    slots = layer_slots(model)
    assert_grads_are_summed_over_uses(slots, layer_slots(ref), plan, unique)
    assert all(p.grad is None for u in range(unique, L) for p in slots[u].parameters())
    assert len(layer_slots(model)) == L and model.config.use_cache is True  # restored


def test_llama_without_disabling_the_cache_is_wrong():
    """The control: the naive swap with Llama's default cache gives a different loss (shared layer_idx)."""
    model = make(tiny("llama")).eval()
    plan, x = depth_plan(2, 4), ids()
    parent, attr = find_layer_list(model)
    slots = getattr(parent, attr)
    setattr(parent, attr, torch.nn.ModuleList([slots[i] for i in plan]))
    naive = model(input_ids=x, labels=x, use_cache=True).loss
    setattr(parent, attr, slots)
    ref = _unrolled(model, plan).eval()(input_ids=x, labels=x).loss
    with run_along(model, plan):
        assert torch.allclose(model(input_ids=x, labels=x).loss, ref, atol=1e-6)
    assert not torch.allclose(naive, ref, atol=1e-4)


# ---- FLOPs against FlopCounterMode ---------------------------------------------------------------
BATCH, SEQ, WIDTH, FLOP_VOCAB = 2, 32, 64, 1000


def counted(model, x, backward=False):
    counter = FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS)
    with counter:
        if backward:
            model(input_ids=x, labels=x).loss.backward()
        else:
            with torch.no_grad():
                model(input_ids=x)
    return counter.get_total_flops()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", list(MLP_MATRICES))
@pytest.mark.parametrize("depth", [1, 3])
def test_forward_flops_match_flop_counter(kind, attn, depth):
    # intermediate_size 48 is not a multiple of the width, 2 KV heads for 4 query heads: a formula
    # that assumed 4x MLPs, 2 MLP matrices or full-width K/V would be off by far more than 1%.
    config = tiny(kind, depth, FLOP_VOCAB, WIDTH, SEQ)
    measured = counted(make(config, attn).eval(), ids(FLOP_VOCAB, (BATCH, SEQ)))
    analytic = forward_flops(config, BATCH, SEQ, depth)
    assert abs(analytic - measured) / measured < 0.01, (analytic, measured)


@pytest.mark.parametrize("kind", list(MLP_MATRICES))
def test_training_flops_match_flop_counter(kind):
    """Forward + backward = 3 x forward with eager attention. CPU SDPA (no attention dropout in these
    families, so the fused kernel runs in training too) recomputes the scores Q K^T in its backward:
    the counter then sees exactly that one product more per layer, which the 3x rule does not count."""
    depth = 3
    config = tiny(kind, depth, FLOP_VOCAB, WIDTH, SEQ)
    x = ids(FLOP_VOCAB, (BATCH, SEQ))
    analytic = training_flops(config, BATCH, SEQ, depth)
    eager = counted(make(config, "eager").train(), x, backward=True)
    assert abs(analytic - eager) / eager < 0.01, (analytic, eager)
    sdpa = counted(make(config, "sdpa").train(), x, backward=True)
    q_width = config.num_attention_heads * (getattr(config, "head_dim", None) or WIDTH // 4)
    assert sdpa - analytic == depth * 2 * BATCH * SEQ * SEQ * q_width


def test_gated_and_grouped_shapes_are_used():
    """Llama's layer = 2 (Q, O) + 2 x 1/2 (K, V at half width) projections, 3 MLP matrices."""
    config = tiny("llama", 1, FLOP_VOCAB, WIDTH, SEQ)
    tokens = BATCH * SEQ
    expected = 2 * tokens * (3 * WIDTH * WIDTH + 3 * WIDTH * 48) + 4 * BATCH * SEQ * SEQ * WIDTH
    assert forward_flops(config, BATCH, SEQ, 1) - forward_flops(config, BATCH, SEQ, 0) == expected


# ---- refusals, from the config ---------------------------------------------------------------------
@pytest.mark.parametrize("kind, overrides, reason", [
    ("gemma2", {}, "layer_types has per-layer values"),
    ("qwen2", dict(use_sliding_window=True, max_window_layers=2, num_hidden_layers=4), "layer_types"),
    ("qwen2_moe", dict(decoder_sparse_step=2), "MoE on some layers only"),
    ("qwen2_moe", dict(mlp_only_layers=[1]), "MoE on some layers only"),
    ("deepseek_v3", {}, "first k layers are dense"),
    ("llama4_text", {}, "per-layer values"),
    ("roberta", {}, "encoder (masked LM)"),
    ("modernbert", {}, "encoder (masked LM)"),
    ("t5", {}, "encoder-decoder"),
    ("mixtral", dict(num_hidden_layers=2, hidden_size=32, intermediate_size=32, num_attention_heads=4,
                     num_key_value_heads=2), "no FLOPs formula"),
])
def test_refused_with_reason(kind, overrides, reason):
    why = check_family(build_config(kind, overrides))
    assert why is not None and reason in why, why


def test_kv_sharing_and_per_layer_overrides_are_refused():
    config = tiny("llama")
    config.num_kv_shared_layers = 2  # as Gemma-3n names it
    assert "per-layer KV sharing" in check_family(config)
    assert check_family(tiny("qwen2", use_sliding_window=True, max_window_layers=L)) is None  # all layers alike


def test_blocks_that_differ_are_refused_even_when_the_config_does_not_say(monkeypatch):
    real = AutoModelForCausalLM.from_config

    def one_odd_block(config, **kw):
        model = real(config, **kw)
        layer_slots(model)[2].mlp.down_proj = torch.nn.Linear(48, 32, bias=True)  # one block with a bias
        return model

    monkeypatch.setattr(families.AutoModelForCausalLM, "from_config", one_odd_block)
    assert "do not all have the same modules and shapes" in check_family(tiny("llama"))
    monkeypatch.setattr(families.AutoModelForCausalLM, "from_config", real)
    assert check_family(tiny("llama")) is None


def test_overrides_rebuild_derived_fields():
    config = tiny("llama", width=64)
    assert config.head_dim == 16  # 64 // 4, not the default config's 128
    with pytest.raises(ValueError, match="isn't in the"):
        families.parse_overrides("no_such_field=3", config)
    assert families.parse_overrides("hidden_size=8,attention_bias=true,rms_norm_eps=1e-5", config) == \
        {"hidden_size": 8, "attention_bias": True, "rms_norm_eps": 1e-5}
