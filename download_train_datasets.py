#!/usr/bin/env python3
"""Download English Wikipedia + BookCorpus (or read local text files) into one saved dataset.

The output directory holds a `datasets.DatasetDict` that the training script opens with
`datasets.load_from_disk(OUTPUT_DIR)`: a `train` split (and, with
--validation_split_percentage, a `validation` split), each with a single string column `text`.

Sources
  Wikipedia   `wikimedia/wikipedia`, config `20231101.en` (parquet, one article per row),
              the maintained replacement of the `wikipedia` script dataset.
  BookCorpus  the `bookcorpus` script dataset the original release used no longer loads with
              current `datasets`, and there is no maintained parquet export of it. Choose a
              community copy with --bookcorpus_source (each holds the original's sentences, one
              per row; the original had 74,004,228, and a different count prints a warning):
                samuelyang  (default) `SamuelYang/bookcorpus`, read from the Hub's own parquet
                            export of it (revision `refs/convert/parquet`, folder `default`).
                rojagtap    `rojagtap/bookcorpus`: the two original text files
                            books_large_p1.txt / books_large_p2.txt, read one line per row by
                            the `text` builder (about 4.6 GB to download).
                none        Wikipedia only.
  Local files --local_files FILE [FILE ...] replaces both Hub sources and needs no network:
              one document per line by default (empty lines are dropped); see
              --local_sample_by for blank-line separated paragraphs or whole files.

Resumable and idempotent: the dataset is written to OUTPUT_DIR.tmp-<pid>, a COMPLETE.json
marker (sources, sizes, arguments) is written into it last, and only then is it renamed to
OUTPUT_DIR. A rerun finds the marker and reuses the output (exit 0) unless --overwrite; if
the output was built with other arguments (or the local files changed since), it stops with
exit code 2 rather than reuse or replace it. A directory without the marker is never reused. Downloads are cached by `datasets` /
`huggingface_hub`, so a run interrupted during download resumes from the cache. A full build
needs disk for both that cache and the saved copy.

Offline: before any download the Hub endpoint is probed once with a short timeout, and
HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are honoured; either way the script stops with one line
that says what it could not reach (exit code 3), instead of retrying for minutes.

Examples
  python download_train_datasets.py --output_dir data/wiki_books
  python download_train_datasets.py --output_dir data/wiki_books_10k --sample 10000
  python download_train_datasets.py --output_dir data/embedded_ds \\
      --local_files data/embedded/train.txt --validation_split_percentage 5
"""

import argparse
import glob
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

MARKER = "COMPLETE.json"
MARKER_VERSION = 1
TEXT = "text"

WIKIPEDIA = {"path": "wikimedia/wikipedia", "default_config": "20231101.en"}
BOOKCORPUS_SOURCES = {
    "samuelyang": {"path": "SamuelYang/bookcorpus", "revision": "refs/convert/parquet",
                   "data_dir": "default", "expected_rows": 74_004_228},
    "rojagtap": {"path": "rojagtap/bookcorpus", "revision": None, "data_dir": None,
                 "expected_rows": 74_004_228},
    "none": None,
}
# Arguments that do not change the result: a complete output built with other values of
# these is still reused.
NOT_BUILD_ARGS = {"output_dir", "overwrite", "num_proc", "cache_dir", "hub_timeout"}


class SourceUnavailable(Exception):
    """A data source cannot be reached or read; the message is one line for the user."""


