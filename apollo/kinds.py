"""What differs between model kinds, in one place: objective, evaluation labels, document framing, the
tokenizer's special tokens, the model class, the config fields set from the tokenizer.

Two kinds have records of their own: BERT (masked LM, WordPiece) and GPT-2 (causal LM, the byte-level BPE
of the official release). Every other causal-LM family of transformers gets the decoder record, derived
from the family's default config (which special tokens it names), so a new family needs no entry here.
Whether a family can be trained at all is decided in `apollo/families.py`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from transformers import CONFIG_MAPPING, AutoModelForCausalLM, AutoModelForMaskedLM

# Token roles that can frame a document, with what the role is for (used in error messages).
ROLE_PURPOSE = {"cls": "start-of-document token ([CLS])", "sep": "separator token ([SEP])",
                "eos": "end-of-text token to separate documents"}

# Config fields that bound the sequence length, most common first (GPT-2 and kin name it n_positions).
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "context_length")


@dataclass(frozen=True)
class ModelKind:
    masked: bool  # objective: masked LM (labels only at masked positions) or causal LM (labels = inputs)
    model_class: type  # the transformers Auto class that builds the model from its config
    label_shift: int  # the loss of position t predicts labels[:, t + label_shift] (evaluation counts targets so)
    frame_before: tuple[str, ...]  # token roles put before each document ...
    frame_after: tuple[str, ...]  # ... and after it, when documents are concatenated into blocks
    tokenizer: str  # a locally trained tokenizer: "wordpiece" or "byte_bpe"
    specials: dict | None  # its special tokens by role, in vocabulary order (ids 0, 1, ...); None: see `family`
    ids_from_tokenizer: dict  # config `<role>_token_id` -> the tokenizer role whose id it is set to
    family_tokenizer_class: bool  # the family's config is saved beside a local tokenizer (AutoTokenizer's class)
    rebuild_on_overrides: bool  # --config_overrides go to the config constructor (derived fields follow)
    family: str | None = None  # the decoder family whose default config names the special tokens

    @property
    def special_tokens(self) -> dict[str, str]:
        return self.specials if self.specials is not None else _decoder_special_tokens(self.family)

    def special_token_list(self) -> list[str]:
        return list(dict.fromkeys(self.special_tokens.values()))


BERT = ModelKind(masked=True, model_class=AutoModelForMaskedLM, label_shift=0, frame_before=("cls",),
                 frame_after=("sep",), tokenizer="wordpiece",
                 specials={"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                                 "sep_token": "[SEP]", "mask_token": "[MASK]"},
                 ids_from_tokenizer={"pad": "pad"}, family_tokenizer_class=False, rebuild_on_overrides=False)
GPT2 = ModelKind(masked=False, model_class=AutoModelForCausalLM, label_shift=1, frame_before=(),
                 frame_after=("eos",), tokenizer="byte_bpe",
                 specials={"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                                 "unk_token": "<|endoftext|>"},
                 ids_from_tokenizer={"bos": "eos", "eos": "eos"}, family_tokenizer_class=False,
                 rebuild_on_overrides=False)
_OWN_RECORDS = {"bert": BERT, "gpt2": GPT2}


@functools.lru_cache(maxsize=None)
def kind_of(model_type: str) -> ModelKind:
    """The record of `model_type`: BERT's, GPT-2's, or the decoder record of any other family."""
    if model_type in _OWN_RECORDS:
        return _OWN_RECORDS[model_type]
    return ModelKind(masked=False, model_class=AutoModelForCausalLM, label_shift=1, frame_before=(),
                     frame_after=("eos",), tokenizer="byte_bpe", specials=None,
                     ids_from_tokenizer={"bos": "bos", "eos": "eos", "pad": "pad"}, family_tokenizer_class=True,
                     rebuild_on_overrides=True, family=model_type)


@functools.lru_cache(maxsize=None)
def _decoder_special_tokens(model_type: str) -> dict[str, str]:
    """Special tokens of a locally trained byte-level BPE for a decoder family, named after what the
    family's default config expects: an end-of-text token always (it separates documents), a distinct
    begin-of-text token where the config's bos differs from its eos, a pad token where it names one.
    `fit_vocabulary` then sets the config's ids from the tokenizer, so the two always agree."""
    default = CONFIG_MAPPING[model_type]()
    bos, eos, pad = (getattr(default, f"{t}_token_id", None) for t in ("bos", "eos", "pad"))
    distinct_bos = bos is not None and bos != eos
    named = {"bos_token": "<s>" if distinct_bos else "<|endoftext|>" if bos is not None else None,
             "eos_token": "</s>" if distinct_bos else "<|endoftext|>",
             "pad_token": None if pad is None else "<pad>" if pad not in (bos, eos) else
             "</s>" if distinct_bos and pad == eos else "<s>" if distinct_bos else "<|endoftext|>"}
    return {role: token for role, token in named.items() if token is not None}


def max_positions(config) -> int | None:
    """The longest sequence the config's position embeddings allow, or None where nothing bounds it
    (no such field, or a value below 1: XLNet's -1 means unbounded)."""
    for name in POSITION_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def attention_implementation(config) -> str:
    """SDPA where the family's model class has it (every family that has it runs it by default), else eager."""
    model_class = kind_of(config.model_type).model_class
    concrete = model_class._model_mapping[type(config)]
    return "sdpa" if getattr(concrete, "_supports_sdpa", False) else "eager"


def build_model(config, **kwargs):
    """The stock model of the config's kind, from the config (randomly initialised)."""
    kwargs.setdefault("attn_implementation", attention_implementation(config))
    return kind_of(config.model_type).model_class.from_config(config, **kwargs)
