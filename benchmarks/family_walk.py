#!/usr/bin/env python
"""Every causal-LM family of the installed transformers, sorted: trained, refused, or not tried.

    python benchmarks/family_walk.py                  # walk all, write the results file and the README table
    python benchmarks/family_walk.py --families granite,qwen3 --no_write   # a look at a few, nothing written

For each `model_type` of `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES` (and BERT):
  refused    `run_pretrain.py --model_type KIND` refuses the family's default config; the reason is the
             line it prints (after `run_pretrain.py: error: `), decided by the general rules of
             apollo/families.py (per-layer config lists, position knobs, blocks on the meta device,
             FLOPs countable from the modules);
  not tried  run_pretrain accepts it, but no tiny model could be built by rule (the reason says why);
  trained    a tiny config built by rule (apollo/small_configs.py: width, heads, key/value heads, head
             sizes, layers, intermediate sizes, vocabulary, positions and experts shrunk, whatever the
             family calls them; 2 key/value heads for 4 query heads wherever the family has the field,
             else, or where its tiny grouped config is refused, as its default has them) passes every
             check below;
  failed     run_pretrain accepts it but a check fails: a defect, which the test suite does not allow.
Checks on the tiny model (cache left on, as the family's default config has it):
  shared     a pass along a plan of shared blocks (2 unique, 4 positions) equals an explicitly unrolled
             stock model: loss and the gradients summed over uses within 1e-5;
  growth     growing 2 -> 4 blocks (extend) leaves the full-depth loss unchanged;
  flops      apollo.flops (counted on fake tensors) equals FlopCounterMode on the real model at depths
             1 and 3, with SDPA (where the family has it) and eager attention, forward; and the 3 x
             forward training count is within 1% of FlopCounterMode on an eager forward + backward;
  saved      the grown model saved with save_pretrained loads with no missing or unexpected weights;
  run        (unless --no_run) a short Apollo run through run_pretrain.py with the tiny config as a
             --config_name folder saves a plain model of the family that loads the same way.
Results: benchmarks/results/family_walk.json (compared by tests/test_family_walk.py, which recomputes
everything but the runs) and the README table between the family-walk markers.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES  # noqa: E402

from apollo.config import ConfigError, parse_config  # noqa: E402
from apollo.corpus import embedded_sample  # noqa: E402
from apollo.families import check_family, config_at_depth, one_line  # noqa: E402
from apollo.flops import count_forward, count_forward_backward, forward_flops, training_flops  # noqa: E402
from apollo.growth import grow_layers  # noqa: E402
from apollo.kinds import attention_implementation, build_model, kind_of  # noqa: E402
from apollo.plan import depth_plan, growth_map  # noqa: E402
from apollo.shared_layers import layer_slots, run_along  # noqa: E402
from apollo.small_configs import KV_HEAD_NAMES, Sizes, small_config  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "family_walk.json"
README = REPO / "README.md"
MARKERS = ("<!-- family-walk:start -->", "<!-- family-walk:end -->")

TINY = Sizes()  # 4 layers, width 32, 4 query / 2 key-value heads of 8, MLP 48, vocabulary 512, 4 experts top-2
LAYERS = TINY.layers
BATCH, SEQ = 1, 16  # the shape apollo.families checks FLOPs at: one count serves both
TOLERANCE = 1e-5


def tiny_config(kind: str):
    """(config, None), or (None, why not): the family shrunk by rule, with grouped keys and values where its
    code takes them; a family whose tiny grouped config fails to build or is refused (multi-head latent
    attention reads the key/value head count otherwise) keeps its default's full attention."""
    why = None
    for group_kv in (True, False):
        try:
            config = small_config(kind, TINY, group_kv)
        except Exception as err:  # the family's constructor rejects the shrunk values
            why = f"no tiny config by rule: {one_line(err)}"
            continue
        refused = check_family(config)
        if refused is None:
            return config, None
        why = f"the tiny config by rule is refused: {refused}"
    return None, why


