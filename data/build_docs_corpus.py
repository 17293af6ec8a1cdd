#!/usr/bin/env python3
"""Build an English documentation corpus (~50 MB) from pinned Debian documentation packages.

    python data/build_docs_corpus.py --out data/docs              # fetches the .debs into data/docs-debs
    python data/build_docs_corpus.py --out data/docs --debs DIR   # reads them from DIR (no apt needed)
    python data/build_docs_corpus.py --out data/docs --check      # rebuild in memory, compare, exit 1 on drift

Every package in PINS is a pinned version and sha256 of a Debian bookworm `main` package. Its files
are read straight from the .deb (no install, no dpkg needed), prose paragraphs are extracted
(data/prose_extract.py: POD for perl-doc, HTML as each package's own tools rendered it for the rest;
code blocks dropped), and filtered: at least 40 characters, at least 60% letters, 90% of them ASCII,
no exact or near duplicate of an earlier paragraph. One paragraph per line. Documents (source files) keep their
paragraphs in order and are interleaved across packages by relative position, so any prefix holds
every package in proportion. The hold-out is the data path's own (apollo.corpus.holdout_runs): 5% of
the paragraphs, as up to 100 runs of consecutive paragraphs spread evenly over the corpus, which is
exactly what run_pretrain.py would hold out of this text with --validation_split_percentage 5.
The same .deb files give byte-identical outputs: train.txt, validation.txt, documents.tsv,
manifest.json and README.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from corpus_files import check_files, write_files  # noqa: E402
from debian_packages import PackageError, Pin, fetch, read_files, sha256_file  # noqa: E402
from prose_extract import (EXTRACTORS, MIN_ASCII_SHARE, MIN_CHARS, MIN_LETTER_SHARE, is_prose,  # noqa: E402
                           near_duplicate_key)

VALIDATION_PERCENT = 5  # run_pretrain.py's default --validation_split_percentage
INDEX_PAGES = ("*/genindex*.html", "*/search.html", "*/py-modindex.html", "*/_modules/*")  # links, no prose
DOC = "usr/share/doc"

# Debian bookworm (12) main, as the archive served them on 2026-12-01. Order = priority of a
# paragraph that two packages share (the earlier package keeps it). Licences from each package's
# /usr/share/doc/<package>/copyright for the files read.
PINS = (
    Pin("perl-doc", "5.36.0-7+deb12u4", "f4269cff4576d6f02a6756df842988e58451c7e945b08517dd235531b24e48f8",
        "GPL-1+ or Artistic (Perl's licence)", ("usr/share/perl/5.36.0/pod/*.pod",),
        note="the Perl manual pages (POD)"),
    Pin("python3.11-doc", "3.11.2-6+deb12u9", "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
        "PSF License 2", (f"{DOC}/python3.11/html/*.html",), INDEX_PAGES,
        note="the Python 3.11 documentation (Sphinx)"),
    Pin("git-doc", "1:2.39.5-0+deb12u3", "3c89668a11053a6bafade3de1f611f4613db31e082af63f43d8c5b69ad8795ec",
        "GPL-2", (f"{DOC}/git-doc/*.html",), note="git's manual pages, user manual and guides (AsciiDoc)"),
    Pin("postgresql-doc-15", "15.20-0+deb12u1", "4c44bf2c599f208b3f46454a6cf7a72e25ec46ff74d37b59dd31ad76b00eebb7",
        "PostgreSQL (BSD-like)", (f"{DOC}/postgresql-doc-15/html/*.html",),
        note="the PostgreSQL 15 manual (DocBook)"),
    Pin("python-sqlalchemy-doc", "1.4.46+ds1-1", "8805c3167ef75278ac6fd58ed9856321c2b2e3a7e441edba84b2eb955216d0fd",
        "Expat (MIT)", (f"{DOC}/python-sqlalchemy-doc/html/*.html",), INDEX_PAGES,
        note="the SQLAlchemy 1.4 documentation (Sphinx)"),
    Pin("sqlite3-doc", "3.40.1-2+deb12u2", "466e30d7066e2641fa13e56bc662a2ad521b8cc9c17dde9c9dac3d4f105e32f2",
        "public domain", (f"{DOC}/sqlite3/*.html",), note="the SQLite documentation"),
    Pin("python-django-doc", "3:3.2.25-0+deb12u7", "87307f067916df72e17180d35b7cde5c7ea6080336cda518efd7f6e66988a7ca",
        "BSD-3-Clause", (f"{DOC}/python-django-doc/html/*.html",), INDEX_PAGES,
        note="the Django 3.2 documentation (Sphinx)"),
    Pin("cmake-doc", "3.25.1-1", "6e805a758ffed87cc7ea234cf0a7a1bb8ae78b93d8b5783e7fb989a6320f8133",
        "BSD-3-clause (cmake-data's copyright file)", (f"{DOC}/cmake-data/html/*.html",), INDEX_PAGES,
        note="the CMake 3.25 reference (Sphinx)"),
    Pin("octave-doc", "7.3.0-2", "b27897cc7e3d688daa5cb8f8d1ea47077f3fbd205ce32e22522200ff0c1eadd5",
        "GPL-3+", (f"{DOC}/octave/*.html",), ("*/XREF*.html",),  # XREF*: 2,300 one-line redirect pages
        note="the GNU Octave manual (Texinfo)"),
    Pin("apache2-doc", "2.4.71-1~deb12u1", "a7b3d1131c1c63dbf9999b28e75f9a133d30f70492b419936bd51759ac77a01f",
        "Apache-2.0", (f"{DOC}/apache2-doc/manual/en/*.html",),
        note="the Apache HTTP Server 2.4 manual, English pages"),
    Pin("rust-doc", "1.63.0+dfsg1-2", "96ef96fe6df87d939ca713bd7df3d15c2b778ccb892eca025c4ee504146f697b",
        "MIT or Apache-2.0",
        tuple(f"{DOC}/rust-doc/html/{book}/*.html" for book in (
            "book", "reference", "nomicon", "rust-by-example", "edition-guide", "embedded-book", "rustc",
            "rustdoc", "std")),
        ("*/print.html",),  # each book again on one page
        note="The Rust Programming Language and the other Rust books, and the std API documentation"),
    Pin("r-doc-html", "4.2.2.20221110-2", "2c615dd386993a440b80fd4e9060318386e31fbe47f5be65f295f5fb34002c5c",
        "the R manuals' permission notice (verbatim and modified copies); GPL-2 for the package",
        ("usr/share/R/doc/manual/*.html",), note="the R manuals (Texinfo)"),
    Pin("zsh-doc", "5.9-4", "79bd75df4bf03d1021e993fd773f82b8a4c8d76649e420cd32eca940cf418ff4",
        "the zsh licence (MIT-like; zsh-common's copyright file)", (f"{DOC}/zsh-common/html/*.html",),
        note="the Z shell manual (Texinfo)"),
    Pin("nodejs-doc", "18.20.4+dfsg-1~deb12u3", "d2fbd4f3aecccea9d901a03842ef8380379e0d33010a48af5e797ed68ae874ce",
        "Expat (MIT)", (f"{DOC}/nodejs/api/*.html",), ("*/all.html",),  # all.html repeats every page
        note="the Node.js 18 API documentation"),
    Pin("sphinx-doc", "5.3.0-4", "1da3d08bb3a0bc82a4b8b8109410e223054bf5fb13904557ec8ea869046f65b4",
        "BSD-2-clause", (f"{DOC}/sphinx-doc/html/*.html",), INDEX_PAGES, note="the Sphinx 5.3 documentation"),
    Pin("debian-policy", "4.6.2.0", "ef9d01b625c3b87c3a845c2cd1b66f1a16e9240b2b9e5bee53472a00e8457a39",
        "GPL-2+", (f"{DOC}/debian-policy/*.html",), note="the Debian Policy Manual and its sub-policies"),
    Pin("python-flask-doc", "2.2.2-3", "0659f6a04b15fe3f907150cadc0399fe987c790e722e001b73f7e49fa5ecca15",
        "BSD-3-clause", (f"{DOC}/python-flask-doc/html/*.html",), INDEX_PAGES,
        note="the Flask 2.2 documentation (Sphinx)"),
    Pin("abs-guide", "10-4", "2432950da65e559b986f593c09a6d0dd6bc9f3bea83fa115774791066108ecd9",
        "public domain", (f"{DOC}/abs-guide/html/*.html",), note="the Advanced Bash-Scripting Guide"),
    Pin("bash-doc", "5.2.15-2", "2c1a353f7004d14ba81db19c253b958d2dd9582027650739c530fd50376a9d8b",
        "GPL-3+", (f"{DOC}/bash/bash.html",), note="the bash manual page"),
    Pin("debian-reference-en", "2.100", "9f31d3a17df505de09689ca255512ea58c1fc47c59bb1b0c7bf1c23362e9743f",
        "GPL-2+", ("usr/share/debian-reference/*.en.html",), note="the Debian Reference"),
    Pin("developers-reference", "12.18", "0dba82f6fa16e373f2a84ad07e7971aa9264ad2e7d2ae46b37edbc9c5fd57e2e",
        "GPL-2", ("usr/share/developers-reference/*.html",), INDEX_PAGES,
        note="the Debian Developer's Reference"),
    Pin("maint-guide", "1.2.53", "762c8a400a36668d2eb814a3ba356b06488fd889dfce478eb11d5cfb189a47b5",
        "GPL-2+", (f"{DOC}/maint-guide/html/*.en.html",), note="the Debian New Maintainers' Guide"),
    Pin("debian-faq", "11.1", "427426e0cfa6888622fc1d72631071cb4b5a1f86ccde722e7820bcef284de5d0",
        "SPI's permission notice (verbatim and modified copies)", (f"{DOC}/debian/FAQ/*.en.html",),
        note="the Debian FAQ"),
)


@dataclass
class Counts:
    """What happened to one package's text."""
    files: int = 0
    documents: int = 0  # files that kept at least one paragraph
    code_blocks: int = 0
    not_prose: int = 0
    duplicates: int = 0  # exactly equal to an earlier paragraph
    near_duplicates: int = 0  # the same near_duplicate_key as an earlier paragraph, not equal
    paragraphs: int = 0
    bytes: int = 0  # kept text, UTF-8, newlines included


