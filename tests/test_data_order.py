"""The data path against the official release (issue #8, parts 1-3).

- Documents keep their stored order inside blocks; only the block order is shuffled.
- The validation hold-out is runs of consecutive documents, spread over the corpus, the same for
  every --seed, so runs with different seeds share one tokenizer and one token cache.
- An epoch smaller than one global batch is one optimizer step, padded by wrapping round.
- The schedule file, field for field, for the official example shape.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from apollo.config import parse_config
from apollo.batches import MicroBatchSampler, epoch_permutation
from apollo.corpus import GROUP_DOCS, holdout_runs, load_text_splits, token_blocks
from apollo.tokenizer import local_tokenizer
from conftest import TORCHRUN_2, final_weights, read_jsonl, run_inprocess, run_subprocess

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
NUM_DOCS = 2400


@pytest.fixture(scope="module")
def numbered_corpus(tmp_path_factory):
    """Documents 'doc NNNNN ...' of varying length, one per line, in number order."""
    path = tmp_path_factory.mktemp("numbered") / "train.txt"
    lines = [f"doc {i:05d} " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 9)) for i in range(NUM_DOCS)]
    path.write_text("\n".join(lines) + "\n")
    return path


def splits(corpus, *flags):
    return load_text_splits(parse_config(["--model_type", "gpt2", "--output_dir", "unused", "--train_file",
                                          str(corpus), *flags]))


def doc_numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"doc (\d{5})", text)]


def test_holdout_runs_are_spread_and_fixed():
    # 5% of 20,000 documents: 1,000 held out as 10 runs of 100, one centred in each 2,000-document segment.
    assert holdout_runs(20_000, 5) == [(950 + 2000 * i, 1050 + 2000 * i) for i in range(10)]
    # A large corpus: at most 100 runs (here of 3,700 documents, one per 740,000).
    runs = holdout_runs(74_000_000, 5)
    assert len(runs) == 100 and {b - a for a, b in runs} == {37_000}
    assert runs[0][0] > 0 and runs[-1][1] < 74_000_000  # spread, not the first or last N%
    # A small hold-out is one run of consecutive documents, not scattered single lines.
    assert holdout_runs(1_000, 5) == [(475, 525)]


def test_documents_keep_their_order_and_holdout_ignores_seed(numbered_corpus, tmp_path):
    one, two = splits(numbered_corpus, "--seed", "1"), splits(numbered_corpus, "--seed", "2")
    for split in ("train", "validation"):
        assert one[split]["text"] == two[split]["text"]
        assert one[split]._fingerprint == two[split]._fingerprint  # so the token cache key is the same
    train, held = [doc_numbers(t)[0] for t in one["train"]["text"]], [doc_numbers(t)[0] for t in one["validation"]["text"]]
    assert train == sorted(train) and held == sorted(held)  # stored order in both splits
    assert sorted(train + held) == list(range(NUM_DOCS))
    assert held == list(range(1140, 1260))  # 5% of 2,400 = 120 documents: one run, centred

    # Blocks: decoded in cache order, the document numbers increase throughout, and no block joins
    # two groups of GROUP_DOCS consecutive documents (each group's remainder is dropped, as the
    # official group_texts drops each map batch's).
    tokenizer = local_tokenizer("gpt2", one["train"], one["train"]._fingerprint, 512, str(tmp_path))
    blocks = token_blocks(one, tokenizer, "gpt2", 32, None, str(tmp_path))
    seen = []
    for ids in blocks["train"]["input_ids"]:
        numbers = doc_numbers(tokenizer.decode(ids))
        positions = {train.index(n) // GROUP_DOCS for n in numbers}
        assert len(positions) <= 1, f"a block spans two document groups: {numbers}"
        seen += numbers
    assert seen == sorted(seen) and len(seen) > 0.9 * len(train)
    assert set(seen) <= set(train) and not set(seen) & set(held)
    # Groups are fixed by document index: 2 tokenization workers cut the same blocks as one.
    two_workers = token_blocks(one, tokenizer, "gpt2", 32, 2, str(tmp_path / "two_workers"))
    assert torch.equal(two_workers["train"][:]["input_ids"], blocks["train"][:]["input_ids"])


def test_seeds_share_one_token_cache_and_preprocess_only_builds_it(numbered_corpus, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "never_written"
    for seed in (1, 2):
        result = run_inprocess(["--model_type", "gpt2", "--train_file", numbered_corpus, "--tokenizer_vocab_size", 512,
                                "--max_seq_length", 32, "--cache_dir", cache, "--seed", seed, "--preprocess_only",
                                "--output_dir", out])
        assert result.returncode == 0, result.stderr[-2000:]
        assert "Tokenizer and token cache ready" in result.stdout
    assert len(list((cache / "blocks").iterdir())) == 1
    assert len(list((cache / "tokenizers").iterdir())) == 1
    assert not out.exists()  # --preprocess_only stops before any output is written


def test_padded_epoch_wraps_round_like_distributed_sampler():
    # 6 blocks, global batch 2 x 4 micro-batches = 8: one step, positions 6 and 7 wrap to 0 and 1.
    perm = epoch_permutation(6, 7, 0)
    one = list(MicroBatchSampler(6, 2, 1, 0, 7, 4, 0, 8))
    assert [i for batch in one[:4] for _, i in batch] == [*perm, *perm[:2]]
    assert [i for batch in one[4:] for _, i in batch] == [*epoch_permutation(6, 7, 1), *epoch_permutation(6, 7, 1)[:2]]
    assert {e for batch in one[4:] for e, _ in batch} == {1}
    # Two ranks with half the batch see, micro-batch by micro-batch, the same blocks as one rank.
    ranks = [list(MicroBatchSampler(6, 1, 2, r, 7, 4, 0, 8)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == one
    # A resumed sampler (start at micro-batch 4) continues exactly.
    assert list(MicroBatchSampler(6, 2, 1, 0, 7, 4, 4, 8)) == one[4:]
    # With enough blocks nothing wraps: the epoch's leftover blocks are dropped (drop_last).
    big = [i for batch in MicroBatchSampler(10, 2, 1, 0, 7, 4, 0, 4) for _, i in batch]
    assert big == list(epoch_permutation(10, 7, 0)[:8])


# The official example shape: 1 optimizer step per epoch, accumulation 4, 10 epochs, stages ending
# at epochs 1,2,5,10 with 1,3,6,12 unique layers. The expected deterministic fields of the official
# schedule file, written out by hand from the official trainer's generator (one line per micro-batch):
# growth on the first micro-batch of steps 1, 2 and 5; stack_info the map into the current stage,
# and before the first growth the official layers[-1] -> layers[0] map, i.e. [0].
EXPECTED_UNIQUE = [1, 3, 6, 6, 6, 12, 12, 12, 12, 12]
EXPECTED_STACK_INFO = {1: [0], 3: [0, 0, 0], 6: [0, 0, 1, 1, 2, 2], 12: [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]}
EXAMPLE_SHAPE = ["--model_type", "gpt2", "--tokenizer_vocab_size", 2048, "--max_seq_length", 32,
                 "--config_overrides", "n_layer=12,n_embd=32,n_head=2,resid_pdrop=0,embd_pdrop=0,attn_pdrop=0",
                 "--max_train_samples", 6, "--gradient_accumulation_steps", 4, "--num_train_epochs", 10,
                 "--apollo_layers", "1,3,6,12", "--apollo_epoch_list", "1,2,5,10", "--validation_split_percentage", 0,
                 "--apollo_info_output_file", "sched", "--save_strategy", "no", "--logging_steps", 5]


@pytest.fixture(scope="module")
def example_shape(tiny_corpus, tmp_path_factory):
    """One process, batch 2 x 4 = 8 > 6 blocks, no validation set (the official full-scale runs held none)."""
    out = tmp_path_factory.mktemp("example_shape") / "run"
    result = run_inprocess([tiny_corpus[0], tiny_corpus[1], *EXAMPLE_SHAPE, "--per_device_train_batch_size", 2,
                            "--output_dir", out])
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_official_example_shape_schedule_file(example_shape):
    out, result = example_shape
    lines = read_jsonl(out / "sched.rank_0")
    assert [x["curr_global_step_with_accu"] for x in lines] == list(range(40))
    assert [x["curr_global_step"] for x in lines] == [i // 4 for i in range(40)]
    assert [x["curr_unique_layer"] for x in lines] == [u for u in EXPECTED_UNIQUE for _ in range(4)]
    assert [i for i, x in enumerate(lines) if x["do_stack"]] == [4, 8, 20]
    assert [x["stack_info"] for x in lines] == [EXPECTED_STACK_INFO[u] for u in EXPECTED_UNIQUE for _ in range(4)]
    assert all(len(x["extend_layer_list"]) == x["curr_meta_layer"] >= x["curr_unique_layer"] for x in lines)
    assert list(lines[0]) == ["curr_global_step_with_accu", "curr_global_step", "curr_unique_layer",
                              "curr_meta_layer", "extend_layer_list", "do_stack", "stack_info"]


def test_small_epoch_is_one_step_and_no_holdout_means_no_evaluation(example_shape):
    out, result = example_shape
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 11))
    assert not [r for r in records if "eval_loss" in r]
    assert result.stdout.count("No evaluation") == 1
    assert (out / "model.safetensors").exists()


def test_small_epoch_two_processes_match_one(example_shape, tiny_corpus, tmp_path):
    """The padded step: 2 processes x batch 1 see the blocks 1 process x batch 2 sees (lr 1e-4)."""
    one, _ = example_shape
    two = tmp_path / "two"
    result = run_subprocess([tiny_corpus[0], tiny_corpus[1], *EXAMPLE_SHAPE, "--per_device_train_batch_size", 1,
                             "--output_dir", two], launcher=TORCHRUN_2)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = final_weights(one), final_weights(two)
    diff = max((a[n] - b[n]).abs().max().item() for n in a)
    assert diff <= 1e-5, f"max abs weight difference {diff:.3g}"
    assert read_jsonl(two / "sched.rank_0") == read_jsonl(two / "sched.rank_1") == read_jsonl(one / "sched.rank_0")
    losses = lambda out: [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert len(losses(two)) == 10 and np.allclose(losses(two), losses(one), rtol=1e-5)
