"""Bad input gets a clear error before any work (issue #4, part 4).

Each case must exit with status 2 and one stderr line naming the flag, no traceback, and leave
existing files alone: the output folder holds a file and --overwrite_output_dir is passed, so a
check that ran after the folder was cleared would show. Checks that need no data run against an
empty --cache_dir, which must stay empty: no tokenizer was trained and no text was tokenized.
Most cases run in-process (the import of torch/transformers dominates a fresh process); two run
the real command line to check the exit status, the single line and the time it takes.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
import torch

from conftest import run_inprocess, run_subprocess

BASE = {"model_type": "gpt2", "config_overrides": "n_layer=4,n_embd=32,n_head=4", "max_seq_length": 32,
        "max_train_samples": 16, "max_eval_samples": 8, "per_device_train_batch_size": 2,
        "apollo_layers": "1,2,4", "apollo_step_list": "2,4,6", "max_train_steps": 6, "eval_steps": 100}


@pytest.fixture(scope="module", autouse=True)
def small_data(tiny_corpus):
    """Runs that get past the checks train on a small slice of the corpus (see conftest)."""
    train, validation = tiny_corpus[1], tiny_corpus[3]
    BASE.update(train_file=train, validation_file=validation, tokenizer_vocab_size=2048)
    yield
    for name in ("train_file", "validation_file", "tokenizer_vocab_size"):
        BASE.pop(name)


def cli_args(**flags) -> list[str]:
    """BASE with FLAGS changed; a flag set to None is left out, one set to True is a switch."""
    args = []
    for name, value in {**BASE, **flags}.items():
        if value is not None:
            args += [f"--{name}"] + ([] if value is True else [str(value)])
    return args


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def work(tmp_path):
    """An output folder with a user's file in it, and an empty cache folder."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file\n")
    cache.mkdir()
    return out, cache


def assert_refused(args, flag, *, fragment="", untouched=(), empty=()):
    before = {folder: snapshot(folder) for folder in untouched}
    result = run_inprocess(args)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "error:" in lines[0] and f"--{flag}" in lines[0] and fragment in lines[0], lines[0]
    for folder in untouched:
        assert snapshot(folder) == before[folder], f"{folder} was changed"
    for folder in empty:
        assert not any(folder.iterdir()), f"work started before the check: {sorted(folder.rglob('*'))}"
    return lines[0]


# (case id, changed flags, flag named in the error, part of the message)
PRE_DATA_CASES = [
    ("layers_not_increasing", dict(apollo_layers="1,3,2"), "apollo_layers", "strictly increasing"),
    ("layers_with_zero", dict(apollo_layers="0,2,4"), "apollo_layers", ">= 1"),
    ("layers_not_model_depth", dict(apollo_layers="1,2,3"), "apollo_layers", "model's depth 4"),
    ("step_list_other_length", dict(apollo_step_list="2,6"), "apollo_step_list", "2 entries"),
    ("epoch_list_other_length", dict(apollo_step_list=None, max_train_steps=None, num_train_epochs=3,
                                     apollo_epoch_list="1,3"), "apollo_epoch_list", "2 entries"),
    ("step_list_not_increasing", dict(apollo_step_list="4,2,6"), "apollo_step_list", "increasing"),
    ("epoch_list_not_increasing", dict(apollo_step_list=None, max_train_steps=None, num_train_epochs=3,
                                       apollo_epoch_list="2,1,3"), "apollo_epoch_list", "increasing"),
    ("step_list_beyond_max_train_steps", dict(apollo_step_list="2,4,8"), "apollo_step_list", "beyond"),
    ("epoch_list_beyond_num_train_epochs", dict(apollo_step_list=None, max_train_steps=None, num_train_epochs=3,
                                                apollo_epoch_list="1,2,4"), "apollo_epoch_list", "beyond"),
    ("both_lists", dict(apollo_epoch_list="1,2,3", num_train_epochs=3), "apollo_step_list", "not both"),
    ("unknown_dist_function", dict(dist_function="gaussian"), "dist_function", "invalid choice"),
    ("unknown_grow_method", dict(grow_method="widen"), "grow_method", "invalid choice"),
    ("seq_beyond_positions", dict(config_overrides="n_layer=4,n_embd=32,n_head=4,n_positions=16"),
     "max_seq_length", "16 positions"),
    ("local_tokenizer_beyond_vocab", dict(config_overrides="n_layer=4,n_embd=32,n_head=4,vocab_size=1000"),
     "tokenizer_vocab_size", "2048 tokens but the model's vocab_size is 1000"),
    ("batch_size_zero", dict(per_device_train_batch_size=0), "per_device_train_batch_size", ">= 1"),
    ("accumulation_zero", dict(gradient_accumulation_steps=0), "gradient_accumulation_steps", ">= 1"),
    ("fp16_on_cpu", dict(mixed_precision="fp16", cpu=True), "mixed_precision", "fp16"),
]


@pytest.mark.parametrize("flags, flag, fragment", [c[1:] for c in PRE_DATA_CASES], ids=[c[0] for c in PRE_DATA_CASES])
def test_refused_before_any_work(work, flags, flag, fragment):
    out, cache = work
    args = cli_args(**flags, output_dir=out, overwrite_output_dir=True, cache_dir=cache)
    assert_refused(args, flag, fragment=fragment, untouched=[out], empty=[cache])


def test_missing_train_file(work):
    out, cache = work
    args = cli_args(train_file=out / "missing.txt", output_dir=out, overwrite_output_dir=True, cache_dir=cache)
    assert_refused(args, "train_file", fragment="no such file", untouched=[out], empty=[cache])


