"""Two CPU processes (torchrun, gloo) against one (issue #4, part 3, and preemption of all ranks), and the
loop's multi-process behaviour (issue 14): idle Apollo slots out of DDP, one host sync and one collective
per steady-state step, and a failing rank that ends every rank (one node, and two one-process "nodes").

GPT-2 with dropout off: dropout masks come from each rank's own RNG stream, so with dropout on,
2 processes and 1 process necessarily drop different units. BERT is not used for the weight
comparison: its per-rank MLM loss is a mean over that rank's masked tokens, and ranks hold different
numbers of them, so the DDP average of two rank means is not the one-process mean over all tokens
(a real, expected difference, not a bug). GPT-2's causal loss has the same token count on every row.
Each torchrun launch costs 15-40 s on two cores, so the launches are few and each checks much.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import torch

from apollo.checkpoint import TrainerState, complete_checkpoints
from conftest import REPO, TORCHRUN_2, entry_command, final_weights, read_jsonl, run_inprocess, run_subprocess, \
    signal_whole_job, subprocess_env

TOTAL = 8
GROWTH_STEPS = [2, 4]  # stages 1, 2, 4 unique layers end after steps 2 and 4: growth lines name the finished steps


@pytest.fixture(scope="module")
def run_args(tiny_corpus):
    def args(out, per_device_batch, *extra):
        # 32 blocks; global batch 4 x 2 micro-batches: 4 steps per epoch, two growths, an epoch boundary.
        # The default learning rate (1e-4): the first Adam steps of a freshly grown slot move each weight
        # by about lr * g / (|g| + eps), so float-rounding differences in near-zero gradients become
        # lr-sized weight differences (measured 4e-8 at 1e-4 but 1.3e-5 at lr 1e-3).
        return [*tiny_corpus, "--tokenizer_vocab_size", 2048, "--model_type", "gpt2",
                "--config_overrides", "n_layer=4,n_embd=32,n_head=4,resid_pdrop=0,embd_pdrop=0,attn_pdrop=0",
                "--output_dir", out, "--max_seq_length", 32, "--max_train_samples", 32, "--max_eval_samples", 8,
                "--per_device_train_batch_size", per_device_batch, "--gradient_accumulation_steps", 2,
                "--apollo_layers", "1,2,4", "--apollo_step_list", "2,4,8",
                "--max_train_steps", TOTAL, "--eval_steps", 4, "--apollo_info_output_file", "sched", *extra]

    return args


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, run_args):
    out = tmp_path_factory.mktemp("one_process") / "run"
    result = run_inprocess(run_args(out, 4, "--save_strategy", "no"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


COUNT_SYNCS = str(REPO / "tests" / "count_syncs.py")
PEAK = 0.002  # --peak_tflops of the reference run: MFU is per device
DDP_FOUND_NOTHING = "find_unused_parameters=True was specified in DDP constructor, but did not find any unused"


def torchrun(args, *, env_extra=None, entry=None, timeout=300) -> subprocess.CompletedProcess:
    """2 CPU processes of `entry` (default run_pretrain.py) with ARGS."""
    command = [*TORCHRUN_2, entry or str(REPO / "run_pretrain.py"), *map(str, args)]
    return subprocess.run(command, cwd=REPO, env={**subprocess_env(), **(env_extra or {})}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, run_args):
    """The 2-process reference run, through tests/count_syncs.py (it only observes: see its docstring)."""
    out = tmp_path_factory.mktemp("two_processes") / "run"
    result = torchrun(run_args(out, 2, "--save_strategy", "no", "--peak_tflops", PEAK), entry=COUNT_SYNCS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_jsonl(out / "metrics.jsonl")  # rank 0 logged
    (out / "stderr.txt").write_text(result.stderr)
    return out


def test_two_processes_match_one_process_with_twice_the_batch(one_process, two_processes):
    one, two = final_weights(one_process), final_weights(two_processes)
    assert one.keys() == two.keys()
    diff = max((one[n] - two[n]).abs().max().item() for n in one)
    assert diff <= 1e-5, f"max abs weight difference {diff:.3g} between 1 and 2 processes"
    # Same trajectory step by step, not only at the end.
    losses = lambda out: [(r["step"], r.get("loss", r.get("eval_loss"))) for r in read_jsonl(out / "metrics.jsonl")
                          if "event" not in r]
    for (step_1, loss_1), (step_2, loss_2) in zip(losses(one_process), losses(two_processes), strict=True):
        assert step_1 == step_2 and loss_1 == pytest.approx(loss_2, rel=1e-5, abs=1e-6)
    growth = lambda out: [r for r in read_jsonl(out / "metrics.jsonl") if r.get("event") == "growth"]
    assert [r["step"] for r in growth(two_processes)] == GROWTH_STEPS
    assert growth(two_processes) == growth(one_process)


def test_schedule_files_of_both_ranks_are_identical(one_process, two_processes):
    rank0, rank1 = read_jsonl(two_processes / "sched.rank_0"), read_jsonl(two_processes / "sched.rank_1")
    assert len(rank0) == TOTAL * 2
    assert rank0 == rank1
    assert rank0 == read_jsonl(one_process / "sched.rank_0")  # and the same depth draws as one process
    assert not (one_process / "sched.rank_1").exists()


def test_sigterm_to_one_rank_stops_all_ranks_then_resumes_exactly(run_args, two_processes, tmp_path):
    """Preemption may reach one rank first: every rank must stop after the same step, with one
    checkpoint; resuming on two processes then ends exactly where the uninterrupted run did."""
    out = tmp_path / "preempted"
    proc = subprocess.Popen(entry_command(run_args(out, 2, "--save_strategy", "no"), TORCHRUN_2), cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        # Rank 0 writes the step-0 evaluation after both ranks installed their handlers (it needs
        # rank 1 inside the evaluation's all-reduce), and before step 1.
        deadline = time.monotonic() + 300
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        [rank1] = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
        rank1.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    [ckpt] = complete_checkpoints(out)
    stopped = TrainerState.read(ckpt).step
    assert 1 <= stopped < TOTAL, "the stop request was not honoured before the run ended"
    assert f"Stop requested: saved a checkpoint at step {stopped}" in stdout
    assert {p.name for p in ckpt.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    rank0, rank1 = read_jsonl(out / "sched.rank_0"), read_jsonl(out / "sched.rank_1")
    assert rank0 == rank1 and rank0[-1]["curr_global_step"] == stopped - 1  # both ranks stopped after it
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r][-1] == stopped
    assert not (out / "model.safetensors").exists()

    result = run_subprocess(run_args(out, 2, "--save_strategy", "no", "--resume_from_checkpoint", "latest"),
                            launcher=TORCHRUN_2)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed, reference = final_weights(out), final_weights(two_processes)
    assert all(torch.equal(resumed[n], reference[n]) for n in reference), "2-process resume is not exact"
    for name in ("sched.rank_0", "sched.rank_1"):
        assert read_jsonl(out / name) == read_jsonl(two_processes / name)


def test_gradient_checkpointing_matches_bit_for_bit(run_args, two_processes, tmp_path):
    """Apollo under 2-process DDP with --gradient_checkpointing: shared blocks run several times in one
    pass. Reentrant checkpointing would mark their parameters ready once per use, which DDP refuses;
    the non-reentrant kind trains, and recomputation changes no bit of the result on CPU."""
    out = tmp_path / "checkpointed"
    result = run_subprocess(run_args(out, 2, "--save_strategy", "no", "--gradient_checkpointing"), launcher=TORCHRUN_2)
    assert result.returncode == 0, result.stderr[-3000:]
    plain, checkpointed = final_weights(two_processes), final_weights(out)
    assert plain.keys() == checkpointed.keys()
    assert all(torch.equal(plain[n], checkpointed[n]) for n in plain)
    losses = lambda run: [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]
    assert losses(out) == losses(two_processes) and len(losses(out)) == TOTAL


# ---- DDP without the unused-parameter search (issue 14, item 5) --------------------------------
def test_idle_slots_out_of_ddp_train_bit_identically_to_the_unused_parameter_search(run_args, two_processes,
                                                                                  tmp_path):
    """The reference for keeping idle slots out of DDP (and re-wrapping DDP at each growth) is the former
    setup, every slot in DDP with find_unused_parameters=True, kept reachable for this test only. On 2
    processes gloo sums each gradient element of two ranks, so bucketing cannot change a bit: the final
    weights and every logged loss must be equal. DDP's warning that the search found nothing (it searched in
    the last stage, where every slot is used) must be gone."""
    out = tmp_path / "find_unused"
    old = torchrun(run_args(out, 2, "--save_strategy", "no"), env_extra={"APOLLO_TEST_DDP_FIND_UNUSED": "1"})
    assert old.returncode == 0, old.stderr[-3000:]
    new, reference = final_weights(two_processes), final_weights(out)
    assert new.keys() == reference.keys()
    differ = [n for n in reference if not torch.equal(new[n], reference[n])]
    assert not differ, f"weights differ from the find_unused_parameters run: {differ}"
    losses = lambda run: [r.get("loss", r.get("eval_loss")) for r in read_jsonl(run / "metrics.jsonl")]
    assert losses(two_processes) == losses(out)
    assert DDP_FOUND_NOTHING in old.stderr  # the check below can fail
    assert DDP_FOUND_NOTHING not in (two_processes / "stderr.txt").read_text()


def test_the_process_group_outlives_every_ddp_wrapper(two_processes):
    """The end of a run destroys the process group once, when no DDP wrapper is left: a DDP reducer freed
    after the group runs gloo's destructor with the GIL held, and that can deadlock with a gloo worker
    thread (the run hung after saving its model, about once in 30 CPU runs; apollo/stage_ddp.py)."""
    for rank in (0, 1):
        assert json.loads((two_processes / f"teardown.rank_{rank}.json").read_text()) == [0]


# ---- one host sync per step (issue 14, item 6) --------------------------------------------------
# transformers' causal-mask preparation reads one value per forward pass of a causal LM (it checks
# whether the position ids hold packed sequences); it sits inside the stock model, not in our loop.
LIBRARY_SYNC = "__bool__ in masking_utils.py:find_packed_sequence_indices"


def test_one_host_sync_and_one_collective_per_steady_state_step(two_processes):
    """Per optimizer step without an evaluation, growth or checkpoint: one transfer to the host (loss,
    gradient norm and stop flag together) and one all-reduce, on both ranks."""
    for rank in (0, 1):
        intervals = json.loads((two_processes / f"syncs.rank_{rank}.json").read_text())
        assert len(intervals) == TOTAL + 1  # one per step, then the work after the last update
        steady = [i for i in range(1, TOTAL) if not intervals[i]["events"]]
        assert len(steady) >= 4, intervals
        for i in steady:
            syncs = [c for c in intervals[i]["syncs"] if not c.startswith(LIBRARY_SYNC)]
            assert len(syncs) == 1 and syncs[0].startswith("tolist in train_step.py:step_outcome"), (i, syncs)
            assert len(intervals[i]["syncs"]) - len(syncs) == 2  # the library's, once per micro-batch
            [collective] = intervals[i]["collectives"]
            assert collective.startswith("all_reduce in train_step.py:step_outcome"), (i, collective)
        # The counter sees what it should: evaluations and growths add their own.
        assert any(len(intervals[i]["collectives"]) > 1 for i in range(TOTAL) if "evaluation" in intervals[i]["events"])


def test_mfu_is_per_device(two_processes):
    """The job's FLOPs of a step (both ranks') over its seconds, over 2 devices' peak."""
    previous = 0.0
    for r in [r for r in read_jsonl(two_processes / "metrics.jsonl") if "loss" in r]:
        seconds = r["elapsed_s"] - previous
        assert r["mfu"] == pytest.approx(r["step_flops"] / seconds / 2 / (PEAK * 1e12), rel=1e-3)
        assert r["tokens_per_s"] == pytest.approx(2 * 2 * 2 * 32 / seconds, rel=1e-3)  # ranks x batch x accum x seq
        previous = r["elapsed_s"]