def _kv_heads(config):
    return next((getattr(config, name) for name in KV_HEAD_NAMES if getattr(config, name, None) is not None), None)


def run_pretrain_refusal(kind: str) -> str | None:
    """What `run_pretrain.py --model_type KIND` says about the family's default config (None: accepted)."""
    from apollo.model_config import model_config

    try:
        model_config(parse_config(["--model_type", kind, "--output_dir", "unused"]))
    except ConfigError as err:
        return str(err)
    return None


def _ids(vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(seed))


def _make(config, **kwargs):
    # A copy: saving a model writes into its config (a new FLOPs cache key). Eval: no dropout, so passes
    # compare; the cache stays on.
    torch.manual_seed(0)
    return build_model(copy.deepcopy(config), **kwargs).eval()


def unrolled(model, plan):
    """A stock model of depth len(plan) whose position k holds a copy of the model's slot plan[k]."""
    ref = _make(config_at_depth(model.config, len(plan)))
    slots = layer_slots(model)
    prefix = next(name for name, module in model.named_modules() if module is slots) + "."
    ref.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}, strict=False)
    for k, src in enumerate(plan):
        layer_slots(ref)[k].load_state_dict(slots[src].state_dict())
    return ref


def check_shared(config) -> dict:
    """Shared pass along extend(2 -> 4) vs the unrolled stock model: loss and summed gradients."""
    model, plan, x = _make(config), depth_plan(2, LAYERS, "extend"), _ids(config.vocab_size)
    ref = unrolled(model, plan)
    with run_along(model, plan):
        loss = model(input_ids=x, labels=x).loss
    loss.backward()
    ref_loss = ref(input_ids=x, labels=x).loss
    ref_loss.backward()
    worst = 0.0
    slots, ref_slots = layer_slots(model), layer_slots(ref)
    for u in range(2):
        uses = [ref_slots[k] for k, s in enumerate(plan) if s == u]
        for (name, p), *copies in zip(slots[u].named_parameters(), *[m.parameters() for m in uses]):
            grads = [q.grad for q in copies if q.grad is not None]
            if p.grad is None and not grads:
                continue
            if p.grad is None or len(grads) != len(copies):
                return {"ok": False, "why": f"{name}: a gradient is missing on one side"}
            summed = sum(grads)
            worst = max(worst, ((p.grad - summed).norm() / summed.norm().clamp_min(1e-12)).item())
    idle = all(p.grad is None for u in range(2, LAYERS) for p in slots[u].parameters())
    loss_diff = abs(loss.item() - ref_loss.item())
    ok = loss_diff <= TOLERANCE and worst <= TOLERANCE and idle and bool(torch.isfinite(loss))
    return {"ok": ok, "loss_diff": loss_diff, "grad_rel_diff": worst, "idle_slots_untouched": idle}


def _full_depth_loss(model, unique: int, x) -> torch.Tensor:
    with torch.no_grad(), run_along(model, depth_plan(unique, LAYERS, "extend")):
        return model(input_ids=x, labels=x).loss


def check_growth_and_save(config, folder: Path) -> tuple[dict, dict]:
    """Growth 2 -> 4 keeps the full-depth function; the grown model saves and loads as a plain model."""
    model, x = _make(config), _ids(config.vocab_size, 2)
    before = _full_depth_loss(model, 2, x)
    grow_layers(layer_slots(model), growth_map(2, LAYERS, "extend"))
    after = _full_depth_loss(model, LAYERS, x)
    growth = {"ok": bool(torch.equal(before, after)), "loss_diff": abs(before.item() - after.item())}
    model.save_pretrained(folder)
    loaded, info = kind_of(config.model_type).model_class.from_pretrained(folder, output_loading_info=True)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    same = torch.equal(_full_depth_loss(loaded.eval(), LAYERS, x), after)
    saved = {"ok": not problems and same and type(loaded) is type(model), "class": type(loaded).__name__,
             **({"problems": {k: sorted(map(str, v))[:5] for k, v in problems.items()}} if problems else {})}
    return growth, saved


