"""The training loop and data path against values computed outside the loop (issue #11).

Other tests compare one run of the loop with another run of the same loop (resume vs uninterrupted,
2 processes vs 1, eval vs no eval); those miss deterministic logic errors. Here every expectation is
computed independently of run_pretrain.py:
- the schedule file against the pure depth draw `sample_depth(dist, U, L, seed, step, micro)` and the
  plan formula floor(k*U/D), with U taken from the stage list given on the command line;
- each epoch's batch order (MicroBatchSampler) against the definition of a permutation, and the MLM
  masks (BlockCollator) against properties that do not share its seed derivation;
- accumulation k x batch b against one step of batch k*b (gradient scaling);
- every logged evaluation against a stand-alone evaluation of that step's checkpoint, by an explicitly
  unrolled stock model at full depth along the finished stage's plan, with the fixed evaluation masks;
- dropout active after an evaluation (a twin run with dropout off must differ from the first step on);
- --copy_optimizer_state_on_growth end to end: Adam moments in the checkpoints around a growth.

Six tiny runs (2-4 layers of width 32, 32 tokens, vocabulary 2048) in this process, ~30 s in all.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, BertForMaskedLM, BertTokenizerFast

from apollo.config import parse_config
from apollo.batches import EVAL_MASK_SEED, BlockCollator, MicroBatchSampler, eval_batches
from apollo.corpus import load_text_splits, token_blocks
from apollo.sampling import sample_depth
from apollo.tokenizer import load_tokenizer
from conftest import final_weights, read_jsonl, run_inprocess

SEED = 3  # != EVAL_MASK_SEED; its lvps draws put micro-batches of one step at different depths, below L
assert SEED != EVAL_MASK_SEED

# ------------------------------------------------------------------------------------------------
# BERT Apollo: 4 layers, stages of 1, 2, 4 unique layers ending after steps 2, 4, 6; batch 2 x 2
# micro-batches over 12 blocks = 3 steps per epoch (an epoch boundary mid-stage). A checkpoint after
# every step, an evaluation every 2 steps: the evaluations at steps 2 and 4 come just before a growth.
# ------------------------------------------------------------------------------------------------
L, ACCUM, STAGE_LAYERS, STAGE_ENDS, TOTAL = 4, 2, (1, 2, 4), (2, 4, 6), 6
BERT = "num_hidden_layers=4,hidden_size=32,num_attention_heads=2,intermediate_size=64,initializer_range=0.2"


def unique_at(step: int) -> int:
    """Unique layers of the 0-based optimizer step `step`, straight from the stage list."""
    return next(u for u, end in zip(STAGE_LAYERS, STAGE_ENDS) if step < end)


def extend_plan(unique: int, depth: int) -> list[int]:
    return [k * unique // depth for k in range(depth)]  # the method's interpolation formula


def bert_args(tiny_corpus, out, *extra):
    return [*tiny_corpus, "--tokenizer_vocab_size", 2048, "--model_type", "bert", "--config_overrides", BERT,
            "--output_dir", out, "--max_seq_length", 32, "--max_train_samples", 12,
            "--per_device_train_batch_size", 2, "--gradient_accumulation_steps", ACCUM, "--num_train_epochs", 2,
            "--apollo_layers", ",".join(map(str, STAGE_LAYERS)), "--apollo_step_list", ",".join(map(str, STAGE_ENDS)),
            "--dist_function", "lvps", "--grow_method", "extend", "--learning_rate", 1e-2, "--seed", SEED,
            "--eval_steps", 2, "--per_device_eval_batch_size", 16, "--apollo_info_output_file", "sched",
            "--logging_steps", 100, *extra]


@pytest.fixture(scope="module")
def bert_copy(tmp_path_factory, tiny_corpus):
    """The BERT Apollo run with --copy_optimizer_state_on_growth and a checkpoint after every step."""
    out = tmp_path_factory.mktemp("bert_copy") / "run"
    args = bert_args(tiny_corpus, out, "--save_steps", 1, "--copy_optimizer_state_on_growth")
    result = run_inprocess(args)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, args


@pytest.fixture(scope="module")
def bert_positional(tmp_path_factory, tiny_corpus):
    """The same run without the flag (official positional optimizer state)."""
    out = tmp_path_factory.mktemp("bert_positional") / "run"
    result = run_inprocess(bert_args(tiny_corpus, out, "--save_strategy", "no"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def metrics(out):
    lines = read_jsonl(Path(out) / "metrics.jsonl")
    return ([r for r in lines if "loss" in r and "event" not in r], [r for r in lines if "eval_loss" in r])


# --- the schedule file against the pure depth draws ------------------------------------------------
def test_schedule_file_depths_are_the_pure_draws_of_each_micro_batch(bert_copy):
    out, _ = bert_copy
    records = read_jsonl(out / "sched.rank_0")
    assert len(records) == TOTAL * ACCUM
    by_step = {}
    for n, rec in enumerate(records):
        step, micro = divmod(n, ACCUM)
        unique = unique_at(step)
        depth = sample_depth("lvps", unique, L, SEED, step, micro)
        assert (rec["curr_global_step_with_accu"], rec["curr_global_step"]) == (n, step)
        assert (rec["curr_unique_layer"], rec["curr_meta_layer"]) == (unique, depth), (step, micro, rec)
        assert rec["extend_layer_list"] == extend_plan(unique, depth)
        grows = micro == 0 and step in STAGE_ENDS[:-1]
        assert rec["do_stack"] == grows
        if grows:
            assert rec["stack_info"] == extend_plan(unique_at(step - 1), unique)
        by_step.setdefault(step + 1, []).append(depth)
    train, _ = metrics(out)
    assert {r["step"]: r["depth"] for r in train} == {s: sum(d) / ACCUM for s, d in by_step.items()}
    # The check has power: in some step the micro-batches draw different depths (a loop that drew every
    # micro-batch with micro-step 0 would fail above), and some pass runs deeper than its unique count.
    assert any(len(set(d)) > 1 for d in by_step.values())
    assert any(r["curr_meta_layer"] > r["curr_unique_layer"] for r in records)


# --- every evaluation against a stand-alone evaluation of the checkpoint --------------------------
def unrolled_model(run_dir: Path, checkpoint: Path, plan: list[int]) -> BertForMaskedLM:
    """A stock BERT of len(plan) layers whose layer k is a copy of the checkpoint's slot plan[k]."""
    config = AutoConfig.from_pretrained(run_dir)
    config.num_hidden_layers = len(plan)
    model = BertForMaskedLM._from_config(config, attn_implementation="eager").eval()
    saved = load_file(str(checkpoint / "model.safetensors"))
    prefix = "bert.encoder.layer."
    state = {k: v for k, v in saved.items() if not k.startswith(prefix)}
    for k, slot in enumerate(plan):
        src = f"{prefix}{slot}."
        state.update({f"{prefix}{k}.{name[len(src):]}": v for name, v in saved.items() if name.startswith(src)})
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight  # tied
    return model


