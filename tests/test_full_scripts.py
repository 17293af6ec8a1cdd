"""full-scripts/: the smoke mode through the real launcher, the global batch, topology resolution, the guards.

The smoke test runs `APOLLO_SMOKE=1 ACCUM=2 full-scripts/bert_base_apollo.sh`: the same `accelerate
launch --config_file full-scripts/accelerate_ddp.yaml ... run_pretrain.py <official flags>` as a
full run, with 2 CPU processes (gloo), a 12-layer 16-wide BERT, the embedded corpus, 2 micro-batches per
step and one optimizer step per epoch, so the official 40-epoch schedule (stages at epochs 2, 4, 10) runs
in 40 steps. About a minute on 2 cores. Its metrics are also checked against independent counts
(tests/test_logged_figures.py): the run with 2 processes, accumulation and stage ends in epochs. The same
run, preempted with loader workers on and resumed, must end exactly where it ends uninterrupted.
"""
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from test_logged_figures import Flags, assert_figures_are_independent_counts

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "full-scripts"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_script(script, env_extra, *args, timeout=600):
    env = {**os.environ, **env_extra}
    return subprocess.run([str(SCRIPTS / script), *args], env=env, capture_output=True, text=True, timeout=timeout)


# The smoke run: 2 processes x 2 blocks x ACCUM 2 = a global batch of 8 blocks, and 8 training blocks.
SMOKE = Flags(world=2, batch=2, accum=2, seq=32, blocks=8, epochs=40, layers=(1, 3, 6, 12), ends=(2, 4, 10, 40),
              ends_in="epochs", lr=1e-4, warmup_ratio=0.025)
