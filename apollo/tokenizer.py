"""Tokenizers: a Hub/local one by name, or one trained on the training text and cached by content.

Offline by default: without --tokenizer_name we train an 8k byte-level BPE (GPT-2 and the other
decoder families, with the special tokens each family's config expects) or WordPiece (BERT)
tokenizer with `tokenizers` in a few seconds and reuse it on later runs.

The same text must give the same tokenizer, byte for byte: nodes with node-local caches train
their own, and a run must not depend on which process trained it. `tokenizers`' byte-level BPE
trainer is deterministic (its alphabet is sorted, ties between pairs go to the lower ids). Its
WordPiece trainer is not: it numbers the `##c` continuation pieces in the order it meets words
in a Rust hash map, whose seed changes per process, so ties between equally frequent pairs go
to different pairs in different processes (188-415 of 8k ids differed between fresh caches), and
with more characters than `limit_alphabet` it drops equally rare ones in hash order too.
`_wordpiece` fixes both orders before training (see there).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .config import ConfigError
from .kinds import BERT, ROLE_PURPOSE, kind_of

_FORMAT = "v2"  # bump when the training recipe below changes, so old caches are not reused


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("APOLLO_CACHE") or Path.home() / ".cache" / "apollo")


def _train(model_type: str, texts, vocab_size: int) -> PreTrainedTokenizerFast:
    kind = kind_of(model_type)  # which tokenizer, and the special tokens the kind expects (apollo/kinds.py)
    if kind.tokenizer == "byte_bpe":
        from tokenizers import ByteLevelBPETokenizer

        backend = ByteLevelBPETokenizer()
        backend.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                                    special_tokens=kind.special_token_list(), show_progress=False)
    else:
        backend = _wordpiece(texts, vocab_size)
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=1_000_000, **kind.special_tokens)


WORDPIECE_SPECIALS = BERT.special_token_list()  # [PAD] [UNK] [CLS] [SEP] [MASK]: ids 0-4
LIMIT_ALPHABET = 1000  # BertWordPieceTokenizer's default: the most frequent characters


def _wordpiece(texts, vocab_size: int):
    """BERT's WordPiece (BertWordPieceTokenizer's pipeline: lowercase, BERT pre-tokenizer), trained so
    that the result is a function of the text alone. `texts` is iterated twice.

    1. The alphabet is chosen here: the LIMIT_ALPHABET most frequent characters after normalization,
       ties broken by code point, given to the trainer as its initial alphabet (which it always keeps).
    2. Every `##c` piece of that alphabet that can continue a word is given to the trainer up front,
       in code-point order, as a special token: the trainer then finds each one numbered instead of
       numbering it in hash order, so ties between pairs (broken by id) break the same way every time.
       The pieces stay in the vocabulary as ordinary tokens; only their special-token entries are
       dropped afterwards. (A piece whose character never continues a word in the text is an unused
       id the stock trainer would not have made.)
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if iter(texts) is texts:
        raise TypeError("_wordpiece reads the texts twice: pass a re-iterable (a list, _Batches), not an iterator")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    alphabet = _alphabet(texts, tok.normalizer)
    # A character the pre-tokenizer splits off (punctuation) or the normalizer isolates (CJK) never continues a word.
    pieces = [f"##{c}" for c in sorted(alphabet)
              if len(tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(f"a{c}"))) == 1]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                        special_tokens=WORDPIECE_SPECIALS + pieces, limit_alphabet=len(alphabet),
                                        initial_alphabet=alphabet, continuing_subword_prefix="##")
    tok.train_from_iterator(texts, trainer=trainer)
    state = json.loads(tok.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] in WORDPIECE_SPECIALS]
    return Tokenizer.from_str(json.dumps(state))


def _alphabet(texts, normalizer) -> list[str]:
    """The LIMIT_ALPHABET most frequent non-space characters of the normalized text, ties by code point.

    Counted on the raw text (a vectorised count; normalizing all of it is ~100x slower) and mapped
    through the normalizer character by character (lowercasing and accent stripping act per character)."""
    raw = np.zeros(0, dtype=np.int64)
    for batch in texts:
        found = np.bincount(np.frombuffer("".join(batch).encode("utf-32-le"), dtype=np.uint32))
        if len(found) > len(raw):
            raw = np.concatenate([raw, np.zeros(len(found) - len(raw), dtype=np.int64)])
        raw[:len(found)] += found
    counts: dict[str, int] = {}
    for code in np.flatnonzero(raw):
        for c in normalizer.normalize_str(chr(code)):
            if not c.isspace():
                counts[c] = counts.get(c, 0) + int(raw[code])
    return sorted(counts, key=lambda c: (-counts[c], c))[:LIMIT_ALPHABET]


class _Batches:
    """A split's texts in batches of 1000, re-iterable (the WordPiece recipe reads them twice)."""

    def __init__(self, split):
        self.split = split

    def __iter__(self):
        return (self.split[i:i + 1000]["text"] for i in range(0, len(self.split), 1000))


def local_tokenizer(model_type: str, train_split, data_key: str, vocab_size: int, cache_dir: str | None):
    """Train (or load from cache) a tokenizer on a split's 'text'; `data_key` identifies that data."""
    key = hashlib.sha256(f"{_FORMAT}|{model_type}|{vocab_size}|{data_key}".encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / "tokenizers" / f"{model_type}-{vocab_size}-{key}"
    if not (path / "tokenizer.json").exists():
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        _train(model_type, _Batches(train_split), vocab_size).save_pretrained(tmp)
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


def named_tokenizer(cfg):
    """The --tokenizer_name tokenizer (loaded early so its size is checked before any data work), else None."""
    if not cfg.tokenizer_name:
        return None
    try:
        tokenizer = load_tokenizer(cfg.tokenizer_name)
    except (OSError, ValueError) as err:
        raise ConfigError("tokenizer_name", f"cannot load {cfg.tokenizer_name!r}: {str(err).splitlines()[0]}") from None
    kind = kind_of(cfg.model_type)
    for role in (*kind.frame_before, *kind.frame_after):  # the tokens that frame each document in a block
        if getattr(tokenizer, f"{role}_token_id") is None:
            raise ConfigError("tokenizer_name", f"the tokenizer has no {ROLE_PURPOSE[role]}")
    return tokenizer