def reference_eval_loss(model, batch) -> float:
    """Cross-entropy per masked token, computed from the logits (not the model's own loss)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits.double()
    labels = batch["labels"]
    chosen = labels != -100
    logp = torch.log_softmax(logits[chosen], dim=-1)
    return float(-logp.gather(1, labels[chosen][:, None]).mean())


@pytest.fixture(scope="module")
def eval_set(bert_copy):
    """The validation blocks, masked with the fixed evaluation seed, as one batch."""
    out, args = bert_copy
    cfg = parse_config([str(a) for a in args])
    tokenizer = load_tokenizer(str(out))  # the run's own tokenizer, saved with the final model
    blocks = token_blocks(load_text_splits(cfg), tokenizer, "bert", 32, None, None)["validation"]
    collator = BlockCollator(tokenizer, True, cfg.mlm_probability, EVAL_MASK_SEED)
    [batch] = list(eval_batches(blocks, len(blocks), 0, 1, collator))
    return batch


# The logged evaluation and the reference compute the same float32 forward in different code (the loop's fused
# loss vs log_softmax in float64 here): they agree to ~1e-7 relative, so the comparison allows 1e-6.
EVAL_TOLERANCE = 1e-6


def rejected(alternative: float, expected: float) -> bool:
    """Would an evaluation that computed `alternative` (give or take the same EVAL_TOLERANCE) fail the
    comparison with `expected`? Only then does the comparison have power against that alternative.

    The threshold follows from the comparison, not from the size of the effect: a barely trained model
    (2-4 steps, loss near ln(vocabulary)) hardly depends on its layers, and how much it does depends on the
    vocabulary and data; e.g. 9.4e-4 relative between the U=2 and U=4 plans at step 4, which an arbitrary
    1e-3 called powerless while the comparison rejects it by a factor of ~500."""
    return abs(alternative - expected) > 2 * EVAL_TOLERANCE * abs(expected)


def test_every_evaluation_equals_a_standalone_full_depth_evaluation_of_the_checkpoint(bert_copy, eval_set):
    out, _ = bert_copy
    _, evals = metrics(out)
    assert [e["step"] for e in evals] == [0, 2, 4, 6]
    # Step 0 has no checkpoint; steps 2 and 4 end a stage (growth comes next), step 6 ends the run.
    for e in evals[1:]:
        step = e["step"]
        unique = unique_at(step - 1)  # the stage that just finished, not the one about to start
        model = unrolled_model(out, out / f"checkpoint-{step}", extend_plan(unique, L))
        expected = reference_eval_loss(model, eval_set)
        assert e["eval_loss"] == pytest.approx(expected, rel=EVAL_TOLERANCE), (step, unique)
        # The check has power here: an evaluation along the next stage's plan or at the sampled depths of
        # the step before (masks drawn with --seed: the next test) would have failed the assertion above.
        others = {f"U={unique_at(step)}": extend_plan(unique_at(step), L)} if step < TOTAL else {}
        others.update({f"D={d}": extend_plan(unique, d) for d in
                       {sample_depth("lvps", unique, L, SEED, step - 1, m) for m in range(ACCUM)} - {L}})
        for name, plan in others.items():
            wrong = reference_eval_loss(unrolled_model(out, out / f"checkpoint-{step}", plan), eval_set)
            assert rejected(wrong, expected), (step, name, wrong, expected)
    assert any(sample_depth("lvps", unique_at(s - 1), L, SEED, s - 1, m) < L for s in (2, 4) for m in range(ACCUM))


def test_evaluation_masks_are_the_fixed_ones_not_the_seed_s(bert_copy, eval_set):
    """A control for the test above: masks drawn with --seed give a visibly different evaluation."""
    out, args = bert_copy
    cfg = parse_config([str(a) for a in args])
    tokenizer = load_tokenizer(str(out))
    blocks = token_blocks(load_text_splits(cfg), tokenizer, "bert", 32, None, None)["validation"]
    [seeded] = list(eval_batches(blocks, len(blocks), 0, 1, BlockCollator(tokenizer, True, 0.15, SEED)))
    assert not torch.equal(seeded["labels"], eval_set["labels"])
    model = unrolled_model(out, out / f"checkpoint-{TOTAL}", list(range(L)))
    _, evals = metrics(out)
    assert rejected(reference_eval_loss(model, seeded), evals[-1]["eval_loss"])


# --- --copy_optimizer_state_on_growth, end to end ---------------------------------------------------
def optimizer_state_by_name(checkpoint: Path, run_dir: Path, args) -> dict:
    """{parameter name: Adam state} from a checkpoint's optimizer.bin."""
    from apollo.optim import build_optimizer

    config = AutoConfig.from_pretrained(run_dir)
    model = BertForMaskedLM(config)
    # Only used to learn the order of the parameters in the optimizer's groups.
    optimizer = build_optimizer(parse_config([str(a) for a in args]), model)
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    saved = torch.load(checkpoint / "optimizer.bin", weights_only=False)
    assert [i for g in saved["param_groups"] for i in g["params"]] == list(range(len(order)))
    return {order[i]: state for i, state in saved["state"].items()}


