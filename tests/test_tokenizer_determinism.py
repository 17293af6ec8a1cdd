"""The locally trained tokenizer is a function of the text alone (issue 14, item 8).

Nodes with node-local caches each train their own tokenizer; a vocabulary that depended on the
process (the stock WordPiece trainer numbers its `##c` pieces in Rust hash-map order) would give
each node different token ids. Two processes, one with tokenizers' thread pool off and one with
2 threads, each train every supported model type's tokenizer into its own fresh cache; every file
of the two caches must be equal byte for byte.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from apollo.kinds import kind_of
from conftest import REPO

# Whatever the code supports, one model type per local-tokenizer recipe (the tokenizer and its special tokens
# are all that differ between families): the families the walk trains (benchmarks/results/family_walk.json),
# so a family with a new recipe is tested when it is added.
_WALK = json.loads((REPO / "benchmarks" / "results" / "family_walk.json").read_text())["families"]
_RECIPES = {}
for _kind in sorted(k for k, row in _WALK.items() if row["column"] == "trained"):
    _RECIPES.setdefault((kind_of(_kind).tokenizer, tuple(kind_of(_kind).special_tokens.items())), _kind)
MODEL_TYPES = tuple(_RECIPES.values())
TRAIN = r"""
import sys
from datasets import Dataset
from apollo.tokenizer import local_tokenizer
text = open(sys.argv[1]).read().splitlines()
split = Dataset.from_dict({"text": text})
for model_type in sys.argv[3:]:
    local_tokenizer(model_type, split, "fixed-key", 1024, sys.argv[2])
"""


def cache_files(cache: Path) -> dict[str, bytes]:
    return {str(p.relative_to(cache)): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}


def test_same_text_gives_the_same_tokenizer_files_in_other_processes(tmp_path):
    text = (REPO / "data" / "embedded" / "train.txt").read_text().splitlines(keepends=True)[:400]
    corpus = tmp_path / "train.txt"
    corpus.write_text("".join(text))
    threads = {"serial": {"TOKENIZERS_PARALLELISM": "false"},
               "two_threads": {"TOKENIZERS_PARALLELISM": "true", "RAYON_NUM_THREADS": "2"}}
    procs = {}
    for name, extra in threads.items():
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}
        env.pop("APOLLO_CACHE", None)
        procs[name] = subprocess.Popen([sys.executable, "-c", TRAIN, str(corpus), str(tmp_path / name),
                                        *MODEL_TYPES], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {err[-3000:]}"
    serial, parallel = (cache_files(tmp_path / name / "tokenizers") for name in threads)
    # Every model type made its own tokenizer folder, and each holds a tokenizer.json.
    folders = {Path(f).parts[0] for f in serial}
    assert len(folders) == len(MODEL_TYPES)
    assert all(any(f.startswith(folder) and f.endswith("tokenizer.json") for f in serial) for folder in folders)
    assert serial.keys() == parallel.keys()
    differing = sorted(f for f in serial if serial[f] != parallel[f])
    assert not differing, differing


def test_a_limited_alphabet_keeps_the_most_frequent_characters_ties_by_code_point(monkeypatch):
    """With more characters than the alphabet limit, the stock trainer drops equally rare ones in hash
    order; here the cut is made before training: by count, then by code point."""
    import apollo.tokenizer as tokenizer

    monkeypatch.setattr(tokenizer, "LIMIT_ALPHABET", 8)
    # a-f occur 60 times each, p-t twice each: 6 + 2 characters fit, and p, q are the lowest code points.
    words = ["abc", "def", "fed", "cba"] * 30 + ["pq", "rs", "tp", "qr", "st"]
    texts = [[" ".join(words[i:i + 8]) for i in range(0, len(words), 8)]]
    first, second = (tokenizer._wordpiece(texts, 64) for _ in range(2))
    assert first.to_str() == second.to_str()
    characters = {t for t in first.get_vocab() if len(t) == 1}
    assert characters == set("abcdefpq")
