"""Which Hugging Face model families Apollo can share, decided from the config (and, as a last check,
from the blocks of a model built on the meta device).

Apollo runs D layer positions along U shared blocks and copies blocks at growth, so a family qualifies
only if its blocks are one `nn.ModuleList` of interchangeable blocks: block k must compute the same
function wherever it sits. Families whose blocks differ by position are refused with the reason:
per-layer attention types or sliding windows (`layer_types` with mixed values), MoE on some layers
only, per-layer KV sharing, per-layer config overrides. BERT keeps its own (masked-LM) path; other
encoders are refused, since the masking, data framing and evaluation here are BERT's.

Beyond sharing, a family needs a FLOPs formula (`apollo/flops.py`), whose MLP shape (plain or gated)
the config does not state: `MLP_MATRICES` below is that one fact per family, checked against
`FlopCounterMode` in tests/test_flops.py. A family that shares safely but is missing there is refused
with a message saying so.
"""
from __future__ import annotations

import torch
from transformers import CONFIG_MAPPING, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

# The two families with their own paths (data framing, tokenizer, heads).
OWN_PATH = ("bert", "gpt2")

# Weight matrices in one block's MLP: 3 for gated MLPs (gate, up, down; Phi-3 fuses gate and up
# into one matrix of twice the width, which is the same work), 2 for plain ones (up, down).
MLP_MATRICES = {"llama": 3, "mistral": 3, "qwen2": 3, "qwen3": 3, "phi3": 3, "olmo": 3, "olmo2": 3, "gpt_neox": 2}
DECODERS = tuple(MLP_MATRICES)

# Scalar config fields that make blocks differ by position when set (name -> why, test on the value).
_POSITION_KNOBS = {
    "first_k_dense_replace": ("MoE on some layers only (the first k layers are dense)", lambda v, c: (v or 0) > 0),
    "decoder_sparse_step": ("MoE on some layers only (every n-th layer)", lambda v, c: (v or 1) > 1),
    "interleave_moe_layer_step": ("MoE on some layers only (every n-th layer)", lambda v, c: (v or 1) > 1),
    "moe_layer_freq": ("MoE on some layers only", lambda v, c: isinstance(v, (list, tuple)) or (v or 1) > 1),
    "mlp_only_layers": ("MoE on some layers only (mlp_only_layers)", lambda v, c: bool(v)),
    "num_kv_shared_layers": ("per-layer KV sharing (later layers reuse earlier layers' keys and values)",
                             lambda v, c: (v or 0) > 0),
    "max_window_layers": ("sliding-window attention on some layers only (use_sliding_window with "
                          "max_window_layers < num_hidden_layers)",
                          lambda v, c: bool(getattr(c, "use_sliding_window", False)) and v is not None
                          and getattr(c, "sliding_window", None) is not None and v < c.num_hidden_layers),
}


def refusal(config) -> str | None:
    """Why this config's model cannot be trained with shared blocks here, or None if it can."""
    kind = config.model_type
    if kind in OWN_PATH:
        return None
    if getattr(config, "is_encoder_decoder", False):
        return f"{kind} is an encoder-decoder model; only decoder-only causal LMs (and BERT) are supported"
    if kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return f"{kind} is an encoder (masked LM); of the encoders only BERT is supported"
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return f"{kind} has no causal LM head in transformers; only decoder-only causal LMs (and BERT) are supported"
    depth = getattr(config, "num_hidden_layers", None)
    if not isinstance(depth, int):
        return f"{kind} config has no single num_hidden_layers (a composite or multimodal config)"
    spec = getattr(config, "_heterogeneity_spec", None)
    if spec is not None and getattr(spec, "per_layer_overrides", None):
        return f"blocks differ by position: per_layer_config overrides layers {sorted(spec.per_layer_overrides)}"
    for name, value in sorted(config.to_dict().items()):
        if isinstance(value, (list, tuple)) and len(value) == depth and depth > 1 \
                and len({repr(v) for v in value}) > 1:
            shown = ", ".join(sorted({repr(v) for v in value}))
            return f"blocks differ by position: {name} has per-layer values ({shown}), so a shared block cannot " \
                   f"stand in for every position"
    for name, (why, applies) in _POSITION_KNOBS.items():
        if hasattr(config, name) and applies(getattr(config, name), config):
            return f"blocks differ by position: {why} ({name}={getattr(config, name)!r})"
    return None


