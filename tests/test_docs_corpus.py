"""data/build_docs_corpus.py on two committed fixture packages: byte-identical builds, extraction rules, hold-out.

tests/fixtures/docs_corpus/ holds src/ (the files of two tiny packages: POD and HTML pages in which every
code block, heading, navigation bar, table, signature, script and excluded page carries the word
CODEMARK, and every paragraph meant to be kept carries a tag like [g1]), debs/ (built from src/ by
make_debs.sh with Debian's dpkg-deb), pins.json (their pins) and expected/ (the builder's output).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, subprocess_env

sys.path.insert(0, str(REPO / "data"))
import build_docs_corpus as builder  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "docs_corpus"
PINS = FIXTURE / "pins.json"
TAG = re.compile(r"\[([a-z])(\d+)\]")
TEMPLATED = "initialized by the value of the"  # one sentence in three variants: names, case, punctuation


def fixture_args(out: Path, debs: Path = FIXTURE / "debs", *extra) -> list[str]:
    return ["--pins", str(PINS), "--debs", str(debs), "--out", str(out), *extra]


def folder(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def source_text() -> str:
    return "\n".join(p.read_text() for p in sorted((FIXTURE / "src").rglob("*"))
                     if p.is_file() and "DEBIAN" not in p.parts and p.name != "copyright")


def test_fixture_build_is_byte_identical_and_follows_the_rules(tmp_path):
    # Another process with another hash seed, and this process: both give the committed files.
    proc = subprocess.run([sys.executable, str(REPO / "data" / "build_docs_corpus.py"), *fixture_args(tmp_path / "a")],
                          cwd=tmp_path, env={**subprocess_env(), "PYTHONHASHSEED": "12345"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert builder.main(fixture_args(tmp_path / "b")) == 0

    train = (tmp_path / "a" / "train.txt").read_text().splitlines()
    validation = (tmp_path / "a" / "validation.txt").read_text().splitlines()
    kept, source = train + validation, source_text()
    assert validation and not set(train) & set(validation)
    # Code blocks, headings, navigation, tables, signatures, scripts and excluded pages are all dropped.
    assert source.count("CODEMARK") >= 15 and not any("CODEMARK" in line for line in kept)
    # Every tagged paragraph of the sources is kept exactly once; each document keeps its order.
    assert sorted(TAG.findall("\n".join(kept))) == sorted(TAG.findall(source))
    for letter in {t for t, _ in TAG.findall(source)}:
        numbers = [int(n) for line in train for t, n in TAG.findall(line) if t == letter]
        assert numbers == sorted(numbers), letter
    # Near and exact duplicates: only the first copy (in package order) is kept.
    assert source.lower().count(TEMPLATED) == 3 and [line for line in kept if TEMPLATED in line.lower()] == [
        "This option is initialized by the value of the FIXTURE_OPT_ALPHA variable when a fixture is created."]
    assert source.count("EXACTDUP") == 2 and sum("EXACTDUP" in line for line in kept) == 1
    # POD codes are rendered and HTML entities decoded; short, symbol and non-English paragraphs dropped.
    text = "\n".join(kept)
    assert "bold words, italic words, $inline->code and the linked text become" in text
    assert "<escapes> decode" in text and "entities like & and é are decoded" in text
    assert "Too short to keep." in source and "Too short" not in text
    assert "%%%" in source and "%%%" not in text and "这份文件" in source and "这份文件" not in text
    expected = folder(FIXTURE / "expected")
    assert folder(tmp_path / "a") == expected and folder(tmp_path / "b") == expected


def test_holdout_is_the_data_paths_split():
    """The builder's hold-out equals what run_pretrain.py's data path holds out of the same paragraphs."""
    from datasets import Dataset

    from apollo.corpus import split_holdout

    paragraphs = [f"paragraph {i}" for i in range(5003)]
    train, validation, runs = builder.split(paragraphs)
    reference = split_holdout(Dataset.from_dict({"text": paragraphs}), builder.VALIDATION_PERCENT)
    assert len(runs) == 2  # 250 held out: two runs of consecutive paragraphs
    assert validation == reference["validation"]["text"] and train == reference["train"]["text"]


def test_max_bytes_keeps_a_prefix_of_whole_paragraphs(tmp_path):
    assert builder.main(fixture_args(tmp_path, FIXTURE / "debs", "--max_bytes", "700")) == 0
    full = set((FIXTURE / "expected" / "train.txt").read_text().splitlines()
               + (FIXTURE / "expected" / "validation.txt").read_text().splitlines())
    cut = (tmp_path / "train.txt").read_text().splitlines() + (tmp_path / "validation.txt").read_text().splitlines()
    assert 3 <= len(cut) < len(full) and set(cut) <= full
    assert sum(len(line.encode()) + 1 for line in cut) <= 700 < sum(len(p.encode()) + 1 for p in full)


def test_changed_or_missing_packages_are_refused_in_one_line(tmp_path, monkeypatch):
    debs = tmp_path / "debs"
    shutil.copytree(FIXTURE / "debs", debs)
    changed = debs / "fixture-pod-doc_1.0_all.deb"
    changed.write_bytes(changed.read_bytes() + b"\0")
    with pytest.raises(SystemExit) as err:
        builder.main(fixture_args(tmp_path / "out", debs))
    assert "is not the pinned fixture-pod-doc 1.0" in str(err.value) and "\n" not in str(err.value)
    changed.unlink()
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # no apt-get to download it with
    with pytest.raises(SystemExit) as err:
        builder.main(fixture_args(tmp_path / "out", debs))
    assert "fixture-pod-doc_1.0_all.deb is not in" in str(err.value) and "no apt-get" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_committed_readme_lists_the_pinned_packages():
    """data/docs/README.md is what the builder writes for PINS: a changed pin needs a rebuilt README."""
    readme = (REPO / "data" / "docs" / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| ([^ |]+) \| ", readme, re.M))
    assert {k: v for k, v in rows.items() if not k.endswith((".txt", ".tsv"))} == {
        pin.name: pin.version for pin in builder.PINS}
