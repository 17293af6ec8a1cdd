"""The schedule knobs of the training-length study (issue #9): WSD, growth warmup, growth noise, stage
ends as shares of the run. Each is checked against a value computed outside the loop: the LR of every
step against transformers' own scheduler times a ramp written out here, the noise against its stated
statistics, the end-to-end wiring in checkpoints before and after a growth, and exact resume with
every knob on against an uninterrupted run.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.optimization import get_cosine_schedule_with_warmup, get_wsd_schedule

from apollo.growth import grow_layers
from conftest import read_jsonl, run_inprocess
from test_resume import assert_same_run, killed_after

TOTAL = 12
ARCH = "n_layer=4,n_embd=32,n_head=4,resid_pdrop=0,embd_pdrop=0,attn_pdrop=0"


@pytest.fixture(scope="module")
def args_of(tiny_corpus):
    def args(out, *extra):
        # 16 blocks, 2 per micro-batch, 2 micro-batches per step: 4 steps per epoch, 12 steps. Stages
        # end at shares 0.25 / 0.5 of the run, i.e. after steps 3 and 6 (growth before steps 3 and 6).
        return [*tiny_corpus, "--tokenizer_vocab_size", 2048, "--model_type", "gpt2", "--config_overrides", ARCH,
                "--output_dir", out, "--max_seq_length", 32, "--max_train_samples", 16, "--max_eval_samples", 8,
                "--per_device_train_batch_size", 2, "--gradient_accumulation_steps", 2, "--learning_rate", 1e-3,
                "--apollo_layers", "1,2,4", "--apollo_step_list", "0.25,0.5,1.0", "--max_train_steps", TOTAL,
                "--eval_steps", 4, "--apollo_info_output_file", "sched", *extra]

    return args


def train(args):
    result = run_inprocess(args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def step_records(out: Path) -> list[dict]:
    return [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]


def ramp(step: int, growth_steps: list[int], n: int) -> float:
    """The --growth_warmup_steps multiplier, written out: 1/n, 2/n, ... from each growth's first step."""
    since = [step - g for g in growth_steps if g <= step]
    return 1.0 if not n or not since else min(1.0, (min(since) + 1) / n)


def test_fraction_stage_ends_round_to_steps(args_of, tmp_path):
    out = tmp_path / "run"
    train(args_of(out, "--save_strategy", "no", "--max_train_steps", 10))  # 0.25 * 10 = 2.5 rounds to 2 (even)
    import json

    config = json.loads((out / "run_config.json").read_text())
    assert config["stage_end_steps"] == [2, 5, 10]
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if r.get("event") == "growth"] == [2, 5]


@pytest.mark.parametrize("scheduler, ramp_steps", [("cosine", 0), ("cosine", 4), ("warmup_stable_decay", 3)])
def test_logged_lr_is_the_scheduler_times_the_growth_ramp(args_of, tmp_path, scheduler, ramp_steps):
    out = tmp_path / "run"
    extra = ["--lr_scheduler_type", scheduler, "--warmup_ratio", 0.2, "--save_strategy", "no"]
    if scheduler == "warmup_stable_decay":
        extra += ["--lr_decay_ratio", 0.25, "--lr_decay_type", "linear"]
    if ramp_steps:
        extra += ["--growth_warmup_steps", ramp_steps]
    train(args_of(out, *extra))
    logged = [r["lr"] for r in step_records(out)]
    # The reference: transformers' scheduler on a one-parameter optimizer, stepped once per step.
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    warmup = 3  # ceil(0.2 * 12)
    ref = (get_wsd_schedule(opt, warmup, num_decay_steps=3, num_training_steps=TOTAL, decay_type="linear")
           if scheduler == "warmup_stable_decay" else get_cosine_schedule_with_warmup(opt, warmup, TOTAL))
    expected = []
    for step in range(TOTAL):
        expected.append(ref.get_last_lr()[0] * ramp(step, [3, 6], ramp_steps))
        opt.step()
        ref.step()
    assert logged == pytest.approx(expected, rel=1e-12, abs=0)
    if scheduler == "warmup_stable_decay":  # the shape itself: linear warmup, flat peak, linear decay to 0
        assert logged[:3] == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3])
        assert logged[3] == pytest.approx(1e-3 / 3) and logged[6] == pytest.approx(1e-3 / 3)  # ramp after growth
        assert logged[8] == logged[5] == 1e-3
        assert logged[9:] == pytest.approx([1e-3, 2e-3 / 3, 1e-3 / 3])


def gpt2_blocks(seed: int = 0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=6, n_embd=64, n_head=4)).transformer.h


