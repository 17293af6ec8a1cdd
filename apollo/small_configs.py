"""A family's default config shrunk by rule: the size fields are told by their names, not listed per family.

Used by the family walk (benchmarks/family_walk.py, tests/test_family_walk.py) and the benchmarks to build
small models of any family. The shrunk values go to the family's config constructor, so derived fields
(head_dim from width and heads, layer_types from the depth, ...) follow them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from transformers import CONFIG_MAPPING


@dataclass(frozen=True)
class Sizes:
    layers: int = 4
    width: int = 32
    heads: int = 4
    kv_heads: int = 2  # key/value heads: grouped-query attention (see shrink_overrides)
    head_dim: int = 8
    inner: int = 48  # every MLP / expert width, where the family's is larger
    vocab: int = 512
    positions: int = 64
    experts: int = 4
    top_k: int = 2
    rank: int = 16  # low-rank projections (multi-head latent attention)


# Field names per size, as the families of transformers spell them.
NAMES = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers"),
    "width": ("hidden_size", "n_embd", "d_model", "n_embed", "embedding_size", "word_embed_proj_dim"),
    "heads": ("num_attention_heads", "n_head", "num_heads", "n_heads", "decoder_attention_heads"),
    "head_dim": ("head_dim", "attention_head_dim", "d_head", "kv_channels", "attention_head_size", "dim_head",
                 "qk_head_dim", "v_head_dim", "qk_nope_head_dim", "qk_rope_head_dim"),
    "vocab": ("vocab_size",),
    "positions": ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "context_length"),
    "experts": ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"),
    "top_k": ("num_experts_per_tok", "moe_topk", "top_k", "num_selected_experts", "moe_top_k"),
    "rank": ("kv_lora_rank", "q_lora_rank"),
}
KV_HEAD_NAMES = ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "num_query_groups", "multi_query_group_num")
ROTARY_NAMES = ("rotary_dim",)  # a partial rotary width: half the head
INNER_NAME_PARTS = ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", "d_inner", "dim_ff",
                    "feed_forward_size")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def shrink_overrides(default, sizes: Sizes = Sizes(), group_kv: bool = True) -> dict:
    """Constructor arguments that shrink `default` (a family's default config) to `sizes`. Key/value heads:
    `sizes.kv_heads` wherever the family has the field (grouped-query attention, also for a family whose
    default has full attention) unless `group_kv` is False; multi-query families keep 1."""
    fields, wanted = default.to_dict(), asdict(sizes)
    out = {name: wanted[size] for size, names in NAMES.items() for name in names if _is_int(fields.get(name))}
    heads = next((fields[n] for n in NAMES["heads"] if _is_int(fields.get(n))), None)
    for name in KV_HEAD_NAMES:  # multi-query stays so; full attention is grouped only when asked to
        if name in fields:
            value = fields[name]
            out[name] = 1 if value == 1 else sizes.heads if value == heads and not group_kv else sizes.kv_heads
    out |= {name: sizes.head_dim // 2 for name in ROTARY_NAMES if _is_int(fields.get(name))}
    out |= {name: sizes.inner for name, value in fields.items()
            if _is_int(value) and value > sizes.inner and any(part in name for part in INNER_NAME_PARTS)}
    # Special token ids inside the small vocabulary (the tokenizer sets them again for a run).
    out |= {f"{role}_token_id": i for i, role in enumerate(("pad", "bos", "eos"))
            if _is_int(fields.get(f"{role}_token_id"))}
    return out


def small_config(model_type: str, sizes: Sizes = Sizes(), group_kv: bool = True):
    """The family's default config, shrunk to `sizes` by rule."""
    config = CONFIG_MAPPING[model_type](**shrink_overrides(CONFIG_MAPPING[model_type](), sizes, group_kv))
    if getattr(config, "num_hidden_layers", None) != sizes.layers:
        raise ValueError(f"the shrunk {model_type} config has {getattr(config, 'num_hidden_layers', None)} layers, "
                         f"not {sizes.layers}: its depth is a field the rule does not know")
    return config
