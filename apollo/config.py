"""The run's typed configuration: every command-line flag is a field here, with its help text.

`parse_config()` builds the parser from the fields, and `TrainConfig.validate()` rejects invalid
combinations before any data is read. The resolved config is written to OUTPUT_DIR/run_config.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from dataclasses import dataclass, field

from .plan import GROW_METHODS
from .sampling import DIST_FUNCTIONS


class ConfigError(ValueError):
    """A bad flag: reported as one line `error: --flag: what is wrong`, before any work starts."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"--{flag}: {message}")
        self.flag = flag


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # Model and tokenizer
    model_type: str | None = _f(None, "Model family: bert, gpt2, or any decoder family of transformers whose blocks "
                                "can be shared (llama, granite, qwen3, mixtral, ...: the README's table; others "
                                "are refused with the reason). Inferred from --config_name when omitted.")
    config_name: str | None = _f(None, "Hub name or local path of a model config. Default: the library's "
                                 "default config for --model_type (GPT2-Base / BERT-Base shapes).")
    config_overrides: str | None = _f(None, 'Comma-separated overrides of the config, e.g. "n_layer=12,n_embd=128".')
    tokenizer_name: str | None = _f(None, "Hub name or local path of a tokenizer. Default: train a byte-level BPE "
                                    "(GPT-2) or WordPiece (BERT) tokenizer on the training text and cache it.")
    tokenizer_vocab_size: int = _f(8192, "Vocabulary size of a locally trained tokenizer.")
    resize_token_embeddings: bool = _f(False, "Allow a tokenizer whose vocabulary is larger than the config's "
                                       "vocab_size (the embeddings are resized). Configs built without "
                                       "--config_name always take the tokenizer's size.")
    cache_dir: str | None = _f(None, "Where trained tokenizers and tokenized datasets are cached "
                               "(default: $APOLLO_CACHE or ~/.cache/apollo).")
    # Data
    train_file: list[str] | None = _f(None, "Training text file(s), one document per line.", nargs="+")
    validation_file: list[str] | None = _f(None, "Validation text file(s), one document per line.", nargs="+")
    dataset_dir: str | None = _f(None, "A dataset saved by download_train_datasets.py (load_from_disk, 'text' column).")
    validation_split_percentage: int = _f(5, "Percent of the training documents held out when no validation set is "
                                          "given: runs of consecutive documents spread over the corpus, the same "
                                          "for every --seed. 0: hold out nothing and do not evaluate.")
    max_seq_length: int = _f(128, "Tokens per training block (texts are concatenated and cut into blocks).")
    mlm_probability: float = _f(0.15, "Share of tokens masked for BERT's masked-LM loss.")
    max_train_samples: int | None = _f(None, "Use at most this many training blocks (debugging).")
    max_eval_samples: int | None = _f(None, "Evaluate on this many validation blocks, evenly spaced "
                                      "over the validation set (the same blocks for every run).")
    preprocessing_num_workers: int | None = _f(None, "Processes for tokenization (datasets.map num_proc).")
    dataloader_num_workers: int = _f(0, "DataLoader worker processes.")
    preprocess_only: bool = _f(False, "Build the tokenizer and the token cache, then exit (before any model is "
                               "built): run once before a large launch so no rank waits for it.")
    # Training
    per_device_train_batch_size: int = _f(8, "Blocks per device per micro-batch.")
    per_device_eval_batch_size: int = _f(16, "Blocks per device per evaluation batch.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    num_train_epochs: int = _f(3, "Epochs to train (an epoch is floor(blocks / global batch) optimizer steps, "
                               "at least 1: a smaller epoch is one step padded by wrapping round).")
    max_train_steps: int | None = _f(None, "If set, stop after this many optimizer steps (overrides epochs).")
    learning_rate: float = _f(1e-4, "Peak learning rate of AdamW.")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and LayerNorm weights).")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.999, "AdamW beta2.")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables), as the HF Trainer the official code used.")
    lr_scheduler_type: str = _f("cosine", "transformers.get_scheduler type.",
                                choices=("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                         "constant_with_warmup", "warmup_stable_decay"))
    lr_decay_ratio: float = _f(0.2, "With --lr_scheduler_type warmup_stable_decay: share of the run spent in the "
                               "final decay (after warmup, the LR stays at its peak until then).")
    lr_decay_type: str = _f("cosine", "With --lr_scheduler_type warmup_stable_decay: shape of the final decay.",
                            choices=("linear", "cosine", "1-sqrt"))
    warmup_ratio: float = _f(0.0, "Share of the optimizer steps used for linear warmup.")
    warmup_steps: int | None = _f(None, "Warmup steps (overrides --warmup_ratio).")
    seed: int = _f(42, "Seed of model init, data order, MLM masking, dropout and depth draws.")
    mixed_precision: str = _f("no", "Mixed precision through Accelerate.", choices=("no", "bf16", "fp16"))
    bf16: bool = _f(False, "Same as --mixed_precision bf16 (the official scripts' flag).")
    cpu: bool = _f(False, "Train on the CPU even when a GPU is present.")
    ddp_timeout: int | None = _f(None, "Seconds a process waits in a collective (e.g. for the main process to build "
                                 "the token cache) before the run fails. Default: torch's (30 minutes for gloo, 10 for NCCL).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass to save memory.")
    no_tf32: bool = _f(False, "Keep float32 matmuls in full precision on Ampere and newer GPUs (TF32 is on by "
                       "default there; it affects only what runs outside bf16/fp16 autocast).")
    torch_compile: bool = _f(False, "Compile each transformer block with torch.compile. One graph serves every "
                             "block and every sampled depth; compiling the whole model instead (Accelerate's "
                             "dynamo_backend) recompiles for each new depth plan and is refused for Apollo runs.")
    # Logging, evaluation, checkpoints
    output_dir: str | None = _f(None, "Where metrics, checkpoints and the final model go; required except with --preprocess_only.")
    overwrite_output_dir: bool = _f(False, "Clear a non-empty --output_dir before starting.")
    logging_steps: int = _f(10, "Print a progress line every N optimizer steps (metrics.jsonl gets every step).")
    peak_tflops: float | None = _f(None, "Peak dense bf16 TFLOP/s of one device, for the MFU in the logs (achieved "
                                   "training FLOP/s per device / this peak). Default: from the GPU's name for "
                                   "A100 (312), H100 SXM (989), H100 PCIe (756), H100/H200 NVL (835), H200 (989); "
                                   "elsewhere (e.g. the CPU) MFU is not logged.")
    eval_steps: int | None = _f(None, "Evaluate at full depth every N optimizer steps (and at the end). "
                                "Default: 10 evaluations per run.")
    save_strategy: str = _f("steps", "When to write checkpoints. Whatever it says, SIGTERM/SIGINT (preemption) "
                            "writes one at the next step boundary and exits with status 0.",
                            choices=("no", "steps", "epoch"))
    save_steps: int | None = _f(None, "Checkpoint every N optimizer steps with --save_strategy steps "
                                "(default: 4 per run).")
    save_total_limit: int | None = _f(None, "Keep at most this many checkpoints (oldest complete ones go first).")
    resume_from_checkpoint: str | None = _f(None, "A checkpoint-<step> folder, or 'latest' for the newest complete "
                                            "one in --output_dir.")
    report_to: str = _f("none", "Experiment tracker.", choices=("none", "tensorboard", "wandb"))
    # Apollo
    apollo_layers: str | None = _f(None, "Unique layers per stage, e.g. 1,3,6,12 (last = model depth). "
                                   "Without it: plain training from scratch.")
    apollo_epoch_list: str | None = _f(None, "Epoch at which each stage ends, e.g. 1,2,5,10 (official form).")
    apollo_step_list: str | None = _f(None, "Optimizer step at which each stage ends, e.g. 100,200,500,1000, or "
                                      "shares of the run's steps, e.g. 0.05,0.1,0.25,1.0 (any entry with a '.' "
                                      "makes them all shares; each rounds to the nearest step), so that one "
                                      "schedule carries across training lengths.")
    dist_function: str = _f("lvps", "How the depth of each pass is drawn.", choices=DIST_FUNCTIONS)
    grow_method: str = _f("extend", "Depth plan and growth map: interpolation (extend) or stacking.",
                          choices=GROW_METHODS)
    copy_optimizer_state_on_growth: bool = _f(False, "Copy Adam moments and step count along with the weights at "
                                              "growth (default: official positional behaviour).")
    growth_warmup_steps: int = _f(0, "After each growth, multiply the scheduled LR by a linear ramp from 0 to 1 "
                                  "over N optimizer steps (the first step of the new stage uses 1/N of it). "
                                  "0: off (official: one schedule, nothing at growth).")
    growth_noise: float = _f(0.0, "After each growth, add Gaussian noise of std S x (that tensor's own std) to "
                             "every parameter of every copy but the first copy of each source layer, to break "
                             "the symmetry of copied layers (as LiGO's noisy stacking). This breaks function "
                             "preservation: the grown model no longer computes what the old one did. 0: off "
                             "(official).")
    apollo_info_output_file: str | None = _f(None, "Write the per-micro-batch schedule to PREFIX.rank_N "
                                             "(official fields). Relative paths go under --output_dir.")

    # ---- derived views -------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else self.mixed_precision

    @property
    def apollo(self) -> bool:
        return self.apollo_layers is not None

    def layer_list(self) -> tuple[int, ...]:
        return _int_list(self.apollo_layers, "apollo_layers")

    def stage_ends(self) -> tuple[int, ...] | tuple[float, ...]:
        """Stage ends as given: epochs or steps (ints), or shares of the run (floats, see step_fractions)."""
        if self.step_fractions:
            return _fraction_list(self.apollo_step_list, "apollo_step_list")
        return _int_list(self.apollo_epoch_list or self.apollo_step_list,
                         "apollo_epoch_list" if self.apollo_epoch_list else "apollo_step_list")

    @property
    def step_fractions(self) -> bool:
        """True if --apollo_step_list gives shares of the run (an entry with a '.') rather than steps."""
        return bool(self.apollo_step_list and "." in self.apollo_step_list)

    def validate(self) -> "TrainConfig":
        """Checks that need no model and no data."""
        if not self.output_dir and not self.preprocess_only:
            raise ConfigError("output_dir", "is required")
        if self.ddp_timeout is not None and self.ddp_timeout < 1:
            raise ConfigError("ddp_timeout", f"must be >= 1 second, got {self.ddp_timeout}")
        if self.bf16 and self.mixed_precision not in ("no", "bf16"):
            raise ConfigError("bf16", f"conflicts with --mixed_precision {self.mixed_precision}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "num_train_epochs", "max_seq_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("max_train_steps", "eval_steps", "save_steps", "save_total_limit", "max_train_samples",
                     "max_eval_samples", "warmup_steps"):
            value, least = getattr(self, name), 0 if name == "warmup_steps" else 1
            if value is not None and value < least:
                raise ConfigError(name, f"must be >= {least}, got {value}")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError("mlm_probability", f"must be in (0, 1), got {self.mlm_probability}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.validation_split_percentage < 100:
            raise ConfigError("validation_split_percentage", "must be in [0, 100)")
        if not 0 < self.lr_decay_ratio <= 1:
            raise ConfigError("lr_decay_ratio", f"must be in (0, 1], got {self.lr_decay_ratio}")
        if self.lr_scheduler_type == "warmup_stable_decay" and self.warmup_ratio + self.lr_decay_ratio > 1:
            raise ConfigError("lr_decay_ratio", f"warmup ({self.warmup_ratio}) and decay ({self.lr_decay_ratio}) "
                                                f"shares add up to more than the run")
        if self.growth_warmup_steps < 0:
            raise ConfigError("growth_warmup_steps", f"must be >= 0, got {self.growth_warmup_steps}")
        if not 0 <= self.growth_noise < 10 or self.growth_noise != self.growth_noise:
            raise ConfigError("growth_noise", f"must be in [0, 10), got {self.growth_noise}")
        if not self.apollo and (self.growth_warmup_steps or self.growth_noise):
            raise ConfigError("growth_warmup_steps" if self.growth_warmup_steps else "growth_noise",
                              "needs --apollo_layers (there is no growth in a run from scratch)")
        if self.learning_rate <= 0:
            raise ConfigError("learning_rate", f"must be > 0, got {self.learning_rate}")
        if self.peak_tflops is not None and not 0 < self.peak_tflops < float("inf"):
            raise ConfigError("peak_tflops", f"must be a positive number of TFLOP/s, got {self.peak_tflops}")
        if self.train_file and self.dataset_dir:
            raise ConfigError("dataset_dir", "give either --train_file or --dataset_dir, not both")
        if self.apollo_epoch_list and self.apollo_step_list:
            raise ConfigError("apollo_step_list", "give either --apollo_epoch_list or --apollo_step_list, not both")
        if self.apollo:
            self._validate_apollo()
        elif self.apollo_epoch_list or self.apollo_step_list:
            flag = "apollo_epoch_list" if self.apollo_epoch_list else "apollo_step_list"
            raise ConfigError(flag, "needs --apollo_layers")
        return self

    def _validate_apollo(self) -> None:
        layers = self.layer_list()
        if any(u < 1 for u in layers):
            raise ConfigError("apollo_layers", f"layer counts must be >= 1, got {self.apollo_layers}")
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise ConfigError("apollo_layers", f"must be strictly increasing, got {self.apollo_layers}")
        if not (self.apollo_epoch_list or self.apollo_step_list):
            raise ConfigError("apollo_layers", "needs --apollo_epoch_list or --apollo_step_list")
        flag = "apollo_epoch_list" if self.apollo_epoch_list else "apollo_step_list"
        ends = self.stage_ends()
        if len(ends) != len(layers):
            raise ConfigError(flag, f"has {len(ends)} entries but --apollo_layers has {len(layers)}")
        if self.step_fractions:
            if any(not 0 < e <= 1 for e in ends) or any(b <= a for a, b in zip(ends, ends[1:])):
                raise ConfigError(flag, f"shares of the run must be in (0, 1] and strictly increasing, "
                                        f"got {self.apollo_step_list}")
            return
        if any(e < 1 for e in ends) or any(b <= a for a, b in zip(ends, ends[1:])):
            raise ConfigError(flag, f"must be positive and strictly increasing, got {','.join(map(str, ends))}")
        if self.apollo_epoch_list and ends[-1] > self.num_train_epochs:
            raise ConfigError(flag, f"ends at epoch {ends[-1]}, beyond --num_train_epochs {self.num_train_epochs}")
        if self.apollo_step_list and self.max_train_steps and ends[-1] > self.max_train_steps:
            raise ConfigError(flag, f"ends at step {ends[-1]}, beyond --max_train_steps {self.max_train_steps}")


def _int_list(text: str | None, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except (AttributeError, ValueError):
        raise ConfigError(flag, f"must be comma-separated integers, got {text!r}") from None


def _fraction_list(text: str, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(flag, f"must be comma-separated numbers, got {text!r}") from None


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block: the flag and what is wrong
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Argparse's "(default: X)" only where it says something: not for a switch, an unset flag (None; its help
    text says what happens then) or a help text that states its default itself."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "Default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(description="Pretrain BERT (masked LM), GPT-2 or another decoder family of transformers "
                                        "(causal LM), from scratch or with Apollo.", formatter_class=_DefaultsFormatter)
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        if hints[f.name] is bool:
            parser.add_argument(f"--{f.name}", action="store_true", help=help_text)
            continue
        base = [a for a in typing.get_args(hints[f.name]) if a is not type(None)] or [hints[f.name]]
        kind = base[0]
        if typing.get_origin(kind) is list:
            kind = typing.get_args(kind)[0]
        parser.add_argument(f"--{f.name}", type=kind, default=f.default, help=help_text, **meta)
    return parser


def parse_config(argv=None) -> TrainConfig:
    args = build_parser().parse_args(argv)
    return TrainConfig(**vars(args)).validate()