@pytest.mark.parametrize("gmap", [[0, 0, 1, 1, 2, 2], [0, 1, 2, 0, 1, 2]], ids=["extend", "stack"])
def test_growth_noise_statistics(gmap):
    slots = gpt2_blocks()
    before = [{k: v.clone() for k, v in s.named_parameters()} for s in slots]
    grow_layers(slots, gmap, noise=0.1, noise_seed=7)
    seen = set()
    for j, src in enumerate(gmap):
        first = src not in seen
        seen.add(src)
        for name, p in slots[j].named_parameters():
            source = before[src][name]
            if first:
                assert torch.equal(p, source), f"slot {j} is the first copy of {src}: must stay exact ({name})"
                continue
            noise = (p - source) / source.std()
            if source.numel() >= 4096:  # large tensors: the sample statistics are tight
                assert noise.std().item() == pytest.approx(0.1, rel=0.05), (j, name)
                assert abs(noise.mean().item()) < 0.01, (j, name)
            elif source.std() > 0:
                assert not torch.equal(p, source), (j, name)
    again = gpt2_blocks()
    grow_layers(again, gmap, noise=0.1, noise_seed=7)
    other = gpt2_blocks()
    grow_layers(other, gmap, noise=0.1, noise_seed=8)
    assert all(torch.equal(a, b) for a, b in zip(slots.parameters(), again.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(slots.parameters(), other.parameters()))


def test_growth_noise_and_warmup_reach_the_weights_end_to_end(args_of, tmp_path):
    """Checkpoints just before and just after the first growth (1 -> 2 before step 3): the copy in slot 1
    is noisy, slot 0 is not; a ramp of 10^6 steps makes step 3's own update negligible next to it."""
    def slot(weights, i, name="attn.c_attn.weight"):
        return weights[f"transformer.h.{i}.{name}"]

    deltas = {}
    for noise in (0.0, 0.2):
        out = tmp_path / f"noise{noise}"
        train(args_of(out, "--save_steps", 1, "--growth_warmup_steps", 10**6, "--growth_noise", noise))
        pre = load_file(str(out / "checkpoint-3" / "model.safetensors"))
        post = load_file(str(out / "checkpoint-4" / "model.safetensors"))
        source = slot(pre, 0)
        deltas[noise] = [((slot(post, j) - source) / source.std()).std().item() for j in (0, 1)]
        assert 0 < [r["lr"] for r in step_records(out)][3] <= 1e-3 * 1e-6
    assert max(deltas[0.0]) < 1e-3  # no noise: both slots are the source, moved by one tiny step
    assert deltas[0.2][0] < 1e-3  # the first copy stays exact
    assert deltas[0.2][1] == pytest.approx(0.2, rel=0.1)  # the second carries the noise


KNOBS = ["--lr_scheduler_type", "warmup_stable_decay", "--lr_decay_ratio", 0.25, "--warmup_ratio", 0.1,
         "--growth_warmup_steps", 2, "--growth_noise", 0.05, "--grow_method", "stack"]


@pytest.fixture(scope="module")
def knob_runs(tmp_path_factory, args_of):
    tmp = tmp_path_factory.mktemp("knobs")
    train(args_of(tmp / "reference", *KNOBS, "--save_strategy", "no"))
    train(args_of(tmp / "saved", *KNOBS, "--save_steps", 1))
    return tmp


# k=3: checkpoint at the first stage's end (growth with noise must happen once, after loading);
# k=7: one step into the ramp after the second growth.
@pytest.mark.parametrize("k", [3, 7])
def test_resume_is_exact_with_every_knob_on(knob_runs, args_of, k):
    out = killed_after(knob_runs / "saved", k, knob_runs / f"resumed-{k}")
    train(args_of(out, *KNOBS, "--save_steps", 1, "--resume_from_checkpoint", "latest"))
    assert_same_run(out, knob_runs / "reference")


def test_knobs_change_the_run(knob_runs, args_of, tmp_path):
    """Control for the resume test: the knobs are really on (the same run without them differs)."""
    out = tmp_path / "plain"
    train(args_of(out, "--grow_method", "stack", "--save_strategy", "no"))
    plain, knobs = step_records(out), step_records(knob_runs / "reference")
    assert [r["loss"] for r in plain[:3]] != [r["loss"] for r in knobs[:3]]  # WSD warmup differs from cosine's
    assert plain[3]["lr"] != knobs[3]["lr"]


@pytest.mark.parametrize("extra, flag", [
    (["--growth_noise", 0.1, "SCRATCH"], "growth_noise"),
    (["--growth_warmup_steps", -1], "growth_warmup_steps"),
    (["--apollo_step_list", "0.5,0.25,1.0"], "apollo_step_list"),
    (["--apollo_step_list", "0.25,0.5,1.5"], "apollo_step_list"),
    (["--lr_scheduler_type", "warmup_stable_decay", "--lr_decay_ratio", 0.95, "--warmup_ratio", 0.1], "lr_decay_ratio"),
    (["--lr_decay_ratio", 0], "lr_decay_ratio"),
], ids=["noise_without_apollo", "negative_ramp", "shares_not_increasing", "share_above_one", "wsd_too_long",
        "zero_decay"])
def test_bad_knob_values_are_refused_before_any_work(args_of, tmp_path, extra, flag):
    args = args_of(tmp_path / "out", *[x for x in extra if x != "SCRATCH"])
    if "SCRATCH" in extra:  # drop the Apollo flags: a run from scratch has no growth
        i = args.index("--apollo_layers")
        del args[i:i + 4]
    result = run_inprocess(args)
    assert result.returncode == 2
    assert f"--{flag}" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