# ---- a failing rank ends the job (issue 14, item 4) -----------------------------------------------
FAIL_STEP = 6  # checkpoint 4 is the last one before it (--save_steps 4), and no log line is written after it
LINGER = str(REPO / "tests" / "linger_after_failure.py")


def error_lines(text: str) -> list[str]:
    return [line.split("error: ", 1)[1] for line in text.splitlines() if ": error: " in line]


def assert_failure_reported(failing: int, stderr_failing: str, stderr_other: str) -> None:
    """One line from each rank: the failing one says where it failed, the other that it stopped for that."""
    failed = f"rank {failing} failed at step {FAIL_STEP}: RuntimeError: APOLLO_TEST_FAIL_AT={failing}:{FAIL_STEP}: " \
             f"a failure planted for a test"
    other = 1 - failing
    assert [line for line in error_lines(stderr_failing) if line.startswith(f"rank {failing} ")] == [failed], \
        stderr_failing[-3000:]
    assert [line for line in error_lines(stderr_other) if line.startswith(f"rank {other} ")] == [
        f"rank {other} stopped: {failed}"], stderr_other[-3000:]


def assert_logged_until_the_failure(out) -> None:
    """metrics.jsonl (rank 0's) holds every step before the failure: buffered lines were written on the way down
    (no logging step, evaluation or checkpoint came after step 4)."""
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r] == list(range(1, FAIL_STEP))


