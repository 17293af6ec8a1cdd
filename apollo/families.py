"""Which Hugging Face model families Apollo can train, decided from the config and the model itself.

Apollo runs D layer positions along U shared blocks and copies blocks at growth, so a family qualifies
only if its blocks are one `nn.ModuleList` of interchangeable blocks: block k must compute the same
function wherever it sits. Families whose blocks differ by position are refused with the reason:
per-layer attention types or sliding windows (`layer_types` with mixed values), MoE on some layers
only, per-layer KV sharing, per-layer config overrides. BERT keeps its own (masked-LM) path; other
encoders are refused, since the masking, data framing and evaluation here are BERT's. Then the model is
built on the meta device (its blocks must have one class and one shape) and its FLOPs are counted from
its own modules (`apollo/flops.py`); a family whose forward cannot be counted so is refused with the
reason. No list of family names: `benchmarks/family_walk.py` sorts every causal-LM family of the
installed transformers by these rules and checks the ones they accept.
"""
from __future__ import annotations

import copy

import torch
from transformers import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from .kinds import build_model, kind_of

TRAINING_RULE_TOLERANCE = 0.01  # how far a layer's counted forward + backward may be from 3 x its forward

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
    if getattr(config, "is_encoder_decoder", False):
        return f"{kind} is an encoder-decoder model; only decoder-only causal LMs (and BERT) are supported"
    if kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not kind_of(kind).masked:
        return f"{kind} is an encoder (masked LM); of the encoders only BERT is supported"
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return f"{kind} has no causal LM head in transformers; only decoder-only causal LMs (and BERT) are supported"
    depth = getattr(config, "num_hidden_layers", None)
    if not isinstance(depth, int):
        return f"{kind} config has no single num_hidden_layers (a composite or multimodal config)"
    stored = config.to_dict().get("num_hidden_layers", depth)
    if stored != depth:  # e.g. a looped model: blocks run several times by design
        return f"{kind} config has {stored} layers stored but num_hidden_layers reads {depth} (layers run in " \
               f"loops or sections of their own)"
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

    try:
        with torch.device("meta"):
            model = build_model(config)
    except Exception as err:  # the family's own code fails on this config
        return f"the {config.model_type} model cannot be built from its config ({one_line(err)})"
    try:
        slots = layer_slots(model)
    except ValueError as err:
        return str(err)
    shapes = {repr([(type(m).__name__, n) for n, m in block.named_modules()]
                   + [(n, tuple(p.shape)) for n, p in block.named_parameters()]) for block in slots}
    if len(shapes) > 1:
        return f"blocks differ by position: the {len(slots)} blocks of {type(model).__name__} do not all have " \
               f"the same modules and shapes"
    differing = _differing_settings(slots)
    if differing:
        return f"blocks differ by position: their modules hold settings that depend on the layer index " \
               f"({', '.join(differing[:3])})"
    return None


def _differing_settings(slots) -> list[str]:
    """Scalar attributes of the blocks' modules that differ between blocks (e.g. DiffLlama's lambda_init,
    computed from the layer index). The layer index itself (k + a constant in block k) is left out: it
    names the block's cache slot, and the shared pass runs without a cache."""
    def settings(block):
        return {f"{name}.{key}".lstrip("."): value for name, module in block.named_modules()
                for key, value in vars(module).items()
                if not key.startswith("_") and isinstance(value, (int, float, str, bool, type(None)))}

    per_block = [settings(block) for block in slots]
    differing = []
    for key in per_block[0]:
        values = [s.get(key) for s in per_block]
        is_index = all(isinstance(v, int) and not isinstance(v, bool) for v in values) \
            and len({v - k for k, v in enumerate(values)}) == 1
        if len(set(map(repr, values))) > 1 and not is_index:
            differing.append(key)
    return differing


def flops_refusal(config) -> str | None:
    """Why the FLOPs of this config's model cannot be counted from its modules (apollo/flops.py), or None.

    Counted on fake tensors at a small shape. Also checks the method spec's rule that training costs
    3 x the forward: true wherever the work is matmuls whose operands both need gradients, and not, for
    example, for a recurrent scan whose backward does more (Mamba).
    """
    from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException

    from .flops import BACKWARD_MULTIPLIER, backward_excess

    try:
        excess = backward_excess(config, 1, 16)
    except (DataDependentOutputException, DynamicOutputShapeException) as err:
        return f"{config.model_type}: its forward has data-dependent shapes (as a mixture-of-experts loop over the " \
               f"tokens routed to each expert has), so its FLOPs cannot be counted from its modules ({one_line(err)})"
    except Exception as err:  # whatever else the stock forward raises on fake tensors
        return f"{config.model_type}: its FLOPs cannot be counted from its modules on fake tensors ({one_line(err)})"
    if abs(excess) > TRAINING_RULE_TOLERANCE:
        rule = 1 + BACKWARD_MULTIPLIER
        return f"{config.model_type}: forward + backward of a layer counts {rule * (1 + excess):.2f} x its forward, " \
               f"not the {rule} x of the training FLOPs rule (method spec, section 5)"
    return None


def one_line(err: Exception) -> str:
    """An exception as one short line: its type and the last line of its message."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {(lines[-1] if lines else '')[:200]}"


def check_family(config) -> str | None:
    """Everything that decides whether a config is supported; None if it is."""
    return refusal(config) or block_refusal(config) or flops_refusal(config)


def config_at_depth(config, depth: int):
    """A copy of the config at another depth. Per-layer lists (uniform, or `refusal` would have refused
    the config) are cut or extended to the new depth, so every layer index still finds its entry."""
    old = config.num_hidden_layers
    new = copy.deepcopy(config)
    for name, value in config.to_dict().items():
        if isinstance(value, (list, tuple)) and len(value) == old and old > 0 and hasattr(new, name):
            setattr(new, name, type(value)([value[-1]] * depth))
    new.num_hidden_layers = depth
    return new


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
