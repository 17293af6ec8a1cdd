"""The real entry point, through the example scripts, on a tiny model: outputs, logs, final model."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
TINY = {"gpt": "n_layer=12,n_embd=32,n_head=2",
        "bert": "num_hidden_layers=12,hidden_size=32,num_attention_heads=2,intermediate_size=64"}
# 16 blocks / batch 4 = 4 steps per epoch; 10 epochs = 40 steps; Apollo stages end at steps 4, 8, 20, 40.
SMALL = ["--max_train_samples", "16", "--per_device_train_batch_size", "4", "--max_seq_length", "32",
         "--max_eval_samples", "8", "--eval_steps", "20", "--save_steps", "20", "--logging_steps", "20"]


def run(args, cache, **kw):
    env = {**os.environ, "APOLLO_CACHE": str(cache), "APOLLO_LOG_DIR": str(cache / "logs"), "OMP_NUM_THREADS": "2"}
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def read_metrics(run_dir):
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "loss" in x]
    evals = [x for x in lines if "eval_loss" in x]
    events = [x for x in lines if x.get("event") == "growth"]
    return train, evals, events


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    dirs = {}
    for model in ("gpt", "bert"):
        for mode in ("", "_apollo"):
            name = f"{model}{mode}"
            dirs[name] = cache / name
            run(["bash", f"example-scripts/run_pretrain_{model}{mode}_example.sh", "--output_dir", str(dirs[name]),
                 "--config_overrides", TINY[model], *SMALL], cache)
    return cache, dirs


@pytest.mark.parametrize("name", ["gpt", "gpt_apollo", "bert", "bert_apollo"])
def test_example_outputs(examples, name):
    _, dirs = examples
    out = dirs[name]
    train, evals, events = read_metrics(out)
    assert [x["step"] for x in train] == list(range(1, 41))
    assert [x["step"] for x in evals] == [0, 20, 40]
    keys = {"step", "epoch", "loss", "lr", "tokens", "flops", "step_flops", "unique_layers", "depth", "elapsed_s"}
    assert keys <= set(train[0])
    assert train[-1]["tokens"] == 40 * 4 * 32
    assert all(b["flops"] > a["flops"] for a, b in zip(train, train[1:]))
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]  # it learned something
    config = json.loads((out / "run_config.json").read_text())
    assert config["total_steps"] == 40 and config["steps_per_epoch"] == 4
    # The final model is a plain HF model at full depth that from_pretrained loads and runs.
    auto = AutoModelForCausalLM if name.startswith("gpt") else AutoModelForMaskedLM
    model = auto.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 12 and model.config.vocab_size == len(tok)
    ids = torch.tensor([tok("And God said, let there be light")["input_ids"]])
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
    if "apollo" in name:
        assert [x["unique_layers"] for x in train[::4]] == [1, 3, 6, 6, 6, 12, 12, 12, 12, 12]
        assert [(e["step"], e["from"], e["to"]) for e in events] == [(4, 1, 3), (8, 3, 6), (20, 6, 12)]
        assert min(x["depth"] for x in train[:20]) < 12  # shallow passes before the last stage
        sched = [json.loads(x) for x in (out / "apollo_info.rank_0").read_text().splitlines()]
        assert len(sched) == 40 and [s["curr_global_step"] for s in sched] == list(range(40))
        assert all(len(s["extend_layer_list"]) == s["curr_meta_layer"] for s in sched)
        assert [s["curr_global_step"] for s in sched if s["do_stack"]] == [4, 8, 20]
    else:
        assert all(x["unique_layers"] == 12 and x["depth"] == 12 for x in train)
        assert len({x["step_flops"] for x in train}) == 1  # scratch: the 12-deep figure every step
        assert not events


@pytest.mark.parametrize("model", ["gpt", "bert"])
def test_one_stage_apollo_equals_scratch(examples, model):
    """--apollo_layers 12 (U = L from the start) trains exactly as from scratch with the same seed."""
    cache, dirs = examples
    out = cache / f"{model}_one_stage"
    run(["bash", f"example-scripts/run_pretrain_{model}_example.sh", "--output_dir", str(out),
         "--config_overrides", TINY[model], *SMALL, "--apollo_layers", "12", "--apollo_epoch_list", "10"], cache)
    scratch, scratch_eval, _ = read_metrics(dirs[model])
    one, one_eval, _ = read_metrics(out)
    assert [x["loss"] for x in one] == [x["loss"] for x in scratch]
    assert [x["eval_loss"] for x in one_eval] == [x["eval_loss"] for x in scratch_eval]
    assert [x["flops"] for x in one] == [x["flops"] for x in scratch]