@dataclass
class Corpus:
    documents: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (package, path, paragraphs)
    counts: dict[str, Counts] = field(default_factory=dict)
    debs: dict[str, dict] = field(default_factory=dict)


def extract(pins, debs_dir: Path, latest: bool = False) -> Corpus:
    """Every package's documents in path order, filtered and deduplicated in PINS order."""
    corpus, seen_text, seen_keys = Corpus(), set(), set()
    for pin in pins:
        deb = fetch(pin, debs_dir, latest)
        counts = corpus.counts[pin.name] = Counts()
        corpus.debs[pin.name] = {"file": deb.name, "bytes": deb.stat().st_size, "sha256": sha256_file(deb)}
        files = sorted(read_files(deb, pin))
        if not files:
            raise PackageError(f"{deb.name}: no file matches {', '.join(pin.include)}")
        for path, data in files:
            counts.files += 1
            kind = "pod" if path.endswith(".pod") else "html"
            paragraphs, code = EXTRACTORS[kind](data.decode("utf-8", "replace"))
            counts.code_blocks += code
            kept = []
            for p in paragraphs:
                key = near_duplicate_key(p)
                if not is_prose(p):
                    counts.not_prose += 1
                elif p in seen_text:
                    counts.duplicates += 1
                elif key in seen_keys:
                    counts.near_duplicates += 1
                else:
                    seen_text.add(p)
                    seen_keys.add(key)
                    kept.append(p)
            if kept:
                counts.documents += 1
                counts.paragraphs += len(kept)
                counts.bytes += sum(len(p.encode()) + 1 for p in kept)
                corpus.documents.append((pin.name, path, kept))
    return corpus