SMOKE_ENV = {"APOLLO_SMOKE": "1", "ACCUM": "2"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The uninterrupted smoke run: (its folder, its token cache, shared with the preempted runs)."""
    tmp = tmp_path_factory.mktemp("smoke")
    proc = run_script("bert_base_apollo.sh", {**SMOKE_ENV, "APOLLO_CACHE": str(tmp / "cache"),
                                               "OUTPUT_DIR": str(tmp / "out"), "LOG_DIR": str(tmp / "logs")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp


@pytest.fixture(scope="module")
def smoke(smoke_run):
    return smoke_run / "out", smoke_run / "logs"


def test_smoke_mode_runs_two_ranks_through_accelerate_launch(smoke):
    out, logs = smoke

    # The launcher path: accelerate launch with the checked-in config, 2 processes, ACCUM honoured.
    log = (logs / "node-0.log").read_text()
    assert "accelerate launch --config_file" in log and "accelerate_ddp.yaml" in log
    assert "--num_processes 2" in log and "exit status 0" in log
    assert "# global batch 8 blocks = 2 processes x 2 per device x 2 accumulation" in log
    assert not (logs / "node-0.pid").exists()  # removed when the launcher exits

    # Two ranks ran, with the same depth draws (a pure function of seed and step).
    config = json.loads((out / "run_config.json").read_text())
    assert config["world_size"] == 2 and config["cpu"] is True and config["gradient_accumulation_steps"] == 2
    assert config["stage_end_steps"] == [2, 4, 10, 40] and config["stage_layers"] == [1, 3, 6, 12]
    rank0, rank1 = lines(out / "apollo_schedule.rank_0"), lines(out / "apollo_schedule.rank_1")
    assert len(rank0) == len(rank1) == 80  # one line per micro-batch
    assert [r["curr_meta_layer"] for r in rank0] == [r["curr_meta_layer"] for r in rank1]
    assert [r["curr_unique_layer"] for r in rank0[:22:2]] == [1, 1, 3, 3, 6, 6, 6, 6, 6, 6, 12]

    # Metrics of every step, the three growths, a final evaluation; the final model is plain HF.
    metrics = lines(out / "metrics.jsonl")
    assert [r["step"] for r in metrics if "loss" in r] == list(range(1, 41))
    assert [(r["from"], r["to"]) for r in metrics if r.get("event") == "growth"] == [(1, 3), (3, 6), (6, 12)]
    assert any(r.get("step") == 40 and "eval_loss" in r for r in metrics)
    from transformers import AutoModelForMaskedLM
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 12 and model.config.hidden_size == 16


def test_smoke_run_logs_the_figures_an_independent_count_gives(smoke):
    """2 processes with accumulation: tokens and FLOPs count both, stage ends follow the epochs."""
    out, _ = smoke
    assert_figures_are_independent_counts(out, SMOKE)


# Accumulation the scripts derive for the paper's global batch (BERT 1,536 blocks of 48 per GPU; GPT-2 and the
# Llama 768 of 12), written out: processes -> accumulation.
PAPER_ACCUMULATION = {"bert_base_apollo.sh": (48, {1: 32, 8: 4, 16: 2, 32: 1}),
                      "gpt2_base_scratch.sh": (12, {1: 64, 8: 8, 16: 4, 32: 2}),
                      "llama_base_apollo.sh": (12, {1: 64, 8: 8, 16: 4, 32: 2})}


def dry_run(script, env, *args):
    """(the printed global-batch line, the run_pretrain.py config, accelerate's --num_processes) of a DRY_RUN."""
    from apollo.config import parse_config

    proc = run_script(script, {"DATASET_DIR": "/data/wiki", "DRY_RUN": "1", "MASTER_ADDR": "node-a", **env}, *args,
                      timeout=60)
    assert proc.returncode == 0, proc.stderr
    note, command = proc.stdout.splitlines()[-2:]
    words = shlex.split(command)
    script_at = words.index(str(ROOT / "run_pretrain.py"))
    processes = int(words[words.index("--num_processes") + 1])
    return note, parse_config(words[script_at + 1:]), processes


@pytest.mark.parametrize("script", list(PAPER_ACCUMULATION))
def test_the_scripts_keep_the_papers_global_batch_on_any_gpu_count(script):
    per_device, accumulation = PAPER_ACCUMULATION[script]
    for (nodes, gpus), processes in zip(((1, 1), (1, 8), (2, 8), (4, 8)), (1, 8, 16, 32)):
        note, cfg, launched = dry_run(script, {"NNODES": str(nodes), "GPUS_PER_NODE": str(gpus)})
        paper = 32 * per_device * accumulation[32]
        assert launched == processes
        assert cfg.per_device_train_batch_size == per_device
        assert cfg.gradient_accumulation_steps == accumulation[processes]
        assert note.startswith(f"global batch {paper} blocks = {processes} process")
        assert f"x {per_device} per device x {accumulation[processes]} accumulation (default {paper})" in note


def test_global_batch_overrides_and_refusals():
    env = {"GPUS_PER_NODE": "8"}
    note, cfg, _ = dry_run("bert_base_apollo.sh", {**env, "GLOBAL_BATCH": "768"})
    assert cfg.gradient_accumulation_steps == 2 and note.startswith("global batch 768 blocks")
    note, cfg, _ = dry_run("bert_base_apollo.sh", {**env, "ACCUM": "3", "GLOBAL_BATCH": "768"})  # ACCUM wins
    assert cfg.gradient_accumulation_steps == 3 and note.startswith("global batch 1152 blocks")
    # The user's flags win over both, and the printed global batch follows them.
    note, cfg, _ = dry_run("gpt2_base_apollo.sh", env, "--per_device_train_batch_size", "6")
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (6, 16)
    assert note.startswith("global batch 768 blocks = 8 processes x 6 per device x 16 accumulation")
    note, cfg, _ = dry_run("gpt2_base_apollo.sh", env, "--gradient_accumulation_steps=5")
    assert cfg.gradient_accumulation_steps == 5 and note.startswith("global batch 480 blocks")
    # The smoke run keeps its own scale (one step per epoch) whatever GLOBAL_BATCH a full run was given.
    note, cfg, _ = dry_run("bert_base_apollo.sh", {"APOLLO_SMOKE": "1", "GLOBAL_BATCH": "1536"})
    assert note.startswith("global batch 4 blocks = 2 processes x 2 per device") and cfg.max_train_samples == 4
    # A global batch the processes cannot make: one line, exit 2, nothing launched.
    for script, gpus, want, near in (("bert_base_apollo.sh", 3, 1536, "1440 or 1584"),
                                     ("gpt2_base_scratch.sh", 5, 768, "720 or 780"),
                                     ("bert_base_scratch.sh", 64, 1536, "3072")):
        bad = run_script(script, {"GPUS_PER_NODE": str(gpus), "DATASET_DIR": "/d", "DRY_RUN": "1"}, timeout=60)
        assert bad.returncode == 2 and bad.stdout == "", (script, bad.stdout)
        [line] = bad.stderr.splitlines()
        assert f"GLOBAL_BATCH={want} is not a multiple of {gpus} processes" in line and near in line, line


def test_topology_comes_from_the_hostfile(tmp_path):
    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text(f"# three nodes\nnode-a slots=8\n{socket.gethostname()}\nnode-c\n")
    # 24 GPUs x 12 blocks do not divide the paper's 768: a global batch they divide.
    env = {"HOSTFILE": str(hostfile), "GPUS_PER_NODE": "8", "DATASET_DIR": "/data/wiki", "DRY_RUN": "1",
           "GLOBAL_BATCH": "576"}
    proc = run_script("gpt2_base_scratch.sh", env, "--save_steps", "500", timeout=60)
    assert proc.returncode == 0, proc.stderr
    saves = [part.split()[0] for part in proc.stdout.split("--save_steps ")[1:]]
    assert saves == ["2000", "500"]  # the site default, then the user's flag, which wins
    assert "node 1 of 3" in proc.stdout and "main node-a:29500" in proc.stdout
    for flag in ("--num_machines 3", "--machine_rank 1", "--main_process_ip node-a", "--num_processes 24",
                 "--mixed_precision bf16", "--dataset_dir /data/wiki", "--tokenizer_name gpt2",
                 "--gradient_accumulation_steps 2", "--per_device_train_batch_size 12", "--max_seq_length 1024"):
        assert flag in proc.stdout, flag

    bad = run_script("gpt2_base_scratch.sh", {**env, "NODE_RANK": "3"}, timeout=60)
    assert bad.returncode == 2 and "NODE_RANK=3 must be in 0..2" in bad.stderr
    lone = run_script("gpt2_base_scratch.sh", {"NNODES": "2", "GPUS_PER_NODE": "8", "DATASET_DIR": "/d",
                                               "DRY_RUN": "1"}, timeout=60)
    assert lone.returncode == 2 and "set MASTER_ADDR" in lone.stderr


def test_apollo_is_refused_under_fsdp_and_whole_model_compilation():
    from accelerate.utils import DistributedType, DynamoBackend

    from apollo.config import ConfigError, parse_config
    from apollo.accelerator import check_accelerator

    def accelerator(distributed_type, backend="NO"):
        return SimpleNamespace(distributed_type=distributed_type, device=torch.device("cpu"),
                               state=SimpleNamespace(dynamo_plugin=SimpleNamespace(backend=DynamoBackend(backend))))

    apollo = parse_config(["--model_type", "bert", "--output_dir", "x", "--apollo_layers", "1,12",
                           "--apollo_epoch_list", "1,2", "--num_train_epochs", "2"])
    scratch = parse_config(["--model_type", "bert", "--output_dir", "x"])
    with pytest.raises(ConfigError, match="not supported under FSDP"):
        check_accelerator(apollo, accelerator(DistributedType.FSDP))
    with pytest.raises(ConfigError, match="dynamo_backend"):
        check_accelerator(apollo, accelerator(DistributedType.MULTI_GPU, "INDUCTOR"))
    check_accelerator(scratch, accelerator(DistributedType.FSDP, "INDUCTOR"))  # scratch may use both
    check_accelerator(apollo, accelerator(DistributedType.MULTI_GPU))


def test_collator_masks_equal_hugging_face_masking(tmp_path):
    from transformers import BertTokenizerFast

    from apollo.batches import BlockCollator
    from data_path import hf_masked  # benchmarks/data_path.py: HF's masking, block by block

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})  # vocab_file= builds 5 tokens
    assert len(tokenizer) == 100
    g = torch.Generator().manual_seed(0)
    rows = [{"key": (i % 3, i), "input_ids": torch.randint(5, 100, (64,), generator=g),
             "special_tokens_mask": (torch.rand(64, generator=g) < 0.1).long()} for i in range(16)]
    for p in (0.15, 0.5):
        collator = BlockCollator(tokenizer, True, p, seed=7)
        ours, reference = collator(rows), hf_masked(collator, rows)
        assert torch.equal(ours["input_ids"], reference["input_ids"])
        assert torch.equal(ours["labels"], reference["labels"])
        assert (ours["labels"] != -100).any() and (ours["input_ids"] == tokenizer.mask_token_id).any()


