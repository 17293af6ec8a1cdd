"""Training FLOPs of one micro-batch at executed depth D (method spec, section 5), counted from the model.

No family table: for each (config, batch, sequence length) the stock model of the config is built on fake
tensors (`FakeTensorMode`: shapes and dtypes only, no memory, no arithmetic) and its stock forward is run
under `torch.utils.flop_counter.FlopCounterMode` along plans of depth 1 and 2 (`run_along`, the hook
training uses; at depth 1 with its backward, counted apart, for the check below). Per layer = the
difference between the depths; head = the rest, what runs once per pass outside the blocks (the LM head,
BERT's MLM transform). Counted once per shape and cached; a step looks it up. tests/test_family_walk.py
checks the count against FlopCounterMode on real tensors at depths 1 and 3 (so also that it is linear in
depth) for every family the walk trains.

What FlopCounterMode counts: matrix multiplications at 2 FLOPs per multiply-add (projections, attention
scores and weighted values at full T x T, as SDPA and eager attention compute them, the LM head at every
position) and convolutions; embedding lookups, norms, softmax, activations and dropout count 0. A layer used
k times counts k times. Mixture-of-experts blocks are counted with transformers' `batched_mm` experts, which
compute exactly the top-k experts of every token: the work any exact implementation executes (the eager
loop and `grouped_mm` run the same (token, expert) pairs; FlopCounterMode has no formula for `grouped_mm`).

Training = forward + 2 x forward (backward of y = x W is dL/dx and dL/dW, two matmuls of the same size;
the first projection's input gradient is not skipped: it flows on to the trainable embeddings). This is the
method spec's rule. The backward counted at depth 1 must agree with it within 1% of a layer's work
(`apollo.families` refuses a family otherwise, e.g. Mamba, whose scan's backward does more); the rule does
not count what a fused kernel recomputes in its backward (CPU SDPA recomputes Q K^T: tests/test_families.py
pins that difference).

The analytic GPT-2 and BERT formulas (`reference_forward_flops`) are the documented reference; the tests
check the general count against them and against FlopCounterMode on real tensors.
"""
from __future__ import annotations

import contextlib
import logging

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

BACKWARD_MULTIPLIER = 2

aten = torch.ops.aten
# The fused CPU attention kernels have no formula in FlopCounterMode (it would count them 0); these are
# torch's own SDPA formulas, which its CUDA kernels are counted with.
CPU_SDPA_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v),
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad_out, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad_out, q, k, v),
}

_COUNTS: dict[tuple, tuple[int, int, int]] = {}


def count_forward(model, input_ids, plan) -> int:
    """FLOPs of the stock forward of `model` along `plan`, as FlopCounterMode counts them (CPU SDPA included)."""
    from .shared_layers import run_along

    counter = FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS)
    with counter, torch.no_grad(), run_along(model, plan):
        model(input_ids=input_ids)
    return counter.get_total_flops()


def count_forward_backward(model, input_ids, plan) -> tuple[int, int]:
    """(forward, backward) FLOPs of one training pass of `model` along `plan`, counted separately."""
    from .shared_layers import run_along

    forward = FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS)
    backward = FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS)
    with run_along(model, plan):
        with forward:
            loss = model(input_ids=input_ids, labels=input_ids).loss
        with backward:
            loss.backward()
    return forward.get_total_flops(), backward.get_total_flops()