def check_flops(config) -> dict:
    """The count from apollo.flops against FlopCounterMode on the real model: forward at depths 1 and 3
    with SDPA (where the family has it) and eager attention, and an eager forward + backward at depth 3
    against the 3 x forward training rule."""
    attentions = ["eager"] + (["sdpa"] if attention_implementation(config) == "sdpa" else [])
    x, found, ok = _ids(config.vocab_size), {}, True
    for attn in attentions:
        model = _make(config, attn_implementation=attn, experts_implementation="eager")
        found[f"{attn}_depth1"] = count_forward(model, x, [0])
        if attn == "eager":  # one training pass: its forward is the depth-3 forward count
            found["eager_depth3"], backward = count_forward_backward(model, x, [0, 1, 2])
        else:
            found[f"{attn}_depth3"] = count_forward(model, x, [0, 1, 2])
        for depth in (1, 3):
            ok &= found[f"{attn}_depth{depth}"] == forward_flops(config, BATCH, SEQ, depth)
    trained = found["eager_depth3"] + backward
    rule = training_flops(config, BATCH, SEQ, 3)
    ok &= abs(rule - trained) <= 0.01 * trained
    return {"ok": bool(ok), "layer": forward_flops(config, BATCH, SEQ, 1) - forward_flops(config, BATCH, SEQ, 0),
            "head": forward_flops(config, BATCH, SEQ, 0), "counted": found, "training_rule_vs_counted": rule / trained}


def sort_family(kind: str, corpus: list[str] | None = None) -> dict:
    """The family's column, reason and check results (the run only when `corpus` is given)."""
    why = run_pretrain_refusal(kind)
    if why is not None:
        return {"column": "refused", "reason": why}
    config, why = tiny_config(kind)
    if why is not None:
        return {"column": "not tried", "reason": why}
    checks = {}
    try:
        checks["shared"] = check_shared(config)
        with tempfile.TemporaryDirectory() as tmp:
            checks["growth"], checks["saved"] = check_growth_and_save(config, Path(tmp) / "saved")
            checks["flops"] = check_flops(config)
            if corpus is not None:
                checks["run"] = run_entry_point(config, Path(tmp) / "run", corpus)
    except Exception as err:
        return {"column": "failed", "reason": f"a check raised {one_line(err)}", "kv_heads": _kv_heads(config),
                "checks": checks}
    failed = [name for name, result in checks.items() if not result["ok"]]
    return {"column": "failed" if failed else "trained", "reason": f"failed: {', '.join(failed)}" if failed else "",
            "kv_heads": _kv_heads(config), "checks": checks}