def stored_order(corpus: Corpus, pins) -> list[tuple[str, str, list[str]]]:
    """Documents interleaved across packages by relative position (each package's own order kept)."""
    rank = {pin.name: i for i, pin in enumerate(pins)}
    done, keyed = {}, []
    for pkg, path, paragraphs in corpus.documents:
        start, total = done.get(pkg, 0), corpus.counts[pkg].paragraphs
        done[pkg] = start + len(paragraphs)
        keyed.append(((start + len(paragraphs) / 2) / total, rank[pkg], pkg, path, paragraphs))
    return [(pkg, path, paragraphs) for *_, pkg, path, paragraphs in sorted(keyed, key=lambda k: k[:2])]


def cut(documents, max_bytes: int | None):
    """The longest prefix of whole paragraphs of at most `max_bytes` bytes (all of it without a limit)."""
    if max_bytes is None:
        return documents
    out, used = [], 0
    for pkg, path, paragraphs in documents:
        take = []
        for p in paragraphs:
            used += len(p.encode()) + 1
            if used > max_bytes:
                break
            take.append(p)
        if take:
            out.append((pkg, path, take))
        if used > max_bytes:
            break
    return out


def split(paragraphs: list[str]) -> tuple[list[str], list[str], list[tuple[int, int]]]:
    """(train, validation, held-out runs): what run_pretrain.py holds out of these paragraphs by default."""
    from apollo.corpus import holdout_runs  # the data path's own hold-out (imports torch: a few seconds)

    runs = holdout_runs(len(paragraphs), VALIDATION_PERCENT)
    held = [False] * len(paragraphs)
    for a, b in runs:
        held[a:b] = [True] * (b - a)
    return ([p for p, h in zip(paragraphs, held) if not h], [p for p, h in zip(paragraphs, held) if h], runs)


