"""Decoder families (issues 10 and 15): the rules that sort them (apollo/families.py) and the counts the
family walk (tests/test_family_walk.py) does not pin by hand.

The walk checks every family the rules accept (shared pass = unrolled stock model, growth, FLOPs =
FlopCounterMode, a plain saved model). Here: refusals decided from the config and the blocks, the control
for the shared-cache trap, the count against hand formulas (grouped keys and values, gated MLP, top-k
experts), CPU SDPA's recomputed product, config overrides. Models come from each family's default config
shrunk by rule (apollo/small_configs.py), cache left on (the default): the hook itself must make the
shared-cache trap impossible.
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CONFIG_MAPPING

from apollo import families
from apollo.families import build_config, check_family
from apollo.flops import CPU_SDPA_FLOPS, forward_flops, training_flops
from apollo.kinds import build_model
from apollo.plan import depth_plan
from apollo.shared_layers import find_layer_list, layer_slots, run_along
from apollo.small_configs import Sizes, shrink_overrides
from test_shared_layers import _unrolled

L, VOCAB = 6, 101


def tiny(kind, depth=L, vocab=VOCAB, width=32, seq=64, inner=48, **extra):
    """The family's default config shrunk by rule: 4 query heads, 2 key/value heads where it groups them."""
    sizes = Sizes(layers=depth, width=width, head_dim=width // 4, inner=inner, vocab=vocab, positions=seq)
    return build_config(kind, {**shrink_overrides(CONFIG_MAPPING[kind](), sizes), **extra})


def make(config, attn="sdpa"):
    torch.manual_seed(0)
    return build_model(config, attn_implementation=attn)


def ids(vocab=VOCAB, shape=(2, 16)):
    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(1))


# ---- the shared-cache trap ----------------------------------------------------------------------
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


# ---- FLOPs: hand formulas and the fused CPU kernel ------------------------------------------------
BATCH, SEQ, WIDTH, FLOP_VOCAB, INNER = 2, 32, 64, 1000, 48


def counted(model, x, backward=False):
    counter = FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS)
    with counter:
        if backward:
            model(input_ids=x, labels=x).loss.backward()
        else:
            with torch.no_grad():
                model(input_ids=x)
    return counter.get_total_flops()


def test_llama_count_is_the_hand_formula():
    """Llama's layer, counted from its modules: Q and O at the width, K and V at half of it (2 key/value
    heads for 4 query heads), 3 MLP matrices (gated) of an inner size that is no multiple of the width,
    and the full T x T attention products; the head is one width -> vocabulary matmul."""
    config = tiny("llama", 1, FLOP_VOCAB, WIDTH, SEQ, INNER)
    tokens = BATCH * SEQ
    projections = 2 * tokens * (2 * WIDTH * WIDTH + 2 * WIDTH * WIDTH // 2 + 3 * WIDTH * INNER)
    layer = projections + 4 * BATCH * SEQ * SEQ * WIDTH
    assert forward_flops(config, BATCH, SEQ, 1) - forward_flops(config, BATCH, SEQ, 0) == layer
    assert forward_flops(config, BATCH, SEQ, 0) == 2 * tokens * WIDTH * FLOP_VOCAB


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe"])
def test_moe_count_is_the_executed_top_k_experts(kind):
    """Every layer MoE: each token runs its top-k experts (here 2 of 4, gated: 3 matrices of INNER) and
    the router (width -> experts), not all experts. The walk checks the same count against FlopCounterMode
    on the eager experts loop, which runs exactly the routed (token, expert) pairs."""
    config = tiny(kind, 1, FLOP_VOCAB, WIDTH, SEQ, INNER)
    assert (config.num_experts_per_tok, getattr(config, "num_local_experts", None) or config.num_experts) == (2, 4)
    tokens = BATCH * SEQ
    attention = 2 * tokens * (2 * WIDTH * WIDTH + 2 * WIDTH * WIDTH // 2) + 4 * BATCH * SEQ * SEQ * WIDTH
    experts = 2 * tokens * (2 * 3 * WIDTH * INNER + WIDTH * 4)
    assert forward_flops(config, BATCH, SEQ, 1) - forward_flops(config, BATCH, SEQ, 0) == attention + experts
    x = ids(FLOP_VOCAB, (BATCH, SEQ))
    model = make(config, "eager").eval()
    model.set_experts_implementation("eager")
    assert counted(model, x) == forward_flops(config, BATCH, SEQ, 1)


def test_training_flops_match_flop_counter():
    """Forward + backward = 3 x forward with eager attention. CPU SDPA (no attention dropout in Llama, so the
    fused kernel runs in training too) recomputes the scores Q K^T in its backward: the counter then sees
    exactly that one product more per layer, which the 3x rule does not count."""
    depth = 3
    config = tiny("llama", depth, FLOP_VOCAB, WIDTH, SEQ)
    x = ids(FLOP_VOCAB, (BATCH, SEQ))
    analytic = training_flops(config, BATCH, SEQ, depth)
    assert counted(make(config, "eager").train(), x, backward=True) == analytic
    sdpa = counted(make(config, "sdpa").train(), x, backward=True)
    assert sdpa - analytic == depth * 2 * BATCH * SEQ * SEQ * WIDTH


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
    ("diffllama", {}, "settings that depend on the layer index (self_attn.lambda_init)"),
    ("dory", {}, "layers run in loops"),
    ("rwkv", {}, "do not all have the same modules and shapes"),
    ("jetmoe", {}, "data-dependent shapes"),
    ("mamba", {}, "not the 3 x of the training FLOPs rule"),
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
    def one_odd_block(config, **kw):
        model = build_model(config, **kw)
        layer_slots(model)[2].mlp.down_proj = torch.nn.Linear(48, 32, bias=True)  # one block with a bias
        return model

    def one_odd_setting(config, **kw):
        model = build_model(config, **kw)
        layer_slots(model)[3].self_attn.scaling *= 2  # one block scales its scores differently
        return model

    monkeypatch.setattr(families, "build_model", one_odd_block)
    assert "do not all have the same modules and shapes" in check_family(tiny("llama"))
    monkeypatch.setattr(families, "build_model", one_odd_setting)
    assert "depend on the layer index (self_attn.scaling)" in check_family(tiny("llama"))
    monkeypatch.setattr(families, "build_model", build_model)
    assert check_family(tiny("llama")) is None


def test_overrides_rebuild_derived_fields():
    config = build_config("llama", dict(hidden_size=64, num_attention_heads=4))
    assert config.head_dim == 16  # 64 // 4, not the default config's 128
    with pytest.raises(ValueError, match="isn't in the"):
        families.parse_overrides("no_such_field=3", config)
    assert families.parse_overrides("hidden_size=8,attention_bias=true,rms_norm_eps=1e-5", config) == \
        {"hidden_size": 8, "attention_bias": True, "rms_norm_eps": 1e-5}
