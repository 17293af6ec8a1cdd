"""Tests of download_train_datasets.py on small local files; none of them touches the network.

The Hub paths are exercised only through their failure modes: HF_HUB_OFFLINE, an endpoint on a
closed local port, and a `load_dataset` patched to raise the ConnectionError that `datasets`
raises when the Hub is unreachable.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import download_train_datasets as dtd  # noqa: E402

SCRIPT = ROOT / "download_train_datasets.py"
LINES_A = [f"Document number {i} of file a, with a few words." for i in range(5)]
LINES_B = [f"Document number {i} of file b." for i in range(3)]


@pytest.fixture
def corpus(tmp_path):
    """Two text files, one document per line, with an empty line that must be dropped."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(LINES_A[:2] + [""] + LINES_A[2:]) + "\n", encoding="utf-8")
    b.write_text("\n".join(LINES_B) + "\n", encoding="utf-8")
    return [a, b]


def build(tmp_path, files, *extra, out="out"):
    """Run main() in-process; returns (exit code, output dir)."""
    out_dir = tmp_path / out
    argv = ["--output_dir", str(out_dir), "--cache_dir", str(tmp_path / "cache"),
            "--local_files", *map(str, files), *extra]
    return dtd.main(argv), out_dir


def texts(out_dir, split="train"):
    from datasets import load_from_disk
    return list(load_from_disk(str(out_dir))[split]["text"])


def test_local_files_build_a_loadable_datasetdict(tmp_path, corpus):
    from datasets import DatasetDict, Value, load_from_disk

    rc, out = build(tmp_path, corpus)
    assert rc == 0
    dd = load_from_disk(str(out))
    assert isinstance(dd, DatasetDict)
    assert list(dd) == ["train"]
    assert dd["train"].column_names == ["text"]
    assert dd["train"].features["text"] == Value("string")
    assert dd["train"]["text"] == LINES_A + LINES_B  # file order kept, empty line dropped
    marker = json.loads((out / "COMPLETE.json").read_text())
    assert marker["splits"]["train"]["documents"] == 8
    assert marker["sources"][0]["documents"] == 8
    assert marker["splits"]["train"]["bytes_on_disk"] > 0
    assert not list(tmp_path.glob("out.tmp-*"))