def build_parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True, type=Path,
                   help="where to save the DatasetDict (read it with datasets.load_from_disk)")
    p.add_argument("--bookcorpus_source", choices=sorted(BOOKCORPUS_SOURCES), default="samuelyang",
                   help="which BookCorpus copy to use; see the list below (default: samuelyang)")
    p.add_argument("--wikipedia_config", default=WIKIPEDIA["default_config"],
                   help="config (dump date and language) of wikimedia/wikipedia "
                        f"(default: {WIKIPEDIA['default_config']})")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="a quick subset: keep only N documents of each source (Wikipedia "
                        "articles, BookCorpus sentences, or documents of the local files). Hub "
                        "sources are streamed, so only what is needed is downloaded; the sample "
                        "is held in memory. Without --seed: the first N; with --seed: a seeded "
                        "shuffle (for Hub sources an approximate one: shard order plus a "
                        "10,000-document buffer)")
    p.add_argument("--seed", type=int, default=None,
                   help="shuffle before taking --sample, with this seed (default: no shuffle)")
    p.add_argument("--num_proc", type=int, default=None,
                   help="processes for downloading/preparing the Hub datasets and for saving "
                        "(default: one)")
    p.add_argument("--local_files", nargs="+", type=Path, default=None, metavar="FILE",
                   help="build from these local UTF-8 text files instead of the Hub (offline); "
                        "by default one document per line, empty lines dropped")
    p.add_argument("--local_sample_by", choices=["line", "paragraph", "document"], default="line",
                   help="how --local_files are cut into documents: each line (default), each "
                        "blank-line separated paragraph, or each whole file")
    p.add_argument("--validation_split_percentage", type=float, default=None, metavar="P",
                   help="hold out P%% of the documents as a 'validation' split: the runs of "
                        "consecutive documents run_pretrain.py would hold out, whatever --seed; "
                        "without it there is only 'train'")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild even if OUTPUT_DIR already holds a complete dataset, and "
                        "replace whatever OUTPUT_DIR holds")
    p.add_argument("--cache_dir", type=Path, default=None,
                   help="datasets cache directory (default: the datasets default, "
                        "HF_DATASETS_CACHE)")
    p.add_argument("--hub_timeout", type=float, default=10.0,
                   help="seconds to wait for the Hub when checking it is reachable (default: 10)")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.sample is not None and args.sample <= 0:
        p.error("--sample must be a positive number of documents")
    if args.validation_split_percentage is not None and not 0 < args.validation_split_percentage < 100:
        p.error("--validation_split_percentage must be between 0 and 100 (exclusive)")
    if args.local_files:
        missing = [str(f) for f in args.local_files if not f.is_file()]
        if missing:
            p.error(f"--local_files: no such file: {', '.join(missing)}")
    return args


# ----------------------------------------------------------------------------- the Hub

def offline_variable():
    """The name of the set HF_HUB_OFFLINE / HF_DATASETS_OFFLINE variable, if any."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return name
    return None


def hub_endpoint():
    from huggingface_hub import constants  # honours HF_ENDPOINT
    return constants.ENDPOINT.rstrip("/")


def check_hub_reachable(repo_ids, timeout):
    """Fail fast, with one line, if the Hub cannot be reached or a repository is missing."""
    if var := offline_variable():
        raise SourceUnavailable(
            f"{var} is set, so {', '.join(repo_ids)} cannot be downloaded from the Hugging Face "
            f"Hub; unset it, or build from local text with --local_files")
    endpoint = hub_endpoint()
    for repo in repo_ids:
        url = f"{endpoint}/api/datasets/{repo}"
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
        except urllib.error.HTTPError as e:  # the Hub answered
            if e.code in (401, 403, 404):
                raise SourceUnavailable(
                    f"{endpoint} answered HTTP {e.code} for dataset {repo}: it does not exist "
                    f"or needs authentication") from None
        except (urllib.error.URLError, OSError) as e:  # DNS, refused, timeout, TLS
            reason = getattr(e, "reason", e)
            raise SourceUnavailable(
                f"cannot reach the Hugging Face Hub at {endpoint} (needed for {repo}): "
                f"{reason}; check the network or HF_ENDPOINT, or use --local_files") from None


def _hub_errors():
    """Exception types that mean a download failed (network, offline mode, missing repo)."""
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    try:  # the HTTP client huggingface_hub uses (httpx, or httpx2 in recent releases)
        from huggingface_hub.utils import httpx
        transport = (httpx.HTTPError,)
    except ImportError:
        transport = ()
    return (ConnectionError, TimeoutError, HfHubHTTPError, OfflineModeIsEnabled,
            DatasetNotFoundError, *transport)


def _load_hub_text(name, path, *, config=None, revision=None, data_dir=None, args):
    """One Hub dataset's train split as a Dataset with only the `text` column."""
    from datasets import Dataset, Features, Value, load_dataset

    kwargs = dict(path=path, name=config, revision=revision, data_dir=data_dir, split="train",
                  cache_dir=str(args.cache_dir) if args.cache_dir else None)
    try:
        if args.sample:
            stream = load_dataset(**kwargs, streaming=True).select_columns([TEXT])
            if args.seed is not None:
                stream = stream.shuffle(seed=args.seed, buffer_size=10_000)
            texts = [row[TEXT] for row in stream.take(args.sample)]
            return Dataset.from_dict({TEXT: texts}, features=Features({TEXT: Value("string")}))
        ds = load_dataset(**kwargs, num_proc=args.num_proc)
        return ds.select_columns([TEXT])
    except _hub_errors() as e:
        raise SourceUnavailable(f"could not download {name} ({path}): "
                                f"{' '.join(str(e).split())}") from None