def test_empty_train_file(work, tmp_path):
    out, cache = work
    (tmp_path / "empty.txt").touch()
    args = cli_args(train_file=tmp_path / "empty.txt", output_dir=out, overwrite_output_dir=True, cache_dir=cache)
    assert_refused(args, "train_file", fragment="empty", untouched=[out], empty=[cache])


def test_dataset_without_text_column(work, tmp_path):
    from datasets import Dataset

    out, cache = work
    Dataset.from_dict({"content": ["In the beginning."] * 8}).save_to_disk(str(tmp_path / "saved"))
    args = cli_args(dataset_dir=tmp_path / "saved", train_file=None, validation_file=None, output_dir=out,
                    overwrite_output_dir=True, cache_dir=cache)
    assert_refused(args, "dataset_dir", fragment="no 'text' column", untouched=[out], empty=[cache])


def test_named_tokenizer_larger_than_embeddings(work, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    out, cache = work
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(300)} | {"[UNK]": 300}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", eos_token="[UNK]").save_pretrained(
        tmp_path / "tok")
    args = cli_args(tokenizer_name=tmp_path / "tok", config_overrides="n_layer=4,n_embd=32,n_head=4,vocab_size=100",
                    output_dir=out, overwrite_output_dir=True, cache_dir=cache)
    assert_refused(args, "tokenizer_name", fragment="301 tokens", untouched=[out], empty=[cache])


def test_bf16_where_the_gpu_cannot(work, monkeypatch):
    out, cache = work
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    args = cli_args(mixed_precision="bf16", output_dir=out, overwrite_output_dir=True, cache_dir=cache)
    assert_refused(args, "mixed_precision", fragment="bf16", untouched=[out], empty=[cache])


def test_stage_ends_beyond_an_epoch_based_run(work):
    # Steps per epoch depend on the data, so this check follows tokenization (shared cache), but it
    # still comes before the output folder is cleared: 16 blocks / batch 2 = 8 steps in 1 epoch.
    # The data is loaded first, so `datasets` may draw progress bars on stderr (only when its Arrow
    # cache is cold, i.e. depending on test order): silence them so the error line is all there is.
    import datasets
    out, _ = work
    args = cli_args(max_train_steps=None, num_train_epochs=1, apollo_step_list="2,4,10", output_dir=out,
                    overwrite_output_dir=True)
    datasets.disable_progress_bars()
    try:
        assert_refused(args, "apollo_step_list", fragment="beyond the run's 8 steps", untouched=[out])
    finally:
        datasets.enable_progress_bars()


def test_non_empty_output_dir_without_overwrite_or_resume(work):
    out, cache = work
    assert_refused(cli_args(output_dir=out, cache_dir=cache), "output_dir", fragment="not empty", untouched=[out],
                   empty=[cache])


def test_resume_latest_without_a_checkpoint(work):
    out, cache = work
    args = cli_args(output_dir=out, resume_from_checkpoint="latest", cache_dir=cache)
    assert_refused(args, "resume_from_checkpoint", fragment="no complete checkpoint", untouched=[out], empty=[cache])


def test_valid_flags_pass_the_checks(tmp_path):
    """The control: BASE itself trains, so each refusal above is due to the one flag it changes."""
    result = run_inprocess(cli_args(output_dir=tmp_path / "ok"))
    assert result.returncode == 0, result.stderr[-2000:]


# ---- resuming from a checkpoint of a different configuration ---------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    result = run_inprocess(cli_args(output_dir=out, save_steps=3))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.mark.parametrize("flags, flag, fragment", [
    (dict(config_overrides="n_layer=4,n_embd=64,n_head=4"), "config_overrides", "n_embd=64"),
    (dict(apollo_step_list="2,3,6"), "apollo_step_list", "'2,3,6'"),
    (dict(apollo_layers="2,3,4"), "apollo_layers", "'2,3,4'"),
], ids=["model_shape", "stage_ends", "stage_layers"])
def test_resume_from_a_different_configuration(finished_run, tmp_path, flags, flag, fragment):
    args = cli_args(**flags, output_dir=finished_run, resume_from_checkpoint="latest", cache_dir=tmp_path)
    assert_refused(args, flag, fragment=fragment, untouched=[finished_run], empty=[tmp_path])


def test_resume_accepts_reordered_overrides(finished_run, tmp_path):
    """The control: the same shape written in another order is the same configuration."""
    import shutil

    shutil.copytree(finished_run, tmp_path / "run")
    args = cli_args(config_overrides="n_head=4,n_embd=32,n_layer=4", output_dir=tmp_path / "run",
                    resume_from_checkpoint="latest")
    result = run_inprocess(args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Resumed from" in result.stdout


# ---- the real command line -------------------------------------------------------------------
def test_command_line_error_is_one_line_and_quick(work):
    out, cache = work
    before = snapshot(out)
    start = time.monotonic()
    args = cli_args(apollo_layers="1,3,2", output_dir=out, overwrite_output_dir=True, cache_dir=cache)
    result = run_subprocess(args, timeout=120)
    seconds = time.monotonic() - start
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("run_pretrain.py: error: --apollo_layers: must be strictly increasing")
    assert snapshot(out) == before and not any(cache.iterdir())
    # Python + torch + transformers imports take ~5-10 s on a loaded 2-core machine; no data work follows.
    assert seconds < 60, f"took {seconds:.1f} s"