def build(pins, debs_dir: Path, max_bytes: int | None = None, latest: bool = False) -> tuple[dict[str, bytes], dict]:
    """Return ({file name: bytes} of the corpus folder, manifest)."""
    corpus = extract(pins, debs_dir, latest)
    documents = cut(stored_order(corpus, pins), max_bytes)
    paragraphs = [p for _, _, ps in documents for p in ps]
    train, validation, runs = split(paragraphs)
    files = {"train.txt": "".join(p + "\n" for p in train).encode(),
             "validation.txt": "".join(p + "\n" for p in validation).encode()}
    rows, start = ["package\tpath\tfirst_paragraph\tparagraphs\n"], 0
    for pkg, path, ps in documents:
        rows.append(f"{pkg}\t{path}\t{start}\t{len(ps)}\n")
        start += len(ps)
    files["documents.tsv"] = "".join(rows).encode()
    used = {pkg for pkg, _, _ in documents}
    manifest = {
        "format": "one paragraph per line, UTF-8; documents.tsv: each document's paragraphs, in stored order, as "
                  "indices into train and validation interleaved back (validation = holdout_runs)",
        "rules": {"min_chars": MIN_CHARS, "min_letter_share": MIN_LETTER_SHARE, "min_ascii_share": MIN_ASCII_SHARE,
                  "max_bytes": max_bytes,
                  "validation_percent": VALIDATION_PERCENT, "holdout_runs": runs},
        "packages": [{"package": pin.name, "version": _version(corpus.debs[pin.name]["file"]), "licence": pin.licence,
                      "deb": corpus.debs[pin.name], **asdict(corpus.counts[pin.name])}
                     for pin in pins if pin.name in used],
        "outputs": {name: {"bytes": len(data), "lines": data.count(b"\n"), "sha256": hashlib.sha256(data).hexdigest()}
                    for name, data in files.items()},
        "documents": len(documents), "paragraphs": len(paragraphs),
    }
    files["manifest.json"] = (json.dumps(manifest, indent=1) + "\n").encode()
    files["README.md"] = readme(pins, manifest).encode()
    return files, manifest


def _version(deb_file: str) -> str:
    return deb_file.split("_")[1].replace("%3a", ":")


