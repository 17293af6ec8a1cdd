#!/usr/bin/env python
"""The short GPU check: every check runs, any failing check fails the script, one JSON summary.

    full-scripts/gpu_check.sh [RESULTS_DIR]       # 1+ NVIDIA GPUs; 6-7 minutes on one H200 (an estimate)

Each check is one process (run_pretrain.py unless said otherwise; `accelerate launch` with 2 processes) with its log in
RESULTS_DIR/<check>.log (default RESULTS_DIR: logs/gpu_check) and a time limit (CHECK_TIMEOUT_S overrides):
  env         torch sees the GPUs nvidia-smi lists, and supports bf16; versions
  bf16        Apollo (layers 1,3,6,12 ending at steps 4,8,20,40; evaluation; checkpoints) on a small BERT
  fp16        the same in fp16 (Accelerate's gradient scaler)
  compile     the same in bf16 with --torch_compile (each block compiled); fails on more than MAX_RECOMPILES
              (default 2) recompilations (TORCH_LOGS=recompiles); reports the shapes dynamo made dynamic
              (TORCH_LOGS=dynamic); evaluation uses a smaller batch than training, as the full scripts do
  bert_base   BERT-Base (the library's default config: 12 x 768, vocabulary 30522), 48 x 512, bf16, 30 steps
  gpt2_base   GPT2-Base (default config, vocabulary 50257), 12 x 1024, bf16, 30 steps
  data_path   benchmarks/data_path.py: the data path's share of bert_base's measured step, in the training
              process and with 0, 2, 4 loader workers
  ddp2        2+ GPUs: the bf16 Apollo run with 2 processes (fails unless 2 processes trained)
  fsdp_probe  2+ GPUs: fsdp_shared_blocks_probe.py (torchrun, NCCL)
  fsdp2       2+ GPUs: a scratch run with accelerate_fsdp.yaml
The training data is the embedded corpus with a locally trained tokenizer (nothing from the Hub); the
base-shape runs keep the real vocabulary size in the model (--config_overrides vocab_size=...).

RESULTS_DIR/summary.json: per check "ok", "failed" (with the failure line) or "skipped" (with the reason),
and for training checks the step time, tokens/s, MFU and peak GPU memory over the steps after the first
third (elapsed_s in metrics.jsonl excludes evaluation and checkpoints). MFU = logged FLOPs / time / (bf16
dense peak x GPUs); the peak comes from PEAK_TFLOPS or the GPU's name (A100, H100, H200). Peak memory: the
most `nvidia-smi` reported on any GPU while the check ran, sampled every 0.5 s. Exit status: 0 if every check
that ran is ok, 1 if any failed, 2 if nvidia-smi lists no GPU. CHECKS=bf16,compile runs only those.

GPU_CHECK_ON_CPU=1 runs the same checks on the CPU at tiny shapes; it is the test of this script
(tests/test_gpu_check.py, with a stand-in nvidia-smi) and proves nothing about a GPU. There fp16 and fsdp2
are skipped with the reason, 2 processes use gloo, compile traces with dynamo and AOTAutograd but runs the
aot_eager backend (inductor's code generation is slow on a CPU and is for the GPU run to confirm), the
data come from a slice of the embedded corpus, and MFU is computed only with an explicit PEAK_TFLOPS.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from apollo.throughput import device_peak_tflops, mfu  # noqa: E402  (one peak table for the loop and the check)

ON_CPU = os.environ.get("GPU_CHECK_ON_CPU") == "1"
MAX_RECOMPILES = int(os.environ.get("MAX_RECOMPILES", "2"))  # training, evaluation, and one spare


@dataclass
class Check:
    name: str
    command: list[str]
    timeout_s: int
    gpus: int = 1  # checks that need more GPUs than the machine has are skipped
    skip_on_cpu: str | None = None  # why the check cannot run on a CPU
    run_dir: Path | None = None  # a run_pretrain output folder: figures from its metrics.jsonl
    env: dict = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, precision: str, *flags, fsdp_unit: str | None = None) -> list[str]:
    """run_pretrain.py in one process, or through `accelerate launch` with several (FSDP with fsdp_unit)."""
    train = [str(REPO / "run_pretrain.py"), *map(str, flags), "--mixed_precision", precision,
             *(["--cpu"] if ON_CPU else [])]
    if processes == 1:
        return [sys.executable, *train]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--num_processes",
           str(processes), "--main_process_port", str(free_port()), "--mixed_precision", precision,
           "--dynamo_backend", "no"]
    if fsdp_unit:
        cmd += ["--config_file", str(REPO / "full-scripts" / "accelerate_fsdp.yaml"),
                "--fsdp_transformer_layer_cls_to_wrap", fsdp_unit]
    else:
        cmd += ["--multi_gpu"]  # also on the CPU: `--cpu` with 2 processes silently runs one
    return cmd + train


def checks(results: Path) -> list[Check]:
    data = cpu_corpus(results) if ON_CPU else []

    def out(name):
        return ["--output_dir", results / name, "--overwrite_output_dir", *data]

    if ON_CPU:
        small = ["--config_overrides", "num_hidden_layers=12,hidden_size=16,num_attention_heads=2,intermediate_size=32",
                 "--max_seq_length", 32, "--per_device_train_batch_size", 4, "--max_train_steps", 8,
                 "--apollo_step_list", "1,2,4,8", "--max_eval_samples", 8, "--per_device_eval_batch_size", 2,
                 "--eval_steps", 4, "--save_steps", 4]
        bert = ["--config_overrides", "vocab_size=30522,num_hidden_layers=2,hidden_size=32,num_attention_heads=2,"
                "intermediate_size=64", "--max_seq_length", 64, "--per_device_train_batch_size", 4]
        gpt2 = ["--config_overrides", "vocab_size=50257,n_layer=2,n_embd=32,n_head=2", "--max_seq_length", 64,
                "--per_device_train_batch_size", 4]
        base_steps, scratch_shape = 6, "num_hidden_layers=2,hidden_size=32,num_attention_heads=2,intermediate_size=64"
    else:
        small = ["--config_overrides",
                 "num_hidden_layers=12,hidden_size=256,num_attention_heads=4,intermediate_size=1024",
                 "--max_seq_length", 128, "--per_device_train_batch_size", 16, "--max_train_steps", 40,
                 "--apollo_step_list", "4,8,20,40", "--max_eval_samples", 64, "--per_device_eval_batch_size", 8,
                 "--eval_steps", 20, "--save_steps", 20]
        bert = ["--config_overrides", "vocab_size=30522", "--max_seq_length", 512, "--per_device_train_batch_size", 48]
        gpt2 = ["--config_overrides", "vocab_size=50257", "--max_seq_length", 1024, "--per_device_train_batch_size", 12]
        base_steps = 30
        scratch_shape = "num_hidden_layers=4,hidden_size=256,num_attention_heads=4,intermediate_size=1024"
    apollo = ["--model_type", "bert", *small, "--apollo_layers", "1,3,6,12", "--warmup_ratio", 0.025,
              "--apollo_info_output_file", "schedule"]
    base = ["--max_train_steps", base_steps, "--max_eval_samples", 48, "--eval_steps", 1000, "--save_strategy", "no"]
    compile_env = {"TORCH_LOGS": "recompiles,dynamic"}
    if ON_CPU:
        compile_env["TORCH_COMPILE_OVERRIDE_BACKENDS"] = ">=0:aot_eager"
    return [
        Check("env", [sys.executable, "-c", ENV_PROBE, "cpu" if ON_CPU else "gpu"], 120),
        Check("bf16", launch(1, "bf16", *apollo, *out("bf16")), 600, run_dir=results / "bf16"),
        Check("fp16", launch(1, "fp16", *apollo, *out("fp16")), 600, run_dir=results / "fp16",
              skip_on_cpu="fp16 needs a CUDA GPU (run_pretrain.py refuses it on the CPU)"),
        Check("compile", launch(1, "bf16", *apollo, "--torch_compile", *out("compile")), 900,
              run_dir=results / "compile", env=compile_env),
        Check("bert_base", launch(1, "bf16", "--model_type", "bert", *bert, *base, *out("bert_base")), 900,
              run_dir=results / "bert_base"),
        Check("gpt2_base", launch(1, "bf16", "--model_type", "gpt2", *gpt2, *base, *out("gpt2_base")), 900,
              run_dir=results / "gpt2_base"),
        Check("data_path", [], 600),  # its command needs bert_base's step time: see data_path_command
        Check("ddp2", launch(2, "bf16", *apollo, *out("ddp2")), 600, gpus=2, run_dir=results / "ddp2"),
        Check("fsdp_probe", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(REPO / "full-scripts" / "fsdp_shared_blocks_probe.py")], 300, gpus=2),
        Check("fsdp2", launch(2, "bf16", "--model_type", "bert", "--config_overrides", scratch_shape,
                              "--max_seq_length", 128, "--per_device_train_batch_size", 16, "--max_train_steps", 20,
                              "--max_eval_samples", 66, "--eval_steps", 10, "--save_steps", 10, *out("fsdp2"),
                              fsdp_unit="BertLayer"), 600, gpus=2, run_dir=results / "fsdp2",
              skip_on_cpu="Accelerate applies FSDP only on GPUs: on a CPU this run would train with DDP"),
    ]


ENV_PROBE = """
import sys, torch, accelerate, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, "accelerate", accelerate.__version__,
      "transformers", transformers.__version__)
