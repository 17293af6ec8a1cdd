"""Tokenizers: a Hub/local one by name, or one trained on the training text and cached by content.

Offline by default: without --tokenizer_name we train an 8k byte-level BPE (GPT-2 and the other
decoder families, with the special tokens each family's config expects) or WordPiece (BERT)
tokenizer with `tokenizers` in a few seconds and reuse it on later runs.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .kinds import kind_of

_FORMAT = "v1"  # bump when the training recipe below changes, so old caches are not reused


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("APOLLO_CACHE") or Path.home() / ".cache" / "apollo")


def _train(model_type: str, texts, vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import ByteLevelBPETokenizer, BertWordPieceTokenizer

    kind = kind_of(model_type)  # which tokenizer, and the special tokens the kind expects (apollo/kinds.py)
    if kind.tokenizer == "byte_bpe":
        tok = ByteLevelBPETokenizer()
        tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                                special_tokens=kind.special_token_list(), show_progress=False)
        return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=1_000_000, **kind.special_tokens)
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, show_progress=False,
                            special_tokens=kind.special_token_list())
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=1_000_000, **kind.special_tokens)


def local_tokenizer(model_type: str, train_split, data_key: str, vocab_size: int, cache_dir: str | None):
    """Train (or load from cache) a tokenizer on a split's 'text'; `data_key` identifies that data."""
    key = hashlib.sha256(f"{_FORMAT}|{model_type}|{vocab_size}|{data_key}".encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / "tokenizers" / f"{model_type}-{vocab_size}-{key}"
    if not (path / "tokenizer.json").exists():
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        texts = (train_split[i:i + 1000]["text"] for i in range(0, len(train_split), 1000))
        _train(model_type, texts, vocab_size).save_pretrained(tmp)
        if kind_of(model_type).family_tokenizer_class:
            # AutoTokenizer picks the tokenizer class from a config beside the files (Qwen2Tokenizer for
            # qwen2, with its own default pad token), as it will in the final output folder; with the
            # family's config here too, the run trains with exactly the tokenizer it saves.
            from transformers import CONFIG_MAPPING

            CONFIG_MAPPING[model_type]().save_pretrained(tmp)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, path)  # atomic: a concurrent process either wins or finds it complete
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(path)


def load_tokenizer(name: str):
    return AutoTokenizer.from_pretrained(name)