def test_copy_optimizer_state_on_growth_carries_the_moments_end_to_end(bert_copy, bert_positional):
    out, args = bert_copy
    beta1, beta2 = 0.9, 0.999  # the defaults the run used
    for end in STAGE_ENDS[:-1]:  # growth just before step index `end`; checkpoint-`end` is before it
        before = optimizer_state_by_name(out / f"checkpoint-{end}", out, args)
        after = optimizer_state_by_name(out / f"checkpoint-{end + 1}", out, args)  # growth + one step
        gmap = extend_plan(unique_at(end - 1), unique_at(end))
        prefix = "bert.encoder.layer."
        for j, src in enumerate(gmap):
            params = [n[len(f"{prefix}{src}."):] for n in before if n.startswith(f"{prefix}{src}.")]
            assert params, (end, src)
            for name in params:
                old, new = before[f"{prefix}{src}.{name}"], after[f"{prefix}{j}.{name}"]
                # The step count went with the moments (a fresh state would be at step 1).
                assert float(new["step"]) == float(old["step"]) + 1 == end + 1, (end, j, name)
                # One Adam step from the source's moments: the gradient implied by the first moment
                # must also explain the second moment.
                grad = (new["exp_avg"] - beta1 * old["exp_avg"]) / (1 - beta1)
                predicted = beta2 * old["exp_avg_sq"] + (1 - beta2) * grad ** 2
                torch.testing.assert_close(new["exp_avg_sq"], predicted, rtol=1e-3, atol=1e-12)
    # The flag changes training: identical until the first step after growth has updated the weights.
    copied, positional = metrics(out)[0], metrics(bert_positional)[0]
    first_growth = STAGE_ENDS[0]
    assert [r["loss"] for r in copied[:first_growth + 1]] == [r["loss"] for r in positional[:first_growth + 1]]
    a, b = final_weights(out), final_weights(bert_positional)
    assert any(not torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------
# GPT-2 from scratch, 2 layers: gradient accumulation and train mode after evaluation.
# ------------------------------------------------------------------------------------------------
NO_DROPOUT = ",resid_pdrop=0,embd_pdrop=0,attn_pdrop=0"


def gpt2_args(tiny_corpus, out, batch, accum, dropout=False):
    # A huge Adam epsilon makes the update ~ lr * gradient (SGD-like), so a gradient scaled by the number
    # of micro-batches shows up in the weights (Adam with eps 1e-8 is blind to the gradient's scale).
    # No clipping, no weight decay, a constant learning rate: the update is a function of the gradient only.
    return [*tiny_corpus, "--tokenizer_vocab_size", 2048, "--model_type", "gpt2",
            "--config_overrides", "n_layer=2,n_embd=32,n_head=2" + ("" if dropout else NO_DROPOUT),
            "--output_dir", out, "--max_seq_length", 32, "--max_train_samples", 16,
            "--per_device_train_batch_size", batch, "--gradient_accumulation_steps", accum, "--max_train_steps", 3,
            "--learning_rate", 1.0, "--adam_epsilon", 1.0, "--max_grad_norm", 0, "--weight_decay", 0,
            "--lr_scheduler_type", "constant", "--seed", SEED, "--eval_steps", 2, "--max_eval_samples", 16,
            "--save_strategy", "no", "--logging_steps", 100]


@pytest.fixture(scope="module")
def gpt2_runs(tmp_path_factory, tiny_corpus):
    runs = {"accum2": (2, 2, False), "batch4": (4, 1, False), "accum2_dropout": (2, 2, True)}
    outs = {}
    for name, (batch, accum, dropout) in runs.items():
        outs[name] = tmp_path_factory.mktemp(name) / "run"
        result = run_inprocess(gpt2_args(tiny_corpus, outs[name], batch, accum, dropout))
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    return outs


def test_accumulation_equals_one_batch_of_the_same_blocks(gpt2_runs):
    """2 micro-batches of 2 blocks make the same update as 1 batch of the same 4 blocks."""
    accum, single = final_weights(gpt2_runs["accum2"]), final_weights(gpt2_runs["batch4"])
    diff = max((accum[k] - single[k]).abs().max().item() for k in accum)
    assert diff <= 1e-6, f"max weight difference {diff:.3g} between accumulation 2 x 2 and batch 4"
    (train_a, eval_a), (train_b, eval_b) = metrics(gpt2_runs["accum2"]), metrics(gpt2_runs["batch4"])
    assert [r["loss"] for r in train_a] == pytest.approx([r["loss"] for r in train_b], rel=1e-6)
    assert [e["eval_loss"] for e in eval_a] == pytest.approx([e["eval_loss"] for e in eval_b], rel=1e-6)
    # The check has power: the SGD-like steps moved the model (eval loss fell by ~0.25; measured weight
    # difference between the two runs 6e-8; 0.23 with the gradient twice too large).
    assert eval_a[-1]["eval_loss"] < eval_a[0]["eval_loss"] - 0.1


def test_dropout_is_active_after_every_evaluation(gpt2_runs):
    """The twin runs differ only in dropout. Evaluation runs at step 0 and step 2, before steps 1 and 3:
    a model left in eval mode by an evaluation would train without dropout, i.e. exactly as the twin."""
    (train_on, eval_on), (train_off, eval_off) = metrics(gpt2_runs["accum2_dropout"]), metrics(gpt2_runs["accum2"])
    assert [e["step"] for e in eval_on] == [0, 2, 3]
    assert eval_on[0]["eval_loss"] == eval_off[0]["eval_loss"]  # same initial weights, dropout off in eval
    for a, b in zip(train_on, train_off, strict=True):
        assert a["loss"] != b["loss"], f"step {a['step']} trained without dropout"


# ------------------------------------------------------------------------------------------------
# The data path: batch order per epoch and MLM masks (public functions, no run needed).
# ------------------------------------------------------------------------------------------------
def epoch_keys(num_blocks, batch, world, epochs, seed=SEED):
    """{epoch: [keys of all ranks, micro-batch by micro-batch]} as the loop's samplers yield them."""
    per_epoch = num_blocks // (batch * world)
    ranks = [list(MicroBatchSampler(num_blocks=num_blocks, batch_size=batch, world_size=world, rank=r, seed=seed,
                                   micro_per_epoch=per_epoch, start=0, stop=per_epoch * epochs))
             for r in range(world)]
    out = {}
    for m in range(per_epoch * epochs):
        out.setdefault(m // per_epoch, []).extend(key for r in range(world) for key in ranks[r][m])
    return out


@pytest.mark.parametrize("batch,world", [(4, 1), (2, 2), (3, 2)])
def test_each_epoch_is_a_full_permutation_and_epochs_differ(batch, world):
    num_blocks = 24
    keys = epoch_keys(num_blocks, batch, world, epochs=3)
    orders = []
    for epoch, epoch_keys_ in keys.items():
        assert {e for e, _ in epoch_keys_} == {epoch}  # keys carry the epoch (it seeds the MLM masks)
        order = [i for _, i in epoch_keys_]
        assert sorted(order) == list(range(num_blocks)), f"epoch {epoch} is not a permutation"
        orders.append(order)
    assert len({tuple(o) for o in orders}) == 3, "some epochs repeat the same order"
    assert orders[0] != list(range(num_blocks))  # shuffled at all


def test_global_batch_order_does_not_depend_on_the_process_count():
    one, two = epoch_keys(24, 4, 1, epochs=2), epoch_keys(24, 2, 2, epochs=2)
    assert one == two


@pytest.fixture(scope="module")
def wordpiece():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(995)]
    # vocab=, not vocab_file=: in transformers 5.24 the latter silently builds a 5-token tokenizer, whose
    # "random words" are then only the special tokens ([MASK] among them).
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    assert len(tokenizer) == 1000 and tokenizer.mask_token_id == 4
    return tokenizer


def blocks(n, length=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (n, length), generator=g)
    special = torch.zeros(n, length, dtype=torch.long)
    special[:, 0] = special[:, -1] = 1
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    return ids, special


def rows(ids, special, keys):
    return [{"key": key, "input_ids": ids[i], "special_tokens_mask": special[i]} for key, i in keys]


def test_mlm_masks_differ_between_epochs_and_seeds_not_with_batch_company(wordpiece):
    ids, special = blocks(16)
    collate = BlockCollator(wordpiece, True, 0.15, seed=SEED)
    by_epoch = [collate(rows(ids, special, [((e, i), i) for i in range(16)]))["labels"] != -100 for e in range(3)]
    assert len({tuple(m.tolist()) for m in by_epoch[0]}) == 16, "blocks of one epoch share a mask"
    for a, b in ((0, 1), (1, 2), (0, 2)):
        same = [torch.equal(by_epoch[a][i], by_epoch[b][i]) for i in range(16)]
        assert not any(same), f"epochs {a} and {b} mask some block identically"
    other_seed = BlockCollator(wordpiece, True, 0.15, seed=SEED + 1)(rows(ids, special, [((0, i), i) for i in range(16)]))
    assert all(not torch.equal(other_seed["labels"][i] != -100, by_epoch[0][i]) for i in range(16))
    # A block's mask is its own: the same in any batch, at any position, next to any other blocks.
    alone = [collate(rows(ids, special, [((0, i), i)])) for i in range(16)]
    reversed_batch = collate(rows(ids, special, [((0, i), i) for i in reversed(range(16))]))
    for i in range(16):
        assert torch.equal(alone[i]["labels"][0] != -100, by_epoch[0][i])
        assert torch.equal(reversed_batch["input_ids"][15 - i], alone[i]["input_ids"][0])


def test_mlm_masks_do_not_depend_on_the_process_count(wordpiece):
    """The blocks each rank collates: 1 process x batch 4 and 2 processes x batch 2 mask every block alike."""
    ids, special = blocks(24)
    collate = BlockCollator(wordpiece, True, 0.15, seed=SEED)

    def masked(batch, world):
        per_epoch = 24 // (batch * world)
        found = {}
        for r in range(world):
            sampler = MicroBatchSampler(num_blocks=24, batch_size=batch, world_size=world, rank=r, seed=SEED,
                                       micro_per_epoch=per_epoch, start=0, stop=2 * per_epoch)
            for keys in sampler:
                out = collate(rows(ids, special, [(k, k[1]) for k in keys]))
                for n, k in enumerate(keys):
                    found[k] = (out["input_ids"][n], out["labels"][n])
        return found

    one, two = masked(4, 1), masked(2, 2)
    assert one.keys() == two.keys() and len(one) == 48  # 2 epochs x 24 blocks
    for k in one:
        assert torch.equal(one[k][0], two[k][0]) and torch.equal(one[k][1], two[k][1]), k


def test_mlm_masking_rates_are_hugging_face_s_80_10_10(wordpiece):
    """Independent of the seed derivation: over ~30k tokens, 15% are chosen, of those 80% become [MASK],
    10% a random word, 10% stay; special tokens never; labels keep the original id where chosen."""
    ids, special = blocks(480)
    out = BlockCollator(wordpiece, True, 0.15, seed=SEED)(rows(ids, special, [((1, i), i) for i in range(480)]))
    chosen = out["labels"] != -100
    assert not chosen[special.bool()].any()
    assert torch.equal(out["labels"][chosen], ids[chosen])
    assert torch.equal(out["input_ids"][~chosen], ids[~chosen])
    n = int((~special.bool()).sum())
    k = int(chosen.sum())
    assert abs(k / n - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n)
    as_mask = int((out["input_ids"][chosen] == wordpiece.mask_token_id).sum())
    kept = int((out["input_ids"][chosen] == ids[chosen]).sum())
    # A random word is one of the 1000 ids: it may be the original or [MASK] (0.1% each, within the bounds).
    assert abs(as_mask / k - 0.8) < 4 * math.sqrt(0.16 / k)
    assert abs(kept / k - 0.1) < 4 * math.sqrt(0.09 / k)
    assert abs((k - as_mask - kept) / k - 0.1) < 4 * math.sqrt(0.09 / k)
