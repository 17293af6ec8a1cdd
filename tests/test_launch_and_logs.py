"""Launch-path checks (issue #8, parts 4 and 5): --ddp_timeout reaches the process group, the
console log of the example scripts is readable, every command the README documents runs as
written from the repository root, and (issue 14) an example script preempted as a scheduler does
it checkpoints and resumes exactly."""
from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time

import pytest
import torch

from apollo.checkpoint import TrainerState, complete_checkpoints
from conftest import REPO, TORCHRUN_2, entry_command, final_weights, metrics_without_wall_clock, preempt, \
    subprocess_env

TINY = ["--model_type", "gpt2", "--tokenizer_vocab_size", 2048, "--max_seq_length", 32,
        "--config_overrides", "n_layer=2,n_embd=32,n_head=2", "--max_eval_samples", 4]


def launch_with_slow_preparation(args, delay_s: float):
    """2 CPU processes; the main process's data preparation takes `delay_s` seconds longer (a test hook)."""
    env = {**subprocess_env(), "APOLLO_TEST_PREPARE_DELAY_S": str(delay_s)}
    return subprocess.run(entry_command(args, TORCHRUN_2), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_short_ddp_timeout_fails_with_one_line_and_a_longer_one_passes(tiny_corpus, tmp_path):
    # Rank 1 waits in the preparation barrier while rank 0 sleeps 6 s: a 2 s limit fails there ...
    short = launch_with_slow_preparation([*tiny_corpus, *TINY, "--output_dir", tmp_path / "short",
                                          "--ddp_timeout", 2, "--max_train_steps", 2], 6)
    assert short.returncode != 0
    errors = [line for line in (short.stdout + short.stderr).splitlines() if "error: --ddp_timeout:" in line]
    assert len(errors) == 1, short.stderr[-3000:]
    assert "process 1 waited more than 2 s" in errors[0] and "--preprocess_only" in errors[0]
    assert "Preparing data; the other processes wait for it up to 2 s (--ddp_timeout)" in short.stdout
    # ... and with 120 s the same run trains.
    out = tmp_path / "long"
    long = launch_with_slow_preparation([*tiny_corpus, *TINY, "--output_dir", out, "--ddp_timeout", 120,
                                         "--max_train_steps", 2], 6)
    assert long.returncode == 0, long.stderr[-3000:]
    assert (out / "model.safetensors").exists()


def example_command(cache, *flags, folder=None):
    """The GPT-2 example script on a tiny model, and its environment: token cache in CACHE, output in
    FOLDER/run and log in FOLDER/logs (FOLDER: CACHE unless given)."""
    folder = folder or cache
    env = {**os.environ, "APOLLO_CACHE": str(cache), "APOLLO_LOG_DIR": str(folder / "logs"), "OMP_NUM_THREADS": "1"}
    env.pop("APOLLO_PROGRESS_BAR", None)
    args = ["bash", "example-scripts/run_pretrain_gpt_example.sh", "--output_dir", str(folder / "run"),
            "--config_overrides", "n_layer=2,n_embd=32,n_head=2", "--max_seq_length", "32",
            "--per_device_train_batch_size", "4", "--max_train_steps", "12", "--logging_steps", "4",
            "--max_eval_samples", "4", "--eval_steps", "12", "--save_strategy", "no", *flags]
    return args, env


def run_example(cache, *flags, tty: bool, folder=None):
    """The example run; its console output (through a pseudo-terminal if `tty`)."""
    args, env = example_command(cache, *flags, folder=folder)
    if not tty:
        result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout + result.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the pty's other end closed: the script has finished
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=60) == 0, b"".join(chunks)[-3000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def example_in_a_file(tmp_path_factory):
    """The example run with its console in a file: (its cache folder, the console output)."""
    cache = tmp_path_factory.mktemp("example")
    return cache, run_example(cache, tty=False)


@pytest.mark.parametrize("tty", [False, True], ids=["file", "terminal"])
def test_example_log_file_has_plain_lines(example_in_a_file, tmp_path, tty):
    cache, console = example_in_a_file
    folder = cache
    if tty:  # the same token cache, a folder of its own
        folder, console = tmp_path, run_example(cache, tty=True, folder=tmp_path)
    log = (folder / "logs" / "gpt_example.log").read_text()
    assert "\r" not in log
    assert re.findall(r"^step (\d+)/12 loss", log, flags=re.M) == ["4", "8", "12"]
    assert re.findall(r"^step (\d+): eval_loss", log, flags=re.M) == ["0", "12"]  # on lines of their own
    assert all(" 100%|" in line for line in re.findall(r"^train:.*", log, flags=re.M))  # the bar's final state only
    if tty:
        assert re.search(r"\rtrain: +\d+%", console)  # on a terminal the bar is kept
    else:
        assert "\r" not in console and not re.search(r"^train:", console, flags=re.M)


def test_a_rerun_appends_to_the_log_and_to_a_callers_file(example_in_a_file, tmp_path):
    """Rerun with a typo, the example keeps the finished run's log (a header line per run, then its console) and
    leaves what a file the caller appends the console to (>>) already held."""
    cache, _ = example_in_a_file
    first = (cache / "logs" / "gpt_example.log").read_text()
    assert first.startswith("# ") and "run_pretrain.py" in first.splitlines()[0]
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "gpt_example.log").write_text(first)  # the finished run's log, where the rerun logs
    console = tmp_path / "console.txt"
    console.write_text("earlier line\n")
    args, env = example_command(cache, "--max_train_stepz", "3", folder=tmp_path)
    with open(console, "a") as out:
        rerun = subprocess.run(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=300)
    assert rerun.returncode == 2
    error = "error: unrecognized arguments: --max_train_stepz 3"
    text = console.read_text()
    assert text.startswith("earlier line\n[example] gpt_example:") and error in text
    log = (tmp_path / "logs" / "gpt_example.log").read_text()
    assert log.startswith(first)
    header, *rest = log[len(first):].splitlines()
    assert header.startswith("# ") and header.rstrip().endswith("--max_train_stepz 3") and error in rest[-1]


