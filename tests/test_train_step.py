"""The loop's step and growth called directly, on a tiny GPT-2 in this process (no command-line run).

- `train_step` against a hand-written step: the micro-batches' losses averaged, gradients clipped, the
  scheduled LR times the growth ramp's factor for this step only, one update, the scheduler stepped once;
- a non-finite loss raises before the update reaches the weights;
- `grow_at_boundary` then the next step's plans (`DepthDraws`): the new slots are copies along the growth map,
  the plans use exactly the grown slots, and the step trains those and leaves the idle slots alone.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from transformers import GPT2Config, GPT2LMHeadModel, get_scheduler

from apollo.growth import Growth, grow_at_boundary
from apollo.plan import depth_plan, growth_map
from apollo.shared_layers import layer_slots, run_along
from apollo.train_step import DepthDraws, train_step

L, VOCAB, SEQ, BATCH = 4, 64, 8, 2


@pytest.fixture
def accelerator():
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)


def tiny_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=L, n_embd=16, n_head=2, vocab_size=VOCAB, n_positions=SEQ,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def micro_batches(n: int, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def optimizer_and_schedule(model):
    # SGD: unlike Adam's, its update shows a wrong gradient scale (e.g. micro-batch losses summed, not averaged).
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=0, num_training_steps=10)
    return optimizer, scheduler


def reference_step(model, optimizer, scheduler, batches, plans, lr_factor, max_grad_norm):
    """The step written out: mean of the micro-batch losses, clip, the scaled LR, the update, the scheduler."""
    losses = []
    for batch, plan in zip(batches, plans):
        with run_along(model, plan):
            loss = model(**batch).loss
        (loss / len(plans)).backward()
        losses.append(loss.item())
    if max_grad_norm:
        assert torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm) > max_grad_norm  # clipping acts
    lr = scheduler.get_last_lr()[0] * lr_factor
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return sum(losses) / len(losses), lr


def test_train_step_equals_the_hand_written_step(accelerator):
    reference = tiny_model()
    ref_opt, ref_sched = optimizer_and_schedule(reference)
    model = copy.deepcopy(reference)
    optimizer, scheduler = optimizer_and_schedule(model)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    plans = [[0, 0, 1], [0, 1]]  # two micro-batches at different depths over 2 unique slots
    batches = micro_batches(len(plans))
    for step in range(3):  # the linear decay: the LR changes every step
        factor = 0.5 if step == 1 else 1.0  # the growth ramp scales one step only
        clip = 0.1 if step == 2 else 0.0
        want_loss, want_lr = reference_step(reference, ref_opt, ref_sched, batches, plans, factor, clip)
        got = train_step(accelerator, prepared, accelerator.unwrap_model(prepared), optimizer, scheduler,
                         iter(batches), plans, step=step, lr_factor=factor, max_grad_norm=clip)
        assert got.loss == pytest.approx(want_loss, rel=1e-6)
        assert got.lr == pytest.approx(want_lr, rel=1e-12) and got.lr > 0
        assert not got.stop
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            assert torch.allclose(p, q, rtol=0, atol=1e-6), (step, name)
    assert scheduler.last_epoch == ref_sched.last_epoch == 3  # stepped once per optimizer step


def test_a_non_finite_loss_stops_before_the_update(accelerator, tmp_path):
    model = tiny_model()
    optimizer, scheduler = optimizer_and_schedule(model)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    with torch.no_grad():
        model.transformer.wte.weight[3, 0] = math.nan
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = micro_batches(1)[0]
    batch["input_ids"][0, 0] = 3
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 8; stopped \(last good checkpoint: "):
        train_step(accelerator, prepared, model, optimizer, scheduler, iter([batch]), [[0, 1]], step=7,
                   last_checkpoint=tmp_path / "checkpoint-5")
    for name, p in model.named_parameters():
        assert torch.equal(p.isnan(), before[name].isnan()) and torch.equal(p.nan_to_num(), before[name].nan_to_num())
    assert scheduler.last_epoch == 0


def test_growth_then_the_next_step_trains_the_grown_slots_only(accelerator):
    model = tiny_model()
    optimizer, scheduler = optimizer_and_schedule(model)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    slots = layer_slots(model)
    old = {i: copy.deepcopy(slots[i].state_dict()) for i in range(L)}
    growth = Growth(method="extend", copy_optimizer_state=False, noise=0.0, seed=0)
    prepared, gmap = grow_at_boundary(accelerator, prepared, optimizer.optimizer, 2, 3, growth, step=5,
                                      idle_slots_out_of_ddp=False)
    assert gmap == growth_map(2, 3, "extend") == [0, 0, 1]
    for j, src in enumerate(gmap):  # slot j is now a copy of old slot gmap[j]
        for key, value in slots[j].state_dict().items():
            assert torch.equal(value, old[src][key]), (j, key)
    assert all(torch.equal(v, old[3][k]) for k, v in slots[3].state_dict().items())  # the idle slot is untouched

    draws = DepthDraws("lvps", "extend", seed=0, full_depth=L)
    plans = draws.plans(5, 3, micro_batches=2)
    assert plans == draws.plans(5, 3, micro_batches=2)  # a pure function of the step
    for plan in plans:
        assert plan == depth_plan(3, len(plan), "extend") and set(plan) == {0, 1, 2} and 3 <= len(plan) <= L
    grown = {i: copy.deepcopy(slots[i].state_dict()) for i in range(L)}
    train_step(accelerator, prepared, model, optimizer, scheduler, iter(micro_batches(2)), plans, step=5)
    for i in range(3):  # every grown slot trains
        assert any(not torch.equal(v, grown[i][k]) for k, v in slots[i].state_dict().items()), i
    assert all(torch.equal(v, grown[3][k]) for k, v in slots[3].state_dict().items())  # idle: no gradient, no update
