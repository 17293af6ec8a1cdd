#!/usr/bin/env python
"""Same behaviour before and after a change: short example runs in both trees, compared bit for bit.

    nice -n 10 python benchmarks/same_behaviour.py --before REF [--runs gpt_apollo bert ...]

Checks out REF (a commit, branch or tag) in a temporary `git worktree`, then runs each example of RUNS
through `run_pretrain.py` in that tree and in this one, with the same flags (read from this tree's
example script, plus `--max_train_samples 160`: 100 optimizer steps, the same stage shape) and the same
fresh cache folder, one thread per run, the two trees side by side. Per run it compares:
- the schedule file (`apollo_info.rank_0`), line for line;
- `metrics.jsonl`, record for record, apart from the EXCEPTIONS below;
- `run_config.json` apart from `output_dir`, and the last checkpoint's `trainer_state.json` apart from
  `elapsed_s`;
- the final weights (`model.safetensors`), bit for bit.
Prints one verdict line per run and a final verdict; exits 1 on any difference.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# What may differ between the trees, each named:
WALL_CLOCK = ("elapsed_s", "tokens_per_s", "mfu")  # metrics.jsonl fields that differ between identical runs
# A growth line's `step`: before the change it named the first step of the new stage, now the finished steps
# (after step N, before step N + 1). Compared instead: the step of the training line before it, in both trees.
GROWTH_STEP = "growth line step"
# Fields the REF tree did not write are listed, not compared (a change may add fields, never drop or alter one).
NEW_FIELDS = "fields new since REF"
EXCEPTIONS = (f"wall-clock fields {', '.join(WALL_CLOCK)}", GROWTH_STEP, NEW_FIELDS,
              "run_config.json output_dir", "trainer_state.json elapsed_s")

RUNS = {  # name -> (example script, flags added to its own)
    "gpt_apollo": ("run_pretrain_gpt_apollo_example.sh", []),
    "gpt": ("run_pretrain_gpt_example.sh", []),
    "bert_apollo": ("run_pretrain_bert_apollo_example.sh", []),
    "bert": ("run_pretrain_bert_example.sh", []),
    "llama_apollo": ("run_pretrain_llama_apollo_example.sh", []),
    # Accumulation 2 at the same global batch: 2 micro-batches of 8 per step.
    "gpt_apollo_accum2": ("run_pretrain_gpt_apollo_example.sh",
                          ["--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2"]),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="The commit (branch, tag) to compare this tree against.")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS), help="Which example runs.")
    p.add_argument("--workdir", default=None, help="Keep the runs here (default: a temporary folder, removed).")
    p.add_argument("--max_train_samples", type=int, default=160,
                   help="Training blocks of each run: 160 = 100 optimizer steps of the examples' stage shape; fewer "
                        "for a quicker check (e.g. 32: 20 steps).")
    return p.parse_args(argv)


def example_flags(script: str) -> list[str]:
    """The flags an example script passes to `launch NAME`, as written in this tree."""
    text = (REPO / "example-scripts" / script).read_text().replace("\\\n", " ")
    [line] = [ln for ln in text.splitlines() if ln.startswith("launch ")]
    words = shlex.split(line)
    return [w for w in words[2:] if w != "$@"]


def train(tree: Path, out: Path, flags: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "APOLLO_CACHE": str(cache), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("APOLLO_PROGRESS_BAR", None)
    return subprocess.run([sys.executable, "run_pretrain.py", *flags, "--output_dir", str(out)], cwd=tree, env=env,
                          capture_output=True, text=True)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def comparable_metrics(records: list[dict]) -> list[dict]:
    """metrics.jsonl without wall-clock fields; a growth line's step replaced by the training step before it."""
    out, last_step = [], 0
    for record in records:
        record = {k: v for k, v in record.items() if k not in WALL_CLOCK}
        if record.get("event") == "growth":
            record["step"] = last_step
        elif "loss" in record:
            last_step = record["step"]
        out.append(record)
    return out


