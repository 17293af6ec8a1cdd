"""Per-block compilation without shape churn, throughput in the logs, buffered logs and failure lines (issue 14,
items 7 and 9, and the small pieces of items 4 and 6), on tiny in-process runs.

Compilation is checked with a recording dynamo backend instead of inductor: it sees exactly the graphs
dynamo would hand to inductor (how many, and whether an input dimension is symbolic), in seconds.
"""
from __future__ import annotations

import re

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

from apollo.logs import JsonLines, close_open_logs, flush_open_logs
from apollo.rank_failures import failure_line
from apollo.throughput import device_peak_tflops
from conftest import read_jsonl, run_inprocess

TRAIN_BATCH, EVAL_BATCH, EVAL_BLOCKS = 2, 3, 7  # evaluation: batches of 3, 3 and a last one of 1


def tiny_run(corpus, out, *extra):
    return [*corpus, "--tokenizer_vocab_size", 2048, "--model_type", "gpt2", "--config_overrides",
            "n_layer=4,n_embd=32,n_head=4", "--output_dir", out, "--max_seq_length", 32, "--max_train_samples", 16,
            "--max_eval_samples", EVAL_BLOCKS, "--per_device_train_batch_size", TRAIN_BATCH,
            "--per_device_eval_batch_size", EVAL_BATCH, "--apollo_layers", "1,2,4", "--apollo_step_list", "2,4,6",
            "--max_train_steps", 6, "--eval_steps", 3, "--save_strategy", "no", *extra]


# ---- compile (item 7) ----------------------------------------------------------------------------
def test_per_block_compile_makes_one_static_graph_for_training_and_one_for_evaluation(tiny_corpus, tmp_path,
                                                                                        monkeypatch):
    """Evaluation batches (3, and a last one of 1) differ from training batches (2). Dynamo's default
    would recompile the blocks with a symbolic batch dimension and train on that graph; a last partial
    batch would add another. Expected: two graphs (training with gradients, evaluation without), both
    static, over four stages' depth plans, two growths and three evaluations."""
    graphs = []

    def recording_backend(gm, example_inputs):
        # The graph's inputs as dynamo traced them: a dynamic dimension is a SymInt (also passed as an input).
        traced = [n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder"]
        symbolic = [str(v) for v in traced if isinstance(v, torch.SymInt) or
                    (isinstance(v, torch.Tensor) and any(isinstance(d, torch.SymInt) for d in v.shape))]
        shapes = [tuple(v.shape) for v in traced if isinstance(v, torch.Tensor) and v.ndim == 3]
        graphs.append({"grad": torch.is_grad_enabled(), "symbolic_inputs": symbolic, "shapes": shapes})
        return gm.forward

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: compile_module(
        self, *args, **{**kwargs, "backend": recording_backend}))
    torch._dynamo.reset()
    try:
        result = run_inprocess(tiny_run(tiny_corpus, tmp_path / "run", "--torch_compile"))
    finally:
        torch._dynamo.reset()
    assert result.returncode == 0, result.stderr[-3000:]
    assert [g["grad"] for g in graphs] == [False, True], graphs  # step-0 evaluation first, then training
    assert all(not g["symbolic_inputs"] for g in graphs), graphs
    assert graphs[0]["shapes"][0][0] == EVAL_BATCH and graphs[1]["shapes"][0][0] == TRAIN_BATCH
    assert len([r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval_loss" in r]) == 3


def test_padding_the_last_evaluation_batch_keeps_the_loss():
    """Rows with labels all -100 carry no target: the loss per target token over 7 blocks is the same in
    batches of 3, 3, 1, in padded batches of 3, 3, 3, and in one batch of 7 (the reference)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from apollo.batches import BlockCollator, eval_batches
    from apollo.evaluation import evaluate

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=16))
    blocks = Dataset.from_dict({"input_ids": torch.randint(0, 97, (EVAL_BLOCKS, 16)).tolist()}).with_format("torch")
    collator = BlockCollator(None, False, 0.15, seed=0)
    padded = list(eval_batches(blocks, EVAL_BATCH, 0, 1, collator, pad=True))
    assert [len(b["input_ids"]) for b in padded] == [EVAL_BATCH] * 3
    assert (padded[-1]["labels"][1:] == -100).all() and (padded[-1]["labels"][0] != -100).all()
    accelerator = Accelerator(cpu=True)
    try:
        plan = [0, 1]
        reference = evaluate(accelerator, model, plan, blocks, collator, EVAL_BLOCKS)
        plain = evaluate(accelerator, model, plan, blocks, collator, EVAL_BATCH)
        with_padding = evaluate(accelerator, model, plan, blocks, collator, EVAL_BATCH, pad=True)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert plain == pytest.approx(reference, rel=1e-6)
    assert with_padding == pytest.approx(reference, rel=1e-6)  # summation order differs, nothing else


# ---- throughput (item 9) ----------------------------------------------------------------------------
LINE = re.compile(r"^step (\d+)/\d+ loss .* tok/s (\d+)(?: MFU ([\d.]+)%)?$", re.M)


def test_tokens_per_second_and_mfu_match_a_recomputation_from_the_metrics(tiny_corpus, tmp_path):
    """Per step in metrics.jsonl, and per logging interval on the console: tokens and FLOPs done over
    training seconds elapsed (the metrics' own `tokens`, `step_flops`/`flops` and `elapsed_s`, rounded to
    microseconds), MFU over one device's --peak_tflops."""
    peak = 0.002  # TFLOP/s: a tiny CPU model then shows a visible MFU
    result = run_inprocess(tiny_run(tiny_corpus, tmp_path / "run", "--peak_tflops", peak, "--logging_steps", 2,
                                    "--gradient_accumulation_steps", 2))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MFU not logged" not in result.stdout
    records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    previous = {"tokens": 0, "flops": 0.0, "elapsed_s": 0.0}
    for r in records:
        seconds = r["elapsed_s"] - previous["elapsed_s"]
        assert r["tokens_per_s"] == pytest.approx((r["tokens"] - previous["tokens"]) / seconds, rel=1e-3)
        assert r["mfu"] == pytest.approx(r["step_flops"] / seconds / 1 / (peak * 1e12), rel=1e-3)
        previous = r
    lines = LINE.findall(result.stdout)
    assert [int(step) for step, _, _ in lines] == [2, 4, 6]
    by_step = {0: {"tokens": 0, "flops": 0.0, "elapsed_s": 0.0}, **{r["step"]: r for r in records}}
    for step, rate, util in lines:
        since, now = by_step[int(step) - 2], by_step[int(step)]
        seconds = now["elapsed_s"] - since["elapsed_s"]
        want_rate = (now["tokens"] - since["tokens"]) / seconds
        want_mfu = 100 * (now["flops"] - since["flops"]) / seconds / (peak * 1e12)
        assert abs(int(rate) - want_rate) <= 0.5 + 1e-3 * want_rate
        assert abs(float(util) - want_mfu) <= 0.05 + 1e-3 * want_mfu


def test_without_a_known_peak_mfu_is_null_and_said_once(tiny_corpus, tmp_path):
    result = run_inprocess(tiny_run(tiny_corpus, tmp_path / "run", "--logging_steps", 2))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("MFU not logged: no peak bf16 FLOP/s known for cpu; pass --peak_tflops") == 1
    records = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert records and all(r["mfu"] is None and r["tokens_per_s"] > 0 for r in records)
    assert [util for _, _, util in LINE.findall(result.stdout)] == ["", "", ""]


@pytest.mark.parametrize("name, peak", [("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100-PCIE-40GB", 312),
                                        ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756),
                                        ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989), ("NVIDIA H200 NVL", 835),
                                        ("NVIDIA GeForce RTX 4090", None), ("cpu", None)])