def test_preempted_example_with_loader_workers_checkpoints_and_resumes_exactly(example_in_a_file, tmp_path):
    """SIGTERM to every process of the example script (shell, python, its 2 DataLoader workers, tee, awk),
    as a scheduler's preemption sends it: the run checkpoints at the next step boundary, the log keeps its
    last lines (tee and awk outlived the signal), the script exits 0, and a resumed run (same command plus
    --resume_from_checkpoint latest) ends exactly where the uninterrupted run ended."""
    cache, _ = example_in_a_file
    out = tmp_path / "run"
    args, env = example_command(cache, "--dataloader_num_workers", "2", folder=tmp_path)
    metrics = out / "metrics.jsonl"  # the step-0 evaluation reaches it before step 1
    proc = preempt(args, env=env, ready=lambda: metrics.exists() and metrics.read_text() != "")
    assert proc.returncode == 0, proc.stdout[-3000:]
    [ckpt] = complete_checkpoints(out)
    stopped = TrainerState.read(ckpt).step
    assert 1 <= stopped < 12
    log = (tmp_path / "logs" / "gpt_example.log").read_text()
    assert f"Stop requested: saved a checkpoint at step {stopped}" in log, proc.stdout[-3000:]

    resumed = subprocess.run([*args, "--resume_from_checkpoint", "latest"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    got, want = final_weights(out), final_weights(cache / "run")
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)
    assert metrics_without_wall_clock(out) == metrics_without_wall_clock(cache / "run")


def documented_python_commands() -> list[str]:
    """`python SCRIPT.py` and `python -m apollo.X` commands in the READMEs and scripts (not pytest)."""
    text = "".join(p.read_text() for p in [REPO / "README.md", *REPO.glob("*/README.md"),
                                           *REPO.glob("example-scripts/*.sh"), *REPO.glob("full-scripts/*.sh")])
    found = set(re.findall(r"python ((?:-m apollo\.\w+)|(?:[\w./-]+\.py))", text))
    return sorted(found)


def test_every_documented_command_runs_from_the_repository_root():
    commands = documented_python_commands()
    assert {"run_pretrain.py", "download_train_datasets.py", "benchmarks/shared_vs_stock.py", "benchmarks/data_path.py",
            "benchmarks/compare.py", "data/build_embedded_corpus.py", "-m apollo.plot"} <= set(commands)
    env = {k: v for k, v in subprocess_env().items() if k != "PYTHONPATH"}  # as a user's shell has it
    procs = {c: subprocess.Popen([sys.executable, *c.split(), "--help"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for c in commands}
    for command, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "usage:" in stdout, f"python {command} --help: {stderr[-2000:]}"


def full_script(script, env_extra, *args):
    env = {**os.environ, **env_extra}
    return subprocess.run([str(REPO / "full-scripts" / script), *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_full_scripts_pass_a_long_ddp_timeout_and_preprocess_in_one_process(tmp_path):
    launch = full_script("gpt2_base_apollo.sh", {"GPUS_PER_NODE": "8", "DATASET_DIR": "/data/wiki", "DRY_RUN": "1"})
    assert launch.returncode == 0, launch.stderr
    assert "accelerate launch" in launch.stdout and "--ddp_timeout 36000" in launch.stdout
    # PREPROCESS_ONLY=1: one plain process with the same flags (needs no GPU) builds the cache and exits.
    dry = full_script("gpt2_base_apollo.sh", {"PREPROCESS_ONLY": "1", "DATASET_DIR": "/data/wiki", "DRY_RUN": "1"})
    assert dry.returncode == 0, dry.stderr
    assert "accelerate launch" not in dry.stdout and "run_pretrain.py" in dry.stdout
    assert dry.stdout.rstrip().endswith("--preprocess_only")
    out = tmp_path / "out"
    real = full_script("bert_base_apollo.sh", {"APOLLO_SMOKE": "1", "PREPROCESS_ONLY": "1", "OUTPUT_DIR": str(out),
                                               "APOLLO_CACHE": str(tmp_path / "cache"), "LOG_DIR": str(tmp_path)})
    assert real.returncode == 0, real.stdout[-2000:] + real.stderr[-2000:]
    assert "Tokenizer and token cache ready" in real.stdout
    assert len(list((tmp_path / "cache" / "blocks").iterdir())) == 1 and not out.exists()