def run_entry_point(config, folder: Path, corpus: list[str]) -> dict:
    """run_pretrain.py in this process: Apollo 1 -> 4 blocks in 3 steps, then the saved model loads plainly."""
    from accelerate.state import AcceleratorState
    from transformers import AutoTokenizer

    import run_pretrain

    config.save_pretrained(folder / "config")
    args = [*corpus, "--config_name", folder / "config", "--tokenizer_vocab_size", TINY.vocab, "--output_dir",
            folder / "out", "--max_seq_length", SEQ, "--max_eval_samples", 4, "--max_train_samples", 8,
            "--per_device_train_batch_size", 2, "--apollo_layers", f"1,{LAYERS}", "--apollo_step_list", "1,3",
            "--max_train_steps", 3]
    err, threads = io.StringIO(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = run_pretrain.cli([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(reset_partial_state=True)
    if code != 0:
        return {"ok": False, "why": f"exit {code}: {err.getvalue().strip().splitlines()[-1:]}"}
    model, info = kind_of(config.model_type).model_class.from_pretrained(folder / "out", output_loading_info=True)
    tok = AutoTokenizer.from_pretrained(folder / "out")
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    ids_agree = all(getattr(model.config, f"{role}_token_id", None) == getattr(tok, f"{token}_token_id")
                    for role, token in kind_of(config.model_type).ids_from_tokenizer.items())
    return {"ok": not problems and ids_agree and model.config.model_type == config.model_type
            and model.config.num_hidden_layers == LAYERS and len(tok) == model.config.vocab_size,
            "class": type(model).__name__, "tokenizer_ids_agree": ids_agree}


def families() -> list[str]:
    return sorted({"bert", *MODEL_FOR_CAUSAL_LM_MAPPING_NAMES})


def walk(kinds, corpus=None, say=print) -> dict:
    """Sort each family; one thread (tiny models: threads only add overhead, more so on a loaded machine)."""
    rows, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for kind in kinds:
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows[kind] = sort_family(kind, corpus)
            say(f"{kind:28s} {rows[kind]['column']:9s} {time.perf_counter() - start:5.1f}s "
                f"{rows[kind]['reason'][:110]}")
    finally:
        torch.set_num_threads(threads)
    return rows


def table(results: dict) -> str:
    """The README table of a results file: one row for the trained families, one per reason for the rest."""
    rows = results["families"]
    trained = sorted(k for k, r in rows.items() if r["column"] == "trained")
    lines = [f"Generated by `python benchmarks/family_walk.py` with transformers {results['transformers']} "
             f"and torch {results['torch'].split('+')[0]}: {len(rows)} families.", "",
             "| column | families | reason (`run_pretrain.py: error: ` precedes a refusal; KIND is the family) |",
             "|---|---|---|",
             f"| trained ({len(trained)}) | {', '.join(f'`{k}`' for k in trained)} | every check passed |"]
    for column in ("not tried", "failed", "refused"):
        by_reason: dict[str, list[str]] = {}
        for kind, row in sorted(rows.items()):
            if row["column"] == column:
                by_reason.setdefault(_general(row["reason"], kind), []).append(kind)
        for reason, kinds in sorted(by_reason.items(), key=lambda item: (-len(item[1]), item[0])):
            lines.append(f"| {column} ({len(kinds)}) | {', '.join(f'`{k}`' for k in kinds)} | "
                         f"{reason.replace('|', '/')} |")
    return "\n".join(lines)


def _general(reason: str, kind: str) -> str:
    """The line with the family's name written KIND, so that families refused for one reason share a row."""
    return re.sub(rf"(?<![\w-]){re.escape(kind)}(?![\w-])", "KIND", reason)


def write_readme(text: str) -> None:
    readme = README.read_text()
    start, end = readme.index(MARKERS[0]) + len(MARKERS[0]), readme.index(MARKERS[1])
    README.write_text(readme[:start] + "\n" + text + "\n" + readme[end:])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", help="comma-separated model types (default: every causal-LM family and bert)")
    p.add_argument("--no_run", action="store_true", help="skip the runs through run_pretrain.py")
    p.add_argument("--no_write", action="store_true", help="print only; write neither results nor README")
    args = p.parse_args(argv)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    kinds = args.families.split(",") if args.families else families()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("APOLLO_CACHE", str(Path(tmp) / "cache"))  # tokenizers and token blocks of the runs
        corpus = None if args.no_run else embedded_sample(Path(tmp), {"train": 120, "validation": 20})
        rows = walk(kinds, corpus)
    results = {"transformers": transformers.__version__, "torch": torch.__version__, "families": rows}
    print(table(results))
    if args.no_write:
        return
    if args.families or args.no_run:
        sys.exit("the results file and the README table are written from a full walk only (drop --families/--no_run)")
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    write_readme(table(results))
    print(f"wrote {RESULTS.relative_to(REPO)} and the README table")


if __name__ == "__main__":
    main()