def differences(before: Path, after: Path) -> tuple[list[str], set[str]]:
    """(what differs, fields only the after tree wrote) between two run folders."""
    import torch
    from safetensors.torch import load_file

    found, new_fields = [], set()
    old, new = comparable_metrics(read_lines(before / "metrics.jsonl")), comparable_metrics(read_lines(after / "metrics.jsonl"))
    if len(old) != len(new):
        found.append(f"metrics.jsonl: {len(old)} lines before, {len(new)} after")
    for i, (a, b) in enumerate(zip(old, new)):
        new_fields |= set(b) - set(a)
        wrong = {k: (a[k], b.get(k, "<missing>")) for k in a if a[k] != b.get(k, "<missing>")}
        if wrong:
            found.append(f"metrics.jsonl line {i + 1}: {wrong}")
    schedule = [p.name for p in before.glob("apollo_info.rank_*")]
    for name in schedule:
        if not (after / name).exists() or read_lines(before / name) != read_lines(after / name):
            found.append(f"{name} differs")
    if sorted(schedule) != sorted(p.name for p in after.glob("apollo_info.rank_*")):
        found.append("schedule files differ in number")
    configs = [{k: v for k, v in json.loads((d / "run_config.json").read_text()).items() if k != "output_dir"}
               for d in (before, after)]
    wrong = {k: (configs[0].get(k), configs[1].get(k)) for k in configs[0].keys() | configs[1].keys()
             if configs[0].get(k) != configs[1].get(k)}
    if wrong:
        found.append(f"run_config.json: {wrong}")
    ckpts = [sorted(d.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])) for d in (before, after)]
    if [p.name for p in ckpts[0]] != [p.name for p in ckpts[1]]:
        found.append(f"checkpoints {[p.name for p in ckpts[0]]} before, {[p.name for p in ckpts[1]]} after")
    elif ckpts[0]:
        states = [{k: v for k, v in json.loads((c[-1] / "trainer_state.json").read_text()).items() if k != "elapsed_s"}
                  for c in ckpts]
        if states[0] != states[1]:
            found.append(f"{ckpts[1][-1].name}/trainer_state.json: {states[0]} before, {states[1]} after")
    weights = [load_file(str(d / "model.safetensors")) for d in (before, after)]
    if weights[0].keys() != weights[1].keys():
        found.append(f"final weights: tensors {sorted(weights[0].keys() ^ weights[1].keys())} in one tree only")
    unequal = [k for k in weights[0].keys() & weights[1].keys() if not torch.equal(weights[0][k], weights[1][k])]
    if unequal:
        found.append(f"final weights: {len(unequal)} tensors differ, e.g. {sorted(unequal)[:3]}")
    return found, new_fields


def main(argv=None) -> int:
    args = parse_args(argv)
    ref = subprocess.run(["git", "rev-parse", "--verify", f"{args.before}^{{commit}}"], cwd=REPO, capture_output=True,
                         text=True)
    if ref.returncode != 0:
        sys.exit(f"same_behaviour.py: error: --before: no commit {args.before!r}")
    commit = ref.stdout.strip()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="same_behaviour-"))
    before_tree = work / "before-tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(before_tree), commit], cwd=REPO, check=True,
                   capture_output=True)
    print(f"before: {commit[:12]} ({args.before}); after: this tree ({head[:12]}, uncommitted changes included)")
    print(f"exceptions: {'; '.join(EXCEPTIONS)}")
    failed = []
    try:
        for name in args.runs:
            script, extra = RUNS[name]
            flags = [*example_flags(script), "--max_train_samples", str(args.max_train_samples), *extra]
            dirs = {"before": work / "before" / name, "after": work / "after" / name}
            with concurrent.futures.ThreadPoolExecutor(2) as pool:  # side by side, one thread each
                done = {tree: pool.submit(train, root, dirs[tree], flags, work / "cache")
                        for tree, root in (("before", before_tree), ("after", REPO))}
                results = {tree: job.result() for tree, job in done.items()}
            broken = [f"{tree} exited {r.returncode}: {r.stderr.strip().splitlines()[-1:]}" for tree, r in results.items()
                      if r.returncode != 0]
            found, new_fields = (broken, set()) if broken else differences(dirs["before"], dirs["after"])
            extra_note = f" (new fields: {', '.join(sorted(new_fields))})" if new_fields else ""
            print(f"{name:18s} {'DIFFERENT' if found else 'identical'}{extra_note}", flush=True)
            for line in found[:10]:
                print(f"    {line}")
            if found:
                failed.append(name)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before_tree)], cwd=REPO, capture_output=True)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"verdict: {'DIFFERENT: ' + ', '.join(failed) if failed else 'same behaviour'} "
          f"({len(args.runs)} runs, {commit[:12]} vs this tree)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