@contextlib.contextmanager
def fake_model(config, depth: int, **kwargs):
    """The config's stock model at `depth` layers on fake tensors (inside the block only)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .families import config_at_depth
    from .kinds import build_model

    # A forward that fails on fake tensors is reported by the caller in one line; torch would also log
    # the failing op's traceback at error level.
    fake_log = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake_log.level
    fake_log.setLevel(logging.CRITICAL)
    try:
        with FakeTensorMode():
            yield build_model(config_at_depth(config, depth), experts_implementation="batched_mm", **kwargs)
    finally:
        fake_log.setLevel(level)


def counted(config, batch_size: int, seq_len: int) -> tuple[int, int, int]:
    """(per-layer forward, head forward, backward at depth 1) FLOPs of one shape, counted once and cached.

    On fake tensors: a training pass at depth 1 (forward and backward counted apart) and a forward at
    depth 2. Eager attention: the work SDPA does, as plain matmuls, whichever kernel a device would pick
    (the walk checks that SDPA and eager counts on real tensors agree). Eval mode: no dropout.
    """
    key = (config.to_json_string(use_diff=False), batch_size, seq_len)
    if key not in _COUNTS:
        with fake_model(config, 2, attn_implementation="eager") as model:
            ids = torch.zeros(batch_size, seq_len, dtype=torch.long)
            one, backward = count_forward_backward(model.eval(), ids, [0])
            two = count_forward(model, ids, [0, 1])
        _COUNTS[key] = (two - one, 2 * one - two, backward)
    return _COUNTS[key]


def backward_excess(config, batch_size: int, seq_len: int) -> float:
    """How far the counted backward at depth 1 is from the rule's 2 x forward, as a share of one layer's
    training FLOPs (3 x its forward): 0 where all the work is matmuls whose operands both need gradients.
    The head is such a matmul, so the excess is the layer's, and the rule is off by at most this share
    at any depth."""
    layer, head, backward = counted(config, batch_size, seq_len)
    return (backward - BACKWARD_MULTIPLIER * (layer + head)) / ((1 + BACKWARD_MULTIPLIER) * layer)


def forward_flops(config, batch_size: int, seq_len: int, depth: int) -> int:
    """Forward FLOPs (2 per multiply-add) of the embeddings-to-logits pass at `depth` layers."""
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    layer, head, _ = counted(config, batch_size, seq_len)
    return depth * layer + head


def training_flops(config, batch_size: int, seq_len: int, depth: int) -> int:
    """FLOPs of forward + backward of one micro-batch at `depth` layers: 3 x forward."""
    return (1 + BACKWARD_MULTIPLIER) * forward_flops(config, batch_size, seq_len, depth)


def step_flops(config, batch_size: int, seq_len: int, depths, processes: int) -> float:
    """FLOPs of one optimizer step over all processes: each runs one micro-batch at each of `depths` (every
    process draws the same depths)."""
    total = 0.0
    for depth in depths:
        total += training_flops(config, batch_size, seq_len, depth) * processes
    return total


def reference_forward_flops(config, batch_size: int, seq_len: int, depth: int) -> int:
    """The analytic count for GPT-2 and BERT, the documented reference for the general one.

    Per layer: Q, K, V and output projections (4 x hidden^2 per token), the two MLP matmuls (GPT-2
    `n_inner` or 4 x n_embd; BERT `intermediate_size`), the scores Q K^T and the weighted values, each a
    full T x T product over all heads (SDPA and eager attention compute the causal case in full and mask
    it). Head: hidden -> vocab at every position, plus BERT's MLM transform (hidden -> hidden); BERT's
    MLM head computes logits at every position, masked or not. Biases add no matmul work.
    """
    if config.model_type == "gpt2":
        hidden, inner = config.n_embd, config.n_inner if config.n_inner is not None else 4 * config.n_embd
    elif config.model_type == "bert":
        hidden, inner = config.hidden_size, config.intermediate_size
    else:
        raise ValueError(f"the reference formula covers gpt2 and bert, got {config.model_type!r}")
    tokens = batch_size * seq_len
    layer = 2 * tokens * 4 * hidden * hidden + 2 * tokens * 2 * hidden * inner + 2 * 2 * tokens * seq_len * hidden
    mlm_transform = 2 * tokens * hidden * hidden if config.model_type == "bert" else 0
    head = 2 * tokens * hidden * config.vocab_size + mlm_transform
    return depth * layer + head