def readme(pins, m: dict) -> str:
    notes = {pin.name: pin.note for pin in pins}
    rows = "\n".join(f"| `{p['package']}` | {p['version']} | {notes[p['package']]} | {p['licence']} | "
                     f"{p['deb']['bytes'] / 1e6:.1f} | {p['documents']:,} | {p['paragraphs']:,} | "
                     f"{p['bytes'] / 1e6:.2f} |" for p in m["packages"])
    dropped = {k: sum(p[k] for p in m["packages"]) for k in ("code_blocks", "not_prose", "duplicates",
                                                             "near_duplicates")}
    outputs = "\n".join(f"| `{name}` | {o['bytes']:,} | {o['lines']:,} | `{o['sha256']}` |"
                        for name, o in m["outputs"].items())
    r = m["rules"]
    cut = f" cut to its first {r['max_bytes']:,} bytes (`--max_bytes`)," if r["max_bytes"] else ""
    return f"""# Documentation corpus (built, not committed)

English prose from {len(m['packages'])} Debian bookworm documentation packages,{cut} one paragraph per line:
{m['paragraphs']:,} paragraphs from {m['documents']:,} documents. Built by `data/build_docs_corpus.py`
(see its docstring); nothing here but this README is committed.

| package | version | what | licence | .deb MB | documents | paragraphs | text MB |
|---|---|---|---|---|---|---|---|
{rows}

Dropped: {dropped['code_blocks']:,} code blocks; {dropped['not_prose']:,} paragraphs under {r['min_chars']} characters, under
{r['min_letter_share']:.0%} letters or with under {r['min_ascii_share']:.0%} of the letters ASCII (not English); {dropped['duplicates']:,} exact and
{dropped['near_duplicates']:,} near duplicates of an earlier paragraph (the same text once case, punctuation, numbers and
identifier-like words are erased).

| file | bytes | lines | sha256 |
|---|---|---|---|
{outputs}

`validation.txt` is the data path's own hold-out of these paragraphs (`apollo.corpus.holdout_runs`,
{r['validation_percent']}%): {len(r['holdout_runs'])} runs of consecutive paragraphs spread evenly over the corpus.

## Rebuild

```
python data/build_docs_corpus.py --out data/docs              # downloads the pinned .debs into data/docs-debs
python data/build_docs_corpus.py --out data/docs --debs DIR   # or reads them from DIR: no apt, no dpkg needed
python data/build_docs_corpus.py --out data/docs --check      # rebuild in memory, compare with the files here
```

The pinned versions give byte-identical files (the sha256 values above). When Debian replaces a pinned
version (a point release or security update), the download fails with one line; build from a saved
copy of the .deb files with `--debs DIR`, or take the current versions with `--latest` (then the files
differ from the checksums above; `manifest.json` records what was used).
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", type=Path, required=True,
                   help="folder to write train.txt, validation.txt, documents.tsv, manifest.json, README.md")
    p.add_argument("--debs", type=Path, default=HERE / "docs-debs",
                   help="folder of the .deb files; missing ones are downloaded into it with `apt-get download` "
                        "(default: data/docs-debs)")
    p.add_argument("--max_bytes", type=int, help="keep only the first N bytes of text, in stored order "
                                                 "(before the hold-out), e.g. for a quick corpus")
    p.add_argument("--latest", action="store_true",
                   help="ignore the pinned versions: use the one NAME_*.deb in --debs, or download the version "
                        "the archive serves now (outputs then differ from the recorded checksums)")
    p.add_argument("--pins", type=Path, help="a JSON list of packages to use instead of the built-in PINS "
                                             "(fields of debian_packages.Pin; for tests and other corpora)")
    p.add_argument("--check", action="store_true", help="build in memory, compare with the files in --out, "
                                                        "exit 1 if any differs; write nothing")
    args = p.parse_args(argv)
    if args.max_bytes is not None and args.max_bytes < 1:
        p.error("--max_bytes must be >= 1")
    return args


def load_pins(path: Path | None):
    if path is None:
        return PINS
    return tuple(Pin(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items()})
                 for row in json.loads(path.read_text()))


def main(argv=None) -> int:
    args = parse_args(argv)
    files, manifest = build(load_pins(args.pins), args.debs, args.max_bytes, args.latest)
    if args.check:
        return check_files(files, args.out)
    write_files(files, args.out)
    o = manifest["outputs"]
    print(f"{args.out}: {manifest['paragraphs']:,} paragraphs from {manifest['documents']:,} documents of "
          f"{len(manifest['packages'])} packages; train.txt {o['train.txt']['bytes']:,} bytes, validation.txt "
          f"{o['validation.txt']['bytes']:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
