#!/usr/bin/env python3
"""Build the small embedded default corpus in ``data/embedded/`` from Debian packages.

Sources (both public domain, both packaged in Debian):

* ``bible-kjv-text`` + ``bible-kjv``: the King James Bible, read through the ``bible``
  program. One document per chapter (1,189): verse numbers stripped, verses joined by spaces.
* ``jargon-text``: the Jargon File 4.4.7 (``/usr/share/doc/jargon-text/jargon.txt.gz``).
  One document per lexicon entry, and one per section outside the lexicon. Box-drawing
  tables, ASCII art / code listings, headings, tables of contents and the Crunchly cartoon
  navigation captions are dropped; the ``:headword:`` and ``{cross-reference}`` markup is
  reduced to plain text; documents shorter than ``MIN_CHARS`` are dropped.

Output: ``train.txt`` and ``validation.txt`` (UTF-8, one document per line, no empty lines)
and ``README.md`` (provenance, licenses, sizes, sha256). Every 20th document of each source
goes to validation; exact duplicate documents are removed first, so no text is in both
splits. The two sources are interleaved by relative position, so any prefix of a split
holds both in proportion. The build uses only the standard library and is deterministic.

    python data/build_embedded_corpus.py            # (re)write data/embedded/
    python data/build_embedded_corpus.py --check    # rebuild in memory, compare, exit 1 on drift
"""

import argparse
import gzip
import hashlib
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_files import check_files, write_files  # noqa: E402

MIN_CHARS = 40
VALIDATION_EVERY = 20
BIBLE_RANGE = "Gen1:1-Rev22:21"
DEFAULT_JARGON = "/usr/share/doc/jargon-text/jargon.txt.gz"
DEFAULT_OUT = Path(__file__).resolve().parent / "embedded"
PACKAGES = ("bible-kjv-text", "bible-kjv", "jargon-text")

BOX_CHARS = re.compile("[\u2500-\u257f]")  # box-drawing block: table rules and cells
CHAPTER_HEADING = re.compile(r"^(?:[1-3] )?[A-Z][A-Za-z ]* \d+$")  # "1 Samuel 3", "Psalms 119"
VERSE = re.compile(r"^\s+\d+ (.*)$")
ENTRY_START = re.compile(r"^   :([^:]+):\s*(.*)$")  # "   :abbrev: /@·breev'/, n."
# "  A", "  0" (a lexicon letter), "  Moon instructs a student" (a koan title)
SUBHEADING = re.compile(r"^  (?:\S|[A-Za-z][A-Za-z ]*)$")
CENTRED_TITLE = re.compile(r"^ {20,}[A-Z]")  # "                          Part II. The Jargon Lexicon"
CROSS_REF = re.compile(r"\{([^{}]*)\}")
CARTOON_NAV = re.compile(r"^\((The next|This is the last|The previous) cartoon")
ENUMERATION = re.compile(r"^(?:(?:Chapter|Appendix|Part) )?(?:[0-9]+|[IVX]+|[A-C])\. ")


def collapse(text):
    return " ".join(text.split())  # str.split() also splits on U+00A0 (no-break space)


def kjv_documents(bible_cmd="bible"):
    """One document per chapter, in canonical order."""
    out = subprocess.run([bible_cmd, "-l", "100000", BIBLE_RANGE], check=True,
                         capture_output=True, text=True, encoding="utf-8").stdout
    chapters, verses = [], None
    for line in out.splitlines():
        if CHAPTER_HEADING.match(line):
            if verses:
                chapters.append(" ".join(verses))
            verses = []
        elif (m := VERSE.match(line)) and verses is not None:
            verses.append(collapse(m.group(1)))
        elif line.strip() and verses:
            # a wrapped verse continues (only if the line width option is ignored)
            verses[-1] += " " + collapse(line)
    if verses:
        chapters.append(" ".join(verses))
    if len(chapters) != 1189:
        raise SystemExit(f"expected 1189 KJV chapters from `{bible_cmd}`, got {len(chapters)}")
    return chapters


def is_prose(line):
    """False for table rules, ASCII art, code and log listings."""
    if BOX_CHARS.search(line):
        return False
    indent = len(line) - len(line.lstrip(" "))
    if indent < 3:  # prose is indented 3+; column-1/2 lines are art and listings
        return False
    chars = [c for c in line if not c.isspace()]
    return sum(c.isalpha() for c in chars) >= 0.5 * len(chars)


