"""Growth at a stage boundary: function preserved at full depth, sources read before overwritten,
optimizer state positional (official) or copied (option)."""
import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from apollo.growth import grow_layers
from apollo.plan import depth_plan, growth_map
from apollo.shared_layers import layer_slots, run_along


def _model(n_layer=12):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=32, n_head=4, vocab_size=101, n_positions=64)).eval()


def _loss(model, plan):
    ids = torch.randint(0, 101, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), run_along(model, plan):
        return model(input_ids=ids, labels=ids).loss


@pytest.mark.parametrize("old,new,method", [(6, 12, "extend"), (3, 6, "extend"), (1, 3, "extend"),
                                            (3, 6, "stack"), (6, 12, "stack")])
def test_growth_preserves_full_depth_function(old, new, method):
    model = _model()
    before = _loss(model, depth_plan(old, 12, method))  # constant_high sampling: D = L
    grow_layers(layer_slots(model), growth_map(old, new, method))
    after = _loss(model, depth_plan(new, 12, method))
    if method == "extend" or 12 % new == 0:
        assert torch.equal(before, after)


def test_stack_growth_changes_the_function_when_cycles_do_not_line_up():
    """A control for the test above: the full-depth function is not preserved by every growth."""
    model = _model()
    before = _loss(model, depth_plan(3, 12, "extend"))
    grow_layers(layer_slots(model), growth_map(3, 6, "stack"))
    assert not torch.equal(before, _loss(model, depth_plan(6, 12, "extend")))


def test_sources_are_read_before_they_are_overwritten():
    model = _model()
    slots = layer_slots(model)
    original = [copy.deepcopy(s.state_dict()) for s in slots]
    gmap = growth_map(6, 12)  # slot 1 <- 0 but slot 2 <- 1: a naive in-order copy would read the new slot 1
    grow_layers(slots, gmap)
    for j, src in enumerate(gmap):
        for k, v in slots[j].state_dict().items():
            assert torch.equal(v, original[src][k]), (j, src, k)


def _trained(copy_state):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 101, (2, 16), generator=torch.Generator().manual_seed(4))
    for _ in range(3):
        with run_along(model, depth_plan(2, 4)):
            model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    before = {id(p): copy.deepcopy(opt.state.get(p)) for p in model.parameters()}
    grow_layers(layer_slots(model), growth_map(2, 4), opt, copy_optimizer_state=copy_state)
    return model, opt, before


def test_optimizer_state_is_positional_by_default():
    model, opt, before = _trained(copy_state=False)
    slots = layer_slots(model)
    for p in slots[1].parameters():  # slot 1 now holds layer 0's weights but keeps its own moments
        assert torch.equal(opt.state[p]["exp_avg"], before[id(p)]["exp_avg"])
    for p in list(slots[2].parameters()) + list(slots[3].parameters()):  # new slots: no state yet
        assert p not in opt.state


def test_optimizer_state_copied_with_the_weights_on_request():
    model, opt, before = _trained(copy_state=True)
    slots = layer_slots(model)
    for j, src in enumerate(growth_map(2, 4)):
        for p, q in zip(slots[j].parameters(), _orig(model, before, src)):
            assert torch.equal(opt.state[p]["exp_avg"], q["exp_avg"])
            assert torch.equal(opt.state[p]["exp_avg_sq"], q["exp_avg_sq"])
            assert torch.equal(torch.as_tensor(opt.state[p]["step"]), torch.as_tensor(q["step"]))


def _orig(model, before, src):
    return [before[id(p)] for p in layer_slots(model)[src].parameters()]
