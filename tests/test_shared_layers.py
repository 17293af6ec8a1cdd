"""A pass along a plan of shared layers equals an explicitly unrolled stock model built from copies.

The models keep their default configs (GPT-2's use_cache=True): the hook itself must make the
shared-cache trap impossible.
"""
import copy

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

from apollo.plan import depth_plan
from apollo.shared_layers import find_layer_list, layer_slots, run_along
from conftest import assert_grads_are_summed_over_uses

L = 6


def _gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=L, n_embd=32, n_head=4, vocab_size=101, n_positions=64))


def _bert():
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(num_hidden_layers=L, hidden_size=32, num_attention_heads=4,
                                      intermediate_size=64, vocab_size=101, max_position_embeddings=64))


def _batch(kind):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 101, (2, 16), generator=g)
    labels = ids.clone()
    if kind == "bert":
        labels[torch.rand(ids.shape, generator=g) > 0.3] = -100
    return {"input_ids": ids, "labels": labels}


def _unrolled(model, plan):
    """A stock model of depth len(plan) whose position k holds a copy of slot plan[k]."""
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(plan)
    ref = type(model)(config)
    slots = layer_slots(model)
    state = {k: v for k, v in model.state_dict().items()}
    parent, attr = find_layer_list(model)
    prefix = [n for n, m in model.named_modules() if m is slots][0] + "."
    ref.load_state_dict({k: v for k, v in state.items() if not k.startswith(prefix)}, strict=False)
    for k, src in enumerate(plan):
        layer_slots(ref)[k].load_state_dict(slots[src].state_dict())
    return ref


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
@pytest.mark.parametrize("unique,depth,method", [(3, 6, "extend"), (2, 5, "extend"), (3, 5, "stack"), (1, 4, "extend")])
def test_shared_pass_equals_unrolled_copies(kind, unique, depth, method):
    model = _gpt2() if kind == "gpt2" else _bert()
    assert kind == "bert" or model.config.use_cache  # the default config, cache on
    model.eval()  # no dropout, so the two passes are comparable; the cache is on in eval mode too
    plan = depth_plan(unique, depth, method)
    ref = _unrolled(model, plan).eval()
    batch = _batch(kind)

    with run_along(model, plan):
        loss = model(**batch).loss
    loss.backward()
    ref_loss = ref(**batch).loss
    ref_loss.backward()

    assert torch.allclose(loss, ref_loss, rtol=0, atol=1e-6), (loss.item(), ref_loss.item())
    slots = layer_slots(model)
    assert_grads_are_summed_over_uses(slots, layer_slots(ref), plan, unique)
    for u in range(unique, L):  # idle slots take no part in the pass
        assert all(p.grad is None for p in slots[u].parameters())
    # Outside the block the model is the stock L-layer model again, cache setting restored.
    assert len(layer_slots(model)) == L
    assert kind == "bert" or model.config.use_cache is True


def test_without_disabling_the_cache_gpt2_gradients_are_wrong():
    """The trap the hook guards against: swapping the list alone, with use_cache on, gives wrong results."""
    model = _gpt2().eval()
    plan = depth_plan(2, 4)
    batch = _batch("gpt2")
    parent, attr = find_layer_list(model)
    slots = getattr(parent, attr)
    setattr(parent, attr, torch.nn.ModuleList([slots[i] for i in plan]))
    naive = model(**batch, use_cache=True).loss
    setattr(parent, attr, slots)
    with run_along(model, plan):
        correct = model(**batch).loss
    ref = _unrolled(model, plan).eval()(**batch).loss
    assert torch.allclose(correct, ref, atol=1e-6)
    assert not torch.allclose(naive, ref, atol=1e-6)


def test_identity_plan_is_the_stock_forward():
    model = _gpt2().eval()
    batch = _batch("gpt2")
    plain = model(**batch).loss
    with run_along(model, list(range(L))):
        assert torch.equal(model(**batch).loss, plain)


def test_find_layer_list_paths():
    assert find_layer_list(_gpt2())[1] == "h"
    assert find_layer_list(_bert())[1] == "layer"