def test_preemption_of_every_process_with_loader_workers_checkpoints_and_resumes_exactly(smoke_run, tmp_path):
    """A scheduler's preemption signals every process of the job: the script's shell and tee, the launcher,
    the ranks and their 2 DataLoader workers each. Before, the workers died first and the ranks failed with
    "DataLoader worker ... is killed by signal: Terminated" (no checkpoint); and a dead tee would break
    the ranks' prints. Now the ranks finish the step and checkpoint, the log keeps their last lines, and
    RESUME=1 ends bit for bit where the uninterrupted run ended."""
    from apollo.checkpoint import TrainerState, complete_checkpoints
    from conftest import final_weights, metrics_without_wall_clock, preempt

    out, logs = tmp_path / "out", tmp_path / "logs"
    env = {**os.environ, **SMOKE_ENV, "APOLLO_CACHE": str(smoke_run / "cache"), "OUTPUT_DIR": str(out),
           "LOG_DIR": str(logs), "LOADER_WORKERS": "2"}
    metrics = out / "metrics.jsonl"  # written at the first logging step (10)
    proc = preempt([str(SCRIPTS / "bert_base_apollo.sh")], env=env,
                   ready=lambda: metrics.exists() and '"loss"' in metrics.read_text())
    console = proc.stdout
    [ckpt] = complete_checkpoints(out)
    stopped = TrainerState.read(ckpt).step
    assert 10 <= stopped < 40
    log = (logs / "node-0.log").read_text()
    assert f"Stop requested: saved a checkpoint at step {stopped}" in log, console[-3000:]
    assert "is killed by signal" not in log and "BrokenPipeError" not in log
    assert "exit status" in log.splitlines()[-1]  # the script's shell outlived the signal to log the end

    resumed = run_script("bert_base_apollo.sh", {**SMOKE_ENV, "APOLLO_CACHE": str(smoke_run / "cache"),
                                                 "OUTPUT_DIR": str(out), "LOG_DIR": str(logs), "LOADER_WORKERS": "2",
                                                 "RESUME": "1"})
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"Resumed from {ckpt} at step {stopped}" in resumed.stdout
    got, want = final_weights(out), final_weights(smoke_run / "out")
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)
    for name in ("apollo_schedule.rank_0", "apollo_schedule.rank_1"):
        assert lines(out / name) == lines(smoke_run / "out" / name)
    assert metrics_without_wall_clock(out) == metrics_without_wall_clock(smoke_run / "out")