def load_wikipedia(args):
    return _load_hub_text("Wikipedia", WIKIPEDIA["path"], config=args.wikipedia_config, args=args)


def load_bookcorpus(args):
    src = BOOKCORPUS_SOURCES[args.bookcorpus_source]
    ds = _load_hub_text(f"BookCorpus ({args.bookcorpus_source})", src["path"],
                        revision=src["revision"], data_dir=src["data_dir"], args=args)
    if not args.sample and len(ds) != src["expected_rows"]:
        print(f"warning: BookCorpus from {src['path']} has {len(ds):,} rows, expected "
              f"{src['expected_rows']:,} (the original bookcorpus)", file=sys.stderr)
    return ds


# ----------------------------------------------------------------------------- local files

def load_local_files(args):
    """The local text files as one Dataset with a `text` column (no network)."""
    from datasets import load_dataset

    ds = load_dataset("text", data_files=[str(f) for f in args.local_files], split="train",
                      sample_by=args.local_sample_by, num_proc=args.num_proc,
                      cache_dir=str(args.cache_dir) if args.cache_dir else None)
    ds = ds.filter(lambda batch: [bool(t.strip()) for t in batch[TEXT]], batched=True,
                   num_proc=args.num_proc)
    if args.sample:
        if args.seed is not None:
            ds = ds.shuffle(seed=args.seed)
        ds = ds.select(range(min(args.sample, len(ds))))
    return ds


# ----------------------------------------------------------------------------- output

def build_arguments(args):
    """What determines the result, as JSON-able values: the relevant arguments and, for
    local files, their size and modification time (so an edited file is not silently reused)."""
    ignored = set(NOT_BUILD_ARGS)
    ignored |= {"bookcorpus_source", "wikipedia_config"} if args.local_files else {
        "local_files", "local_sample_by"}
    out = {k: v for k, v in sorted(vars(args).items()) if k not in ignored}
    if args.local_files:
        out["local_files"] = [{"path": str(f.resolve()), "bytes": f.stat().st_size,
                               "mtime_ns": f.stat().st_mtime_ns} for f in args.local_files]
    return out