def block_refusal(config) -> str | None:
    """The last check, on the blocks themselves: one list of blocks of one class and one shape.

    Built on the meta device (no memory, no initialisation). Catches what no config field states.
    """
    from .shared_layers import layer_slots

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    try:
        slots = layer_slots(model)
    except ValueError as err:
        return str(err)
    shapes = {repr([(type(m).__name__, n) for n, m in block.named_modules()]
                   + [(n, tuple(p.shape)) for n, p in block.named_parameters()]) for block in slots}
    if len(shapes) > 1:
        return f"blocks differ by position: the {len(slots)} blocks of {type(model).__name__} do not all have " \
               f"the same modules and shapes"
    return None


def check_family(config) -> str | None:
    """Everything that decides whether a non-BERT, non-GPT-2 config is supported; None if it is."""
    why = refusal(config)
    if why is None and config.model_type not in OWN_PATH:
        why = block_refusal(config)
    if why is None and config.model_type not in OWN_PATH and config.model_type not in MLP_MATRICES:
        why = (f"{config.model_type} could share its blocks, but apollo/flops.py has no FLOPs formula for it "
               f"(supported decoders: {', '.join(DECODERS)})")
    return why


def special_tokens(model_type: str) -> dict[str, str | None]:
    """Special tokens of a locally trained byte-level BPE for a decoder family, named after what the
    family's default config expects: an end-of-text token always (it separates documents), a distinct
    begin-of-text token where the config's bos differs from its eos, a pad token where it names one.
    `fit_vocabulary` then sets the config's ids from the tokenizer, so the two always agree."""
    if model_type == "gpt2":
        return {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": None}
    default = CONFIG_MAPPING[model_type]()
    bos, eos, pad = (getattr(default, f"{t}_token_id", None) for t in ("bos", "eos", "pad"))
    distinct_bos = bos is not None and bos != eos
    return {"bos_token": "<s>" if distinct_bos else "<|endoftext|>" if bos is not None else None,
            "eos_token": "</s>" if distinct_bos else "<|endoftext|>",
            "pad_token": None if pad is None else "<pad>" if pad not in (bos, eos) else
            "</s>" if distinct_bos and pad == eos else "<s>" if distinct_bos else "<|endoftext|>"}


def parse_overrides(text: str | None, config) -> dict:
    """`--config_overrides "a=1,b=true"` as a dict, each value typed like the config's current value
    (as `update_from_string` does), or read as int / float / bool / None / string where that is None."""
    parsed = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        if not hasattr(config, key):
            raise ValueError(f"key {key} isn't in the {config.model_type} config")
        parsed[key] = _typed(value, getattr(config, key), key)
    return parsed


def _typed(value: str, old, key: str):
    truth = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if isinstance(old, bool) or (old is None and value.lower() in ("true", "false")):
        if value.lower() not in truth:
            raise ValueError(f"can't derive true or false from {value} (key {key})")
        return truth[value.lower()]
    if old is None and value.lower() in ("none", "null"):
        return None
    for kind in ((int,) if isinstance(old, int) else (float,) if isinstance(old, float) else (int, float)
                 if not isinstance(old, str) else ()):
        try:
            return kind(value)
        except ValueError:
            if isinstance(old, (int, float)):
                raise ValueError(f"{key}={value} is not a number") from None
    return value


def build_config(model_type: str, overrides: dict):
    """A default config of the family with `overrides` passed to its constructor, so that derived
    fields follow them (Llama's head_dim = hidden_size // num_attention_heads, Qwen2's layer_types
    from use_sliding_window and max_window_layers); setting attributes afterwards would leave them stale."""
    return CONFIG_MAPPING[model_type](**overrides)