def clean_jargon(text):
    return collapse(CROSS_REF.sub(r"\1", text))


def is_heading(line):
    """Chapter/appendix headings (column 0), lexicon letters and sub-titles, centred titles."""
    return (line[0] != " " or bool(SUBHEADING.match(line))
            or bool(CENTRED_TITLE.match(line)))


def navigation_texts(lines):
    """Headings and headwords: a paragraph equal to one of them is a table-of-contents line."""
    texts = {"Table of Contents", "Glossary", "(version 4.4.7)"}
    for line in lines:
        if line.strip() and is_heading(line):
            texts.add(ENUMERATION.sub("", collapse(line)))
        elif m := ENTRY_START.match(line):
            texts.add(collapse(m.group(1)))
    return texts


def jargon_documents(path=DEFAULT_JARGON):
    """One document per lexicon entry and per front-matter/appendix section, in file order.

    A document runs from an entry's ``:headword:`` line, or from a heading, to the next of
    either; its paragraphs are joined by spaces.
    """
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    navigation = navigation_texts(lines)
    docs, paragraphs, current = [], [], []

    def end_paragraph():
        if current:
            paragraph = clean_jargon(" ".join(current))
            current.clear()
            if not (CARTOON_NAV.match(paragraph)
                    or ENUMERATION.sub("", paragraph) in navigation):
                paragraphs.append(paragraph)

    def end_document():
        end_paragraph()
        if paragraphs:
            docs.append(" ".join(paragraphs))
            paragraphs.clear()

    for line in lines:
        if not line.strip():
            end_paragraph()
        elif is_heading(line):
            end_document()
        elif m := ENTRY_START.match(line):
            end_document()
            current.append(f"{m.group(1)}: {m.group(2)}")
        elif is_prose(line):
            current.append(line)
        else:
            end_paragraph()  # a dropped art/table line also ends the paragraph
    end_document()
    return [d for d in docs if len(d) >= MIN_CHARS]


def split(sources):
    """Deduplicate, hold out every VALIDATION_EVERY-th doc per source, interleave sources."""
    seen = set()
    train, validation = [], []
    for rank, (name, docs) in enumerate(sources):
        unique = []
        for doc in docs:
            if doc not in seen:
                seen.add(doc)
                unique.append(doc)
        n = len(unique)
        for i, doc in enumerate(unique):
            key = ((i + 0.5) / n, rank)  # relative position within its source
            target = validation if i % VALIDATION_EVERY == VALIDATION_EVERY - 1 else train
            target.append((key, name, doc))
    return sorted(train), sorted(validation)


def package_versions():
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", pkg], check=True,
                capture_output=True, text=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            versions[pkg] = "unknown (dpkg-query failed)"
    return versions


KJV_LICENSE = """\
> The copyright for the King James Version text of the Bible is expired since
> the  translation was done in 1611 under King James the first of Great
> Britain."""

JARGON_LICENSE = """\
> This document (the Jargon File) is in the public domain, to be freely
> used, shared, and modified. There are (by intention) no legal restraints
> on what you can do with it, but there are traditions about its proper use
> to which many hackers are quite strongly attached. Please extend the
> courtesy of proper citation when you quote the File, ideally with a
> version number, as it will change and grow over time. (Examples of
> appropriate citation form: "Jargon File 4.4.7" or "The on-line hacker
> Jargon File, version 4.4.7, 29 Dec 2003".)"""


