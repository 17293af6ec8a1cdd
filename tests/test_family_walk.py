"""The family walk (benchmarks/family_walk.py): every causal-LM family of the installed transformers sorted
into trained / refused / not tried, recomputed here and compared with the committed results file.

Recomputed: run_pretrain's verdict on each family's default config (the refusal line it prints), and for
every family it accepts the checks on a tiny model built by rule: shared pass = unrolled stock model,
growth keeps the full-depth function, the FLOPs count = FlopCounterMode (eager and SDPA, depths 1 and 3,
training), a saved model that loads plainly. A transformers upgrade that adds, drops or breaks a family
fails `test_every_family_is_sorted_as_recorded` with the family's name. The runs through run_pretrain.py
that the script makes for every trained family are made here for Granite, Qwen3 and Qwen3-MoE, each given
as a --config_name folder.
"""
from __future__ import annotations

import contextlib
import copy
import json
import sys

import pytest
import torch

from conftest import REPO, read_jsonl

sys.path.insert(0, str(REPO / "benchmarks"))
import family_walk  # noqa: E402

RECORDED = json.loads(family_walk.RESULTS.read_text())


@pytest.fixture(scope="module")
def walked():
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return family_walk.walk(family_walk.families(), say=lambda line: None)
    finally:
        transformers.logging.set_verbosity(verbosity)


def _essentials(row: dict) -> dict:
    """What must not change silently: the column, the reason, and for trained families the tiny model's
    key/value heads, its counted FLOPs (layer and head) and which checks passed."""
    checks = row.get("checks", {})
    return {"column": row["column"], "reason": row["reason"], "kv_heads": row.get("kv_heads"),
            "flops": {k: checks["flops"][k] for k in ("layer", "head")} if "flops" in checks else None,
            "passed": sorted(name for name, result in checks.items() if result["ok"] and name != "run")}


def test_every_family_is_sorted_as_recorded(walked):
    import transformers

    assert RECORDED["transformers"] == transformers.__version__, "rerun python benchmarks/family_walk.py"
    recorded = RECORDED["families"]
    added, dropped = sorted(set(walked) - set(recorded)), sorted(set(recorded) - set(walked))
    assert not added and not dropped, f"families added: {added}, dropped: {dropped}"
    changed = {kind: (_essentials(recorded[kind]), _essentials(row)) for kind, row in walked.items()
               if _essentials(row) != _essentials(recorded[kind])}
    assert not changed, "families sorted differently from benchmarks/results/family_walk.json:\n" + \
        "\n".join(f"{kind}: recorded {old}\n{' ' * len(kind)}  now      {new}" for kind, (old, new) in changed.items())
    assert not [k for k, row in walked.items() if row["column"] == "failed"]
    trained = [k for k, row in walked.items() if row["column"] == "trained"]
    assert {"gpt2", "bert", "llama", "granite", "qwen3", "mixtral", "qwen3_moe"} <= set(trained)
    # Every trained family passed every check, and the script's runs through run_pretrain.py passed too.
    assert all(recorded[k]["checks"]["run"]["ok"] for k in trained)
    assert all(sorted(walked[k]["checks"]) == ["flops", "growth", "saved", "shared"] for k in trained)


def test_every_refusal_is_the_line_run_pretrain_prints(walked):
    """Refused families: the reason is run_pretrain's own ConfigError text, one line, naming --model_type."""
    refused = {k: row["reason"] for k, row in walked.items() if row["column"] == "refused"}
    assert "gemma2" in refused and len(refused) > 100
    assert all(reason.startswith("--model_type: ") and "\n" not in reason for reason in refused.values())


def test_readme_table_is_the_recorded_walk():
    readme = (REPO / "README.md").read_text()
    start, end = (readme.index(marker) for marker in family_walk.MARKERS)
    assert readme[start + len(family_walk.MARKERS[0]):end].strip() == \
        family_walk.table(RECORDED).strip()


@pytest.mark.parametrize("kind", ["granite", "qwen3", "qwen3_moe"])
def test_config_folder_trains_with_apollo_and_saves_a_plain_model(kind, tiny_corpus, tmp_path):
    """A Granite (Llama-shaped blocks with scalar multipliers), a Qwen3 (head_dim of its own) and a Qwen3-MoE
    (every layer MoE) config folder: Apollo 1 -> 4 blocks through run_pretrain.py, then the saved model
    loads with no missing or unexpected weights and the tokenizer's special ids are the config's."""
    config, _ = family_walk.tiny_config(kind)
    result = family_walk.run_entry_point(config, tmp_path, tiny_corpus)
    assert result["ok"], result
    assert [r["map"] for r in read_jsonl(tmp_path / "out" / "metrics.jsonl") if r.get("event") == "growth"] == \
        [[0] * family_walk.LAYERS]
    steps = [r for r in read_jsonl(tmp_path / "out" / "metrics.jsonl") if "loss" in r]
    assert steps[-1]["step_flops"] == family_walk.training_flops(config, 2, family_walk.SEQ, family_walk.LAYERS)


def test_the_checks_fail_when_planted(monkeypatch):
    """The walk's checks have power: a FLOPs count with K and V at the query width, and a shared pass that
    leaves the key/value cache on, are each caught on a tiny Qwen3 (2 key/value heads for 4, cache on)."""
    from apollo import flops
    from apollo.shared_layers import find_layer_list

    config, _ = family_walk.tiny_config("qwen3")
    assert config.num_key_value_heads < config.num_attention_heads and config.use_cache
    assert family_walk.check_flops(config)["ok"] and family_walk.check_shared(config)["ok"]

    real_fake_model = flops.fake_model

    def kv_at_query_width(config, depth, **kwargs):
        planted = copy.deepcopy(config)
        planted.num_key_value_heads = planted.num_attention_heads
        return real_fake_model(planted, depth, **kwargs)

    monkeypatch.setattr(flops, "fake_model", kv_at_query_width)
    monkeypatch.setattr(flops, "_COUNTS", {})
    assert not family_walk.check_flops(config)["ok"]
    monkeypatch.undo()

    @contextlib.contextmanager
    def cache_left_on(model, plan):
        parent, attr = find_layer_list(model)
        slots = getattr(parent, attr)
        setattr(parent, attr, torch.nn.ModuleList([slots[i] for i in plan]))
        try:
            yield
        finally:
            setattr(parent, attr, slots)

    monkeypatch.setattr(family_walk, "run_along", cache_left_on)
    assert not family_walk.check_shared(config)["ok"]