def read_marker(output_dir):
    """The COMPLETE.json of a complete output, or None."""
    try:
        marker = json.loads((output_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("marker_version") != MARKER_VERSION or not (output_dir / "dataset_dict.json").is_file():
        return None
    return marker


def remove_stale_temporaries(output_dir):
    """Delete OUTPUT_DIR.tmp-<pid> / .old-<pid> left by runs whose process is gone."""
    for path in output_dir.parent.glob(f"{glob.escape(output_dir.name)}.*-*"):
        kind, _, pid = path.name[len(output_dir.name) + 1:].partition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # that run is still going
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        print(f"removing {path} left by an interrupted run")
        shutil.rmtree(path, ignore_errors=True)


def save_atomically(dataset_dict, output_dir, marker, num_proc=None):
    """Save to OUTPUT_DIR.tmp-<pid>, write the marker last, then rename into place."""
    tmp = output_dir.with_name(f"{output_dir.name}.tmp-{os.getpid()}")
    old = output_dir.with_name(f"{output_dir.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dataset_dict.save_to_disk(str(tmp), num_proc=num_proc)
        for name, split in dataset_dict.items():
            marker["splits"][name]["bytes_on_disk"] = sum(
                f.stat().st_size for f in (tmp / name).iterdir() if f.is_file())
        part = tmp / (MARKER + ".part")
        part.write_text(json.dumps(marker, indent=2) + "\n")
        os.replace(part, tmp / MARKER)
        if output_dir.exists():
            os.rename(output_dir, old)
        os.rename(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _looks_replaceable(path):
    """An empty directory or an earlier (incomplete) dataset of ours, not someone's folder."""
    return path.is_dir() and (not any(path.iterdir()) or (path / "dataset_dict.json").exists()
                              or (path / MARKER).exists())


def main(argv=None):
    args = parse_args(argv)
    output_dir = args.output_dir.resolve()
    build = build_arguments(args)

    if output_dir.exists() and not args.overwrite:
        marker = read_marker(output_dir)
        if marker is not None:
            if marker["arguments"] != build:
                changed = ", ".join(f"{k}: {marker['arguments'].get(k)!r} -> {v!r}"
                                    for k, v in build.items() if marker["arguments"].get(k) != v)
                print(f"error: {output_dir} is complete but was built with other arguments "
                      f"({changed}); pass --overwrite or choose another --output_dir",
                      file=sys.stderr)
                return 2
            sizes = ", ".join(f"{k}={v['documents']:,} documents"
                              for k, v in marker["splits"].items())
            print(f"{output_dir} is already complete ({sizes}; built {marker['created']}); "
                  f"reusing it (pass --overwrite to rebuild)")
            return 0
        if not _looks_replaceable(output_dir):
            print(f"error: {output_dir} exists and is not a dataset built by this script; "
                  f"pass --overwrite to replace it or choose another --output_dir",
                  file=sys.stderr)
            return 2
        print(f"{output_dir} has no {MARKER} (an incomplete earlier run); rebuilding it")

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output_dir)

    try:
        if args.local_files:
            sources = [("local_files", load_local_files, {"files": build["local_files"]})]
        else:
            sources = [("wikipedia", load_wikipedia,
                        {"path": WIKIPEDIA["path"], "config": args.wikipedia_config})]
            if BOOKCORPUS_SOURCES[args.bookcorpus_source]:
                src = BOOKCORPUS_SOURCES[args.bookcorpus_source]
                sources.append(("bookcorpus", load_bookcorpus,
                                {k: src[k] for k in ("path", "revision", "data_dir")}))
            check_hub_reachable([info["path"] for _, _, info in sources], args.hub_timeout)
        loaded, source_info = [], []
        for name, load, info in sources:
            print(f"loading {name} ...")
            ds = load(args)
            loaded.append(ds)
            source_info.append({"name": name, **info, "documents": len(ds)})
            print(f"  {name}: {len(ds):,} documents")
    except SourceUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 3

    from datasets import DatasetDict, concatenate_datasets

    train = concatenate_datasets(loaded) if len(loaded) > 1 else loaded[0]
    if args.validation_split_percentage:
        # The hold-out run_pretrain.py makes: runs of consecutive documents, independent of --seed,
        # both splits in stored order (documents are concatenated into blocks in that order).
        from apollo.corpus import split_holdout
        dataset_dict = split_holdout(train, args.validation_split_percentage)
    else:
        dataset_dict = DatasetDict(train=train)

    import datasets
    marker = {
        "marker_version": MARKER_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sources": source_info,
        "splits": {name: {"documents": len(split)} for name, split in dataset_dict.items()},
        "arguments": build,
        "command": [Path(sys.argv[0]).name] + list(sys.argv[1:] if argv is None else argv),
        "datasets_version": datasets.__version__,
    }
    save_atomically(dataset_dict, output_dir, marker, num_proc=args.num_proc)
    sizes = ", ".join(f"{k}={v['documents']:,}" for k, v in marker["splits"].items())
    print(f"saved {output_dir} ({sizes} documents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