def readme(stats, versions):
    rows = "\n".join(
        f"| `{name}` | {s['bytes']:,} | {s['lines']:,} | {s['kjv']:,} | {s['jargon']:,} "
        f"| `{s['sha256']}` |" for name, s in stats.items())
    pkgs = "\n".join(f"- `{p}` {v}" for p, v in versions.items())
    return f"""# Embedded default corpus

A small, real, public-domain English corpus that ships with the repository, so that training
and the tests run with no network. It is far too small to pretrain a useful model; it is
for smoke runs, tests and tiny-scale comparisons. `download_train_datasets.py` fetches the
real Wikipedia + BookCorpus data when a network is available.

## Files

One document per line, UTF-8, no empty lines.

| file | bytes | lines (= documents) | KJV documents | Jargon documents | sha256 |
|---|---|---|---|---|---|
{rows}

## Provenance

Built from these Debian packages (versions at build time):

{pkgs}

Extraction:

- **King James Bible** (`bible-kjv-text`, read through the `bible` program of `bible-kjv`):
  `bible -l 100000 "{BIBLE_RANGE}"`. One document per chapter (1,189 chapters); the chapter
  headings and verse numbers are stripped and the verses joined by single spaces.
- **Jargon File 4.4.7** (`jargon-text`, `/usr/share/doc/jargon-text/jargon.txt.gz`). One
  document per lexicon entry (headword line and all its senses and paragraphs) and one per
  section (between two headings) of the front matter and appendices. Dropped: box-drawing tables, lines that are
  mostly non-letters or indented under three columns (ASCII art, code and log listings),
  headings, tables of contents and headword lists, and the Crunchly cartoon navigation
  captions. The `:headword:` and `{{cross-reference}}` markup becomes plain text. Whitespace
  (including no-break spaces) is collapsed; documents under {MIN_CHARS} characters are dropped.

Split: exact duplicate documents are removed, then every {VALIDATION_EVERY}th document of each
source (index {VALIDATION_EVERY - 1}, {2 * VALIDATION_EVERY - 1}, ... in source order) goes to
`validation.txt`, the rest to `train.txt`; no document is in both. Within each file the two
sources are interleaved by relative position, so any prefix holds both in proportion.

## Build

```
python data/build_embedded_corpus.py          # needs: apt-get install bible-kjv jargon-text
python data/build_embedded_corpus.py --check  # rebuild in memory and compare with the files
```

The script uses only the Python standard library and is deterministic: the same package
versions give byte-identical files (compare the sha256 values above).

## Licenses

King James Version, from `/usr/share/doc/bible-kjv-text/copyright`:

{KJV_LICENSE}

(The text is public domain in most countries; in the United Kingdom the KJV remains under
the Crown's perpetual Letters Patent.) The `bible` program itself is GPL-2+, but only its
output text is included here.

Jargon File, from `/usr/share/doc/jargon-text/copyright`:

{JARGON_LICENSE}

Cite as: "The on-line hacker Jargon File, version 4.4.7, 29 Dec 2003".
"""


def build(bible_cmd, jargon_path):
    """Return {filename: bytes} for the whole corpus directory."""
    sources = [("kjv", kjv_documents(bible_cmd)), ("jargon", jargon_documents(jargon_path))]
    train, validation = split(sources)
    files, stats = {}, {}
    for name, rows in (("train.txt", train), ("validation.txt", validation)):
        data = "".join(doc + "\n" for _, _, doc in rows).encode("utf-8")
        assert b"\n\n" not in data and not data.startswith(b"\n")
        files[name] = data
        stats[name] = {"bytes": len(data), "lines": len(rows),
                       "kjv": sum(src == "kjv" for _, src, _ in rows),
                       "jargon": sum(src == "jargon" for _, src, _ in rows),
                       "sha256": hashlib.sha256(data).hexdigest()}
    files["README.md"] = readme(stats, package_versions()).encode("utf-8")
    return files, stats


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", type=Path, default=DEFAULT_OUT,
                   help="directory to write train.txt, validation.txt, README.md "
                        "(default: data/embedded next to this script)")
    p.add_argument("--bible_cmd", default="bible",
                   help="the `bible` program from the bible-kjv package (default: bible)")
    p.add_argument("--jargon", default=DEFAULT_JARGON,
                   help=f"path of the gzipped Jargon File text (default: {DEFAULT_JARGON})")
    p.add_argument("--check", action="store_true",
                   help="build in memory and compare with the files in --output_dir; "
                        "exit 1 if any differs, write nothing")
    return p.parse_args()


def main():
    args = parse_args()
    files, stats = build(args.bible_cmd, args.jargon)
    if args.check:
        return check_files(files, args.output_dir)
    write_files(files, args.output_dir)
    for name, s in stats.items():
        print(f"{args.output_dir / name}: {s['bytes']:,} bytes, {s['lines']:,} documents "
              f"({s['kjv']} KJV, {s['jargon']} Jargon)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
