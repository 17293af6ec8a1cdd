"""Analytic training FLOPs of one micro-batch at executed depth D (method spec, section 5).

Only matrix multiplications count, at 2 FLOPs per multiply-add, as
`torch.utils.flop_counter.FlopCounterMode` counts them; embedding lookups, layer norms, softmax,
activations and dropout count 0. Apollo runs D layer positions that share U <= D unique layers;
the work is done once per position, so a layer used k times counts k times. (Parameter-based
estimates such as 6N per token undercount this: N holds each shared layer once.)

tests/test_flops.py checks `forward_flops` against FlopCounterMode on the stock Hugging Face
models and `training_flops` against a measured forward + backward.
"""
from __future__ import annotations

# Backward of a matmul y = x @ W is two matmuls of the same size (dL/dx and dL/dW), so one
# training pass is forward + 2 x forward. The first projection's input gradient is not skipped:
# it flows on to the trainable embeddings.
BACKWARD_MULTIPLIER = 2


def _dims(config) -> tuple[int, int, int, bool]:
    """(hidden size, MLP inner size, vocabulary size, has MLM head transform) for a config."""
    kind = getattr(config, "model_type", None)
    if kind == "gpt2":
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        return config.n_embd, inner, config.vocab_size, False
    if kind == "bert":
        return config.hidden_size, config.intermediate_size, config.vocab_size, True
    raise ValueError(f"forward_flops supports model_type 'gpt2', 'bert' and the decoders of "
                     f"apollo.families.MLP_MATRICES, got {kind!r}")


def _decoder_shape(config):
    """(hidden, query width, key/value width, MLP inner size, MLP matrices) of a decoder family, or None.

    Grouped-query attention: K and V project to num_key_value_heads x head_dim (head_dim from the
    config where it is set, as Qwen3's is, else hidden // heads). The MLP matrix count (3 when gated)
    is apollo.families.MLP_MATRICES, the one fact per family that the config does not state.
    """
    from .families import MLP_MATRICES

    matrices = MLP_MATRICES.get(getattr(config, "model_type", None))
    if matrices is None:
        return None
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return config.hidden_size, heads * head_dim, kv_heads * head_dim, config.intermediate_size, matrices


def layer_flops(config, batch_size: int, seq_len: int) -> int:
    """Forward FLOPs of one transformer layer over a batch of `batch_size` x `seq_len` tokens."""
    decoder = _decoder_shape(config)
    if decoder is not None:
        # Q and O at the query width, K and V at the (grouped) key/value width; the scores and the
        # weighted values run per query head (K and V are repeated or broadcast to every head).
        hidden, q_width, kv_width, inner, matrices = decoder
        tokens = batch_size * seq_len
        projections = 2 * tokens * (2 * hidden * q_width + 2 * hidden * kv_width)
        mlp = 2 * tokens * matrices * hidden * inner
        attention = 2 * 2 * batch_size * seq_len * seq_len * q_width
        return projections + mlp + attention
    hidden, inner, _, _ = _dims(config)
    tokens = batch_size * seq_len
    projections = 2 * tokens * 4 * hidden * hidden  # Q, K, V and the output projection
    mlp = 2 * tokens * 2 * hidden * inner  # up and down projections
    # Scores Q K^T and the weighted sum of values, summed over heads (heads * head_dim = hidden).
    # Both are full T x T products: SDPA and eager attention compute the causal (GPT-2) case in
    # full and mask it, so the masked half is not free.
    attention = 2 * 2 * batch_size * seq_len * seq_len * hidden
    return projections + mlp + attention


def head_flops(config, batch_size: int, seq_len: int) -> int:
    """Forward FLOPs of the LM head, applied at every position.

    GPT-2: hidden -> vocab. BERT: the MLM transform (dense hidden -> hidden) then decoder
    hidden -> vocab; BertForMaskedLM computes logits at every position, masked or not.
    """
    if _decoder_shape(config) is not None:  # one hidden -> vocab matmul, tied to the embeddings or not
        return 2 * batch_size * seq_len * config.hidden_size * config.vocab_size
    hidden, _, vocab, has_transform = _dims(config)
    tokens = batch_size * seq_len
    flops = 2 * tokens * hidden * vocab
    if has_transform:
        flops += 2 * tokens * hidden * hidden
    return flops


def forward_flops(config, batch_size: int, seq_len: int, depth: int) -> int:
    """Forward FLOPs (2 per multiply-add) of the embeddings-to-logits pass at `depth` layers.

    `config` is a GPT2Config, a BertConfig or a decoder family's config (Llama, Qwen2, Mistral, GPT-NeoX,
    ...; detected by `config.model_type`; for those see `_decoder_shape`: grouped-query attention,
    gated MLPs, the LM head whether tied or not). Biases add no matmul work and count 0, as in
    FlopCounterMode. Counted: per layer
    the Q, K, V, O projections, the two MLP matmuls (GPT-2 `n_inner` or 4 * n_embd; BERT
    `intermediate_size`), the attention scores Q K^T and attention-weighted values (full T x T,
    as SDPA computes them), plus the LM head over all positions. Embedding lookups, layer norms,
    softmax and activations count 0 (matmul-only, like FlopCounterMode).
    """
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    return int(depth * layer_flops(config, batch_size, seq_len) + head_flops(config, batch_size, seq_len))


def training_flops(config, batch_size: int, seq_len: int, depth: int) -> int:
    """FLOPs of forward + backward of one micro-batch at `depth` layers: 3 x forward."""
    return (1 + BACKWARD_MULTIPLIER) * forward_flops(config, batch_size, seq_len, depth)
