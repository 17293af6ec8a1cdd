"""full-scripts/: the smoke mode through the real launcher, topology resolution, and the guards.

The smoke test runs `APOLLO_SMOKE=1 full-scripts/bert_base_apollo.sh`: the same `accelerate
launch --config_file full-scripts/accelerate_ddp.yaml ... run_pretrain.py <official flags>` as a
full run, with 2 CPU processes (gloo), a 12-layer 16-wide BERT, the embedded corpus and one
optimizer step per epoch, so the official 40-epoch schedule (stages at epochs 2, 4, 10) runs in
40 steps. About a minute on 2 cores. The same run, preempted with loader workers on and resumed, must
end exactly where it ends uninterrupted.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "full-scripts"
sys.path.insert(0, str(ROOT))


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_script(script, env_extra, *args, timeout=600):
    env = {**os.environ, **env_extra}
    return subprocess.run([str(SCRIPTS / script), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The uninterrupted smoke run: (its folder, its token cache, shared with the preempted runs)."""
    tmp = tmp_path_factory.mktemp("smoke")
    proc = run_script("bert_base_apollo.sh", {"APOLLO_SMOKE": "1", "APOLLO_CACHE": str(tmp / "cache"),
                                               "OUTPUT_DIR": str(tmp / "out"), "LOG_DIR": str(tmp / "logs")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp


def test_smoke_mode_runs_two_ranks_through_accelerate_launch(smoke_run):
    out, logs = smoke_run / "out", smoke_run / "logs"

    # The launcher path: accelerate launch with the checked-in config, 2 processes.
    log = (logs / "node-0.log").read_text()
    assert "accelerate launch --config_file" in log and "accelerate_ddp.yaml" in log
    assert "--num_processes 2" in log and "exit status 0" in log
    assert not (logs / "node-0.pid").exists()  # removed when the launcher exits

    # Two ranks ran, with the same depth draws (a pure function of seed and step).
    config = json.loads((out / "run_config.json").read_text())
    assert config["world_size"] == 2 and config["cpu"] is True
    assert config["stage_end_steps"] == [2, 4, 10, 40] and config["stage_layers"] == [1, 3, 6, 12]
    rank0, rank1 = lines(out / "apollo_schedule.rank_0"), lines(out / "apollo_schedule.rank_1")
    assert len(rank0) == len(rank1) == 40
    assert [r["curr_meta_layer"] for r in rank0] == [r["curr_meta_layer"] for r in rank1]
    assert [r["curr_unique_layer"] for r in rank0[:11]] == [1, 1, 3, 3, 6, 6, 6, 6, 6, 6, 12]

    # Metrics of every step, the three growths, a final evaluation; the final model is plain HF.
    metrics = lines(out / "metrics.jsonl")
    assert [r["step"] for r in metrics if "loss" in r] == list(range(1, 41))
    assert [(r["from"], r["to"]) for r in metrics if r.get("event") == "growth"] == [(1, 3), (3, 6), (6, 12)]
    assert any(r.get("step") == 40 and "eval_loss" in r for r in metrics)
    from transformers import AutoModelForMaskedLM
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 12 and model.config.hidden_size == 16


def test_topology_comes_from_the_hostfile(tmp_path):
    hostfile = tmp_path / "hosts.txt"
    hostfile.write_text(f"# three nodes\nnode-a slots=8\n{socket.gethostname()}\nnode-c\n")
    env = {"HOSTFILE": str(hostfile), "GPUS_PER_NODE": "8", "DATASET_DIR": "/data/wiki", "DRY_RUN": "1"}
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
    from run_pretrain import check_accelerator

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

    from apollo.data import BlockCollator

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})  # vocab_file= builds 5 tokens
    assert len(tokenizer) == 100
    g = torch.Generator().manual_seed(0)
    rows = [{"key": (i % 3, i), "input_ids": torch.randint(5, 100, (64,), generator=g),
             "special_tokens_mask": (torch.rand(64, generator=g) < 0.1).long()} for i in range(16)]
    for p in (0.15, 0.5):
        collator = BlockCollator(tokenizer, True, p, seed=7)
        ours, reference = collator(rows), collator.reference(rows)
        assert torch.equal(ours["input_ids"], reference["input_ids"])
        assert torch.equal(ours["labels"], reference["labels"])
        assert (ours["labels"] != -100).any() and (ours["input_ids"] == tokenizer.mask_token_id).any()


def test_preemption_of_every_process_with_loader_workers_checkpoints_and_resumes_exactly(smoke_run, tmp_path):
    """A scheduler's preemption signals every process of the job: the script's shell and tee, the launcher,
    the ranks and their 2 DataLoader workers each. Before, the workers died first and the ranks failed with
    "DataLoader worker ... is killed by signal: Terminated" (no checkpoint); and a dead tee would break
    the ranks' prints. Now the ranks finish the step and checkpoint, the log keeps their last lines, and
    RESUME=1 ends bit for bit where the uninterrupted run ended."""
    from apollo.checkpoint import complete_checkpoints, read_trainer_state
    from conftest import final_weights, metrics_without_wall_clock, preempt

    out, logs = tmp_path / "out", tmp_path / "logs"
    env = {**os.environ, "APOLLO_SMOKE": "1", "APOLLO_CACHE": str(smoke_run / "cache"), "OUTPUT_DIR": str(out),
           "LOG_DIR": str(logs), "LOADER_WORKERS": "2"}
    metrics = out / "metrics.jsonl"  # written at the first logging step (10)
    proc = preempt([str(SCRIPTS / "bert_base_apollo.sh")], env=env,
                   ready=lambda: metrics.exists() and '"loss"' in metrics.read_text())
    console = proc.stdout
    [ckpt] = complete_checkpoints(out)
    stopped = read_trainer_state(ckpt)["step"]
    assert 10 <= stopped < 40
    log = (logs / "node-0.log").read_text()
    assert f"Stop requested: saved a checkpoint at step {stopped}" in log, console[-3000:]
    assert "is killed by signal" not in log and "BrokenPipeError" not in log
    assert "exit status" in log.splitlines()[-1]  # the script's shell outlived the signal to log the end

    resumed = run_script("bert_base_apollo.sh", {"APOLLO_SMOKE": "1", "APOLLO_CACHE": str(smoke_run / "cache"),
                                                 "OUTPUT_DIR": str(out), "LOG_DIR": str(logs), "LOADER_WORKERS": "2",
                                                 "RESUME": "1"})
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"Resumed from {ckpt} at step {stopped}" in resumed.stdout
    got, want = final_weights(out), final_weights(smoke_run / "out")
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)
    for name in ("apollo_schedule.rank_0", "apollo_schedule.rank_1"):
        assert lines(out / name) == lines(smoke_run / "out" / name)
    assert metrics_without_wall_clock(out) == metrics_without_wall_clock(smoke_run / "out")