def test_a_failing_rank_ends_both_ranks_of_one_node_and_the_last_checkpoint_resumes_exactly(run_args, two_processes,
                                                                                          tmp_path):
    """torchrun's agent would end the failed rank's sibling by itself on one node; our part is the line that
    says which rank failed where, the logs written up to the failure, and a checkpoint that resumes exactly.
    Rank 0, which writes metrics.jsonl, fails here. --ddp_timeout 3600: a rank left waiting would hit the
    test's timeout first."""
    out = tmp_path / "failed"
    args = run_args(out, 2, "--save_steps", 4, "--ddp_timeout", 3600, "--logging_steps", 100)
    result = torchrun(args, env_extra={"APOLLO_TEST_FAIL_AT": f"0:{FAIL_STEP}"})
    assert result.returncode != 0
    assert_failure_reported(0, result.stderr, result.stderr)
    assert_logged_until_the_failure(out)
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-4"]

    resumed = torchrun(run_args(out, 2, "--save_strategy", "no", "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got, want = final_weights(out), final_weights(two_processes)
    assert all(torch.equal(got[n], want[n]) for n in want), "resume after a failure is not exact"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failing_rank_on_another_node_ends_this_node(run_args, tmp_path):
    """Two one-process "nodes" (two torchrun launches, no agent kills the other's rank). The failing rank 1
    stays alive after its failure (tests/linger_after_failure.py), as a rank on another node whose death
    NCCL does not notice: rank 0's next collective would then wait for --ddp_timeout (3600 s here). It must
    end well before the test's timeout, non-zero, saying which rank failed where."""
    out = tmp_path / "two_nodes"
    port = free_port()
    args = [str(a) for a in run_args(out, 2, "--save_steps", 4, "--ddp_timeout", 3600, "--logging_steps", 100)]
    env = {**subprocess_env(), "APOLLO_TEST_FAIL_AT": f"1:{FAIL_STEP}"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(k), "--master_addr", "127.0.0.1", "--master_port", str(port),
                               LINGER, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True) for k in (0, 1)]
    marker = out / "lingering.rank_1"
    try:
        _, stderr_0 = nodes[0].communicate(timeout=300)
        assert nodes[0].returncode != 0
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:  # rank 1 has printed its line
            time.sleep(0.1)
    finally:
        if marker.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(marker.read_text()), signal.SIGKILL)
        for node in nodes:  # its launcher, and its rank (in a session of its own) if still there
            signal_whole_job(node.pid, signal.SIGKILL)
        _, stderr_1 = nodes[1].communicate(timeout=60)
    assert_failure_reported(1, stderr_1, stderr_0)
    assert_logged_until_the_failure(out)  # by rank 0's watcher, on its way out