def test_paragraph_mode_splits_on_blank_lines(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("first paragraph\nstill first\n\nsecond paragraph\n\n\nthird\n", encoding="utf-8")
    rc, out = build(tmp_path, [f], "--local_sample_by", "paragraph")
    assert rc == 0
    assert [t.strip() for t in texts(out)] == ["first paragraph\nstill first",
                                               "second paragraph", "third"]


def test_validation_split_is_disjoint_and_complete(tmp_path, corpus):
    rc, out = build(tmp_path, corpus, "--validation_split_percentage", "25", "--seed", "1")
    assert rc == 0
    train, val = texts(out, "train"), texts(out, "validation")
    assert len(val) == 2 and len(train) == 6
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(LINES_A + LINES_B)


def test_sample_takes_the_first_n_documents(tmp_path, corpus):
    rc, out = build(tmp_path, corpus, "--sample", "3")
    assert rc == 0
    assert texts(out) == LINES_A[:3]


def test_sample_with_seed_is_a_reproducible_shuffle(tmp_path, corpus):
    rc1, out1 = build(tmp_path, corpus, "--sample", "4", "--seed", "3", out="s1")
    rc2, out2 = build(tmp_path, corpus, "--sample", "4", "--seed", "3", out="s2")
    assert rc1 == rc2 == 0
    first, second = texts(out1), texts(out2)
    assert first == second
    assert len(first) == 4 and len(set(first)) == 4
    assert set(first) <= set(LINES_A + LINES_B)
    assert first != LINES_A[:4]


def test_rerun_reuses_the_complete_output_without_rewriting(tmp_path, corpus, monkeypatch, capsys):
    rc, out = build(tmp_path, corpus)
    assert rc == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    marker_before = (out / "COMPLETE.json").read_text()
    capsys.readouterr()

    def must_not_load(args):
        raise AssertionError("a complete output must be reused, not rebuilt")

    monkeypatch.setattr(dtd, "load_local_files", must_not_load)
    rc, _ = build(tmp_path, corpus)
    assert rc == 0
    assert "already complete" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert (out / "COMPLETE.json").read_text() == marker_before


def test_directory_without_marker_is_rebuilt(tmp_path, corpus, capsys):
    from datasets import Dataset, DatasetDict

    out = tmp_path / "out"
    # what an interrupted, non-atomic save would leave: a loadable dataset but no marker
    DatasetDict(train=Dataset.from_dict({"text": ["stale"]})).save_to_disk(str(out))
    assert not (out / "COMPLETE.json").exists()
    rc, _ = build(tmp_path, corpus)
    assert rc == 0
    assert "rebuilding" in capsys.readouterr().out
    assert texts(out) == LINES_A + LINES_B
    assert (out / "COMPLETE.json").is_file()


def test_marker_is_required_even_if_the_data_looks_fine(tmp_path, corpus):
    rc, out = build(tmp_path, corpus, "--sample", "2")
    assert rc == 0
    (out / "COMPLETE.json").unlink()
    assert dtd.read_marker(out) is None
    rc, _ = build(tmp_path, corpus, "--sample", "2")
    assert rc == 0
    assert dtd.read_marker(out) is not None


def test_foreign_directory_is_not_replaced(tmp_path, corpus):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("someone's file")
    rc, _ = build(tmp_path, corpus)
    assert rc == 2
    assert (out / "notes.txt").read_text() == "someone's file"
    assert not (out / "COMPLETE.json").exists()


def test_overwrite_rebuilds(tmp_path, corpus):
    rc, out = build(tmp_path, corpus)
    assert rc == 0
    created = json.loads((out / "COMPLETE.json").read_text())["created"]
    with corpus[1].open("a", encoding="utf-8") as f:
        f.write("A late addition.\n")
    time.sleep(1.01)  # "created" has one-second resolution
    rc, _ = build(tmp_path, corpus)  # changed input without --overwrite: refused, untouched
    assert rc == 2
    assert len(texts(out)) == 8
    rc, _ = build(tmp_path, corpus, "--overwrite")
    assert rc == 0
    assert texts(out) == LINES_A + LINES_B + ["A late addition."]
    assert json.loads((out / "COMPLETE.json").read_text())["created"] != created
    assert not list(tmp_path.glob("out.old-*")) and not list(tmp_path.glob("out.tmp-*"))


def test_other_arguments_are_not_silently_reused(tmp_path, corpus, capsys):
    rc, out = build(tmp_path, corpus, "--sample", "2")
    assert rc == 0
    rc, _ = build(tmp_path, corpus, "--sample", "5")
    assert rc == 2
    assert "sample: 2 -> 5" in capsys.readouterr().err
    assert len(texts(out)) == 2


def test_failed_save_leaves_no_output_and_no_temporary(tmp_path, corpus, monkeypatch):
    from datasets import DatasetDict

    def broken_save(self, path, **kwargs):
        Path(path).mkdir(parents=True)
        (Path(path) / "dataset_dict.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(DatasetDict, "save_to_disk", broken_save)
    with pytest.raises(OSError, match="disk full"):
        build(tmp_path, corpus)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("out.tmp-*"))


def test_stale_temporary_of_a_dead_run_is_removed(tmp_path, corpus):
    dead = 999_999
    while True:  # find a pid that is not running
        try:
            os.kill(dead, 0)
            dead -= 1
        except ProcessLookupError:
            break
        except PermissionError:
            dead -= 1
    stale = tmp_path / f"out.tmp-{dead}"
    stale.mkdir()
    (stale / "data-00000-of-00001.arrow").write_bytes(b"partial")
    rc, out = build(tmp_path, corpus)
    assert rc == 0
    assert not stale.exists()
    assert dtd.read_marker(out) is not None


def test_download_error_is_reported_in_one_line(tmp_path, monkeypatch, capsys):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikimedia/wikipedia' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(dtd, "check_hub_reachable", lambda repos, timeout: None)
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    out = tmp_path / "out"
    rc = dtd.main(["--output_dir", str(out), "--sample", "2"])
    assert rc != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: could not download Wikipedia") and "Couldn't reach" in err[0]
    assert not out.exists()


def run_script(tmp_path, env_changes, *args):
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT")}
    env.update(env_changes)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--output_dir", str(tmp_path / "out"), *args],
                          env=env, capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - start


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_mode_fails_fast_with_one_line(tmp_path, variable):
    proc, elapsed = run_script(tmp_path, {variable: "1"}, "--sample", "10")
    assert proc.returncode != 0
    assert elapsed < 10
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert variable in lines[0] and "wikimedia/wikipedia" in lines[0]
    assert not (tmp_path / "out").exists()


def test_unreachable_hub_fails_fast_with_one_line(tmp_path):
    with socket.socket() as s:  # a local port that nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    proc, elapsed = run_script(tmp_path, {"HF_ENDPOINT": endpoint}, "--hub_timeout", "3")
    assert proc.returncode != 0
    assert elapsed < 10
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot reach") and endpoint in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_every_flag_has_help():
    actions = [a for a in dtd.build_parser()._actions if a.option_strings != ["-h", "--help"]]
    assert {a.dest for a in actions} >= {"output_dir", "bookcorpus_source", "sample", "seed",
                                         "num_proc", "local_files", "validation_split_percentage",
                                         "overwrite"}
    assert all(a.help and len(a.help) > 15 for a in actions)
    assert set(dtd.BOOKCORPUS_SOURCES) == {"samuelyang", "rojagtap", "none"}
    assert all(f"  {name}" in dtd.__doc__ for name in dtd.BOOKCORPUS_SOURCES)