def test_peak_table(name, peak):
    assert device_peak_tflops(name) == peak


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_bad_peak_tflops_is_refused_in_one_line(tmp_path, value):
    result = run_inprocess(["--model_type", "gpt2", "--output_dir", tmp_path / "run", "--peak_tflops", value])
    assert result.returncode == 2 and not (tmp_path / "run").exists()
    [line] = result.stderr.strip().splitlines()
    assert line.endswith(f"error: --peak_tflops: must be a positive number of TFLOP/s, got {float(value)}")


# ---- buffered logs (item 6) and failure lines (item 4) ------------------------------------------------
def test_logs_reach_the_file_at_flush_or_on_an_error(tmp_path):
    log = JsonLines(tmp_path / "m.jsonl")
    log.write({"step": 1})
    log.write({"step": 2})
    assert (tmp_path / "m.jsonl").read_text() == ""  # buffered: no write per record
    log.flush()
    assert read_jsonl(tmp_path / "m.jsonl") == [{"step": 1}, {"step": 2}]
    log.write({"step": 3})
    flush_open_logs()  # what the failure guard does before it ends the process
    assert read_jsonl(tmp_path / "m.jsonl")[-1] == {"step": 3}
    log.write({"step": 4})
    del log  # a run that ended with an error no longer holds its logs ...
    close_open_logs()  # ... but cli() still writes their last lines
    assert read_jsonl(tmp_path / "m.jsonl")[-1] == {"step": 4}


def test_failure_line_names_rank_step_and_for_an_oom_the_memory(monkeypatch):
    assert failure_line(3, 7, ValueError("boom\nsecond line")) == "rank 3 failed at step 7: ValueError: boom"
    assert failure_line(0, None, KeyError("k")) == "rank 0 failed before training: KeyError: 'k'"
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: 70.5 * gib)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d: 78.25 * gib)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: type("P", (), {"total_memory": 79.5 * gib}))
    line = failure_line(5, 120, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert line == ("rank 5 failed at step 120: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB "
                    "(GPU 1: 70.50 GiB allocated, 78.25 GiB reserved, 79.50 GiB total)")


def test_a_lost_console_does_not_end_the_run():
    """A dead `tee` (the read end of the rank's output pipe gone): writing raises BrokenPipeError, which would
    end the run before it could checkpoint. Through the stream cli() installs, output goes nowhere instead."""
    import os

    from apollo.console import SurvivingStream

    read_end, write_end = os.pipe()
    os.close(read_end)
    raw = os.fdopen(write_end, "w")
    with pytest.raises(BrokenPipeError):  # what a plain stream does
        raw.write("step 10 ...\n")
        raw.flush()
    stream = SurvivingStream(raw)
    stream.write("Stop requested: saved a checkpoint\n")
    stream.flush()
    print("and later lines", file=stream, flush=True)
    stream.close()