if sys.argv[1] == "cpu":
    print("device: cpu (GPU_CHECK_ON_CPU=1)")
    sys.exit(0)
if not torch.cuda.is_available():
    sys.exit("error: torch sees no CUDA device although nvidia-smi lists GPUs")
for i in range(torch.cuda.device_count()):
    print("device", i, torch.cuda.get_device_name(i), "capability", torch.cuda.get_device_capability(i))
if not torch.cuda.is_bf16_supported():
    sys.exit("error: this GPU does not support bf16, which the full-scale scripts use")
"""


def cpu_corpus(results: Path) -> list[str]:
    """On the CPU, a slice of the embedded corpus: the tokenizers and token caches take a second, not a minute."""
    flags = []
    for split, lines in (("train", 400), ("validation", 40)):
        text = (REPO / "data" / "embedded" / f"{split}.txt").read_text().splitlines(keepends=True)[:lines]
        path = results / "data" / f"{split}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(text))
        flags += [f"--{split}_file", str(path)]
    return flags


def data_path_command(step_ms: float, results: Path) -> list[str]:
    cmd = [sys.executable, str(REPO / "benchmarks" / "data_path.py"), "--skip_train", "--model_types", "bert",
           "--gpu_step_ms", f"{step_ms:.1f}", "--sim_step_ms", f"{step_ms:.1f}"]
    return cmd + (["--full_batches", "2", "--sim_steps", "2", *cpu_corpus(results)[:2]] if ON_CPU else [])


def gpus_listed() -> list[str]:
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line for line in listing.splitlines() if line.startswith("GPU")]


class MemoryPeak:
    """The most memory (MiB) nvidia-smi reports on any one GPU while the check runs, sampled every 0.5 s."""

    def __init__(self):
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            try:
                used = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                      capture_output=True, text=True, timeout=10).stdout.split()
                values = [int(v) for v in used if v.isdigit()]
                if values:
                    self.peak = max(self.peak or 0, *values)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(0.5)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run(check: Check, results: Path) -> dict:
    """Run one check; {"status": "ok"} or {"status": "failed", "detail": the failure line}."""
    log = results / f"{check.name}.log"
    limit = int(os.environ.get("CHECK_TIMEOUT_S") or check.timeout_s)
    env = {**os.environ, **check.env}
    started = time.monotonic()
    with open(log, "w") as sink, MemoryPeak() as memory:
        sink.write(" ".join(check.command) + "\n")
        sink.flush()
        # Its own process group: on a timeout the launcher and every rank it started are killed together.
        proc = subprocess.Popen(check.command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    result = {"seconds": round(time.monotonic() - started, 1), "log": str(log), "peak_memory_mib": memory.peak}
    if code is None:
        return {**result, "status": "failed", "detail": f"timed out after {limit} s"}
    if code != 0:
        return {**result, "status": "failed", "detail": f"exit {code}: {failure_line(log)}"}
    return {**result, "status": "ok"}


def failure_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"Error|error:|^FAIL", line)]
    return (errors or lines or ["(no output)"])[-1][:500]


def figures(run_dir: Path, peak_tflops: float | None) -> dict:
    """Step time, tokens/s and MFU over the steps after the first third, from the run's own metrics."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in lines if "loss" in r and "event" not in r]
    world = json.loads((run_dir / "run_config.json").read_text())["world_size"]
    first = max(len(train) // 3, 1) - 1  # the window starts after this step
    a, b = train[first], train[-1]
    seconds = b["elapsed_s"] - a["elapsed_s"]
    out = {"steps_timed": len(train) - 1 - first, "processes": world,
           "step_s": round(seconds / (len(train) - 1 - first), 4),
           "tokens_per_s": round((b["tokens"] - a["tokens"]) / seconds, 1)}
    achieved = mfu(b["flops"] - a["flops"], seconds, world, peak_tflops)  # None without a known peak
    out["mfu"] = None if achieved is None else round(achieved, 4)
    return out


def data_path_shares(log: Path) -> dict:
    """The data path's share of the step (%), in-process and per loader-worker count, from data_path.py's lines."""
    text = log.read_text()
    waits = re.findall(r"(\d+) workers: wait +[\d.]+ ms wall \( *([\d.]+)%\)", text)
    shares = {f"wait_pct_{n}_workers": float(p) for n, p in waits}
    found = re.search(r"against your GPU step of [\d.]+ ms: ([\d.]+)% in-process", text)
    return {"in_process_pct": float(found.group(1)) if found else None, **shares}


def peak_tflops(names: list[str]) -> float | None:
    if os.environ.get("PEAK_TFLOPS"):
        return float(os.environ["PEAK_TFLOPS"])
    if ON_CPU:  # no table entry for a CPU: MFU only with an explicit PEAK_TFLOPS
        return None
    return device_peak_tflops(names[0] if names else None)


def skip_reason(check: Check, done: dict, gpus: int) -> str | None:
    if not ON_CPU and done.get("env", {}).get("status") == "failed":
        return "the env check failed: a run here would not use the GPU"
    if ON_CPU and check.skip_on_cpu:
        return check.skip_on_cpu
    if check.gpus > gpus:
        return f"needs {check.gpus} GPUs, nvidia-smi lists {gpus}"
    if check.name == "data_path" and done.get("bert_base", {}).get("status") != "ok":
        return "needs bert_base's step time"
    return None


def outcome(check: Check, done: dict, gpus: int, results: Path, peak: float | None) -> dict:
    """Run the check (or say why not) and add its figures; a figure out of bounds fails it."""
    why_not = skip_reason(check, done, gpus)
    if why_not:
        return {"status": "skipped", "detail": why_not}
    if check.name == "data_path":
        check.command = data_path_command(1000 * done["bert_base"]["step_s"], results)
    result = run(check, results)
    if result["status"] != "ok":
        return result
    if check.run_dir is not None:
        result.update(figures(check.run_dir, peak))
        if check.gpus > result["processes"]:
            result.update(status="failed", detail=f"{result['processes']} process(es) trained, not {check.gpus}")
    if check.name == "data_path":
        result.update(data_path_shares(Path(result["log"])))
    if check.name == "compile":
        text = Path(result["log"]).read_text()
        result["recompiles"] = text.count("Recompiling function")
        result["dynamic_symbols"] = text.count("create_symbol")  # shapes compiled as dynamic (reported only)
        if result["recompiles"] > MAX_RECOMPILES:
            result.update(status="failed", detail=f"{result['recompiles']} recompilations, more than {MAX_RECOMPILES}")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", nargs="?", default=REPO / "logs" / "gpu_check", type=Path,
                        help="Where the logs, runs and summary.json go (default: logs/gpu_check).")
    results = parser.parse_args(argv).results_dir.resolve()
    listed = gpus_listed()
    if not listed:
        print("gpu_check: error: nvidia-smi -L lists no GPU (GPU_CHECK_ON_CPU=1 tests this script on a CPU)",
              file=sys.stderr)
        return 2
    results.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("APOLLO_CACHE", str(results / "cache"))  # its own cache unless told otherwise
    if ON_CPU:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    peak = peak_tflops(listed)
    wanted = set(filter(None, os.environ.get("CHECKS", "").split(",")))
    summary = {"mode": "cpu (GPU_CHECK_ON_CPU=1: a test of this script, not of a GPU)" if ON_CPU else "gpu",
               "nvidia_smi": listed, "peak_bf16_tflops_per_gpu": peak, "checks": {}}
    for check in checks(results):
        if not wanted or check.name in wanted:
            summary["checks"][check.name] = report(check.name, outcome(check, summary["checks"], len(listed), results,
                                                                       peak))
    failed = [name for name, r in summary["checks"].items() if r["status"] == "failed"]
    summary["exit_status"] = 1 if failed else 0
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"gpu_check: {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
          f"summary {results / 'summary.json'}")
    return summary["exit_status"]


def report(name: str, result: dict) -> dict:
    shown = {k: v for k, v in result.items() if k not in ("status", "detail", "log", "seconds")}
    word = {"ok": "PASS", "failed": "FAIL", "skipped": "SKIP"}[result["status"]]
    print(f"{word} {name}" + (f": {result['detail']}" if "detail" in result else "")
          + (f" {json.dumps(shown)}" if shown else ""), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
