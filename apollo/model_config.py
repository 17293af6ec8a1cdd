"""The model's config from the flags: the family, --config_name/--config_overrides, the depth Apollo grows
to, and a vocabulary that fits the tokenizer. Everything here runs before any data is read."""
from __future__ import annotations

from transformers import CONFIG_MAPPING, AutoConfig

from . import families
from .config import ConfigError, TrainConfig
from .kinds import kind_of, max_positions

EXAMPLE_KINDS = "bert, gpt2, llama, qwen3, granite, mistral"


def model_config(cfg: TrainConfig):
    """The model config (vocabulary fixed later from the tokenizer); infers --model_type."""
    if cfg.config_name:
        config = AutoConfig.from_pretrained(cfg.config_name)
        if cfg.model_type and cfg.model_type != config.model_type:
            raise ConfigError("model_type", f"{cfg.model_type} but --config_name is a {config.model_type} config")
        cfg.model_type = config.model_type
    elif cfg.model_type:
        if cfg.model_type not in CONFIG_MAPPING:
            raise ConfigError("model_type", f"unknown model type {cfg.model_type!r} (e.g. {EXAMPLE_KINDS}; "
                                            f"the README lists every family)")
        try:
            config = CONFIG_MAPPING[cfg.model_type]()
        except Exception as err:  # a family whose own default config fails its validation
            raise ConfigError("model_type", f"the default {cfg.model_type} config cannot be built "
                                            f"({families.one_line(err)})") from None
    else:
        raise ConfigError("model_type", f"give --model_type ({EXAMPLE_KINDS}, ...) or --config_name")
    if cfg.config_overrides:
        try:
            if not kind_of(cfg.model_type).rebuild_on_overrides:
                config.update_from_string(cfg.config_overrides)
            else:  # rebuilt, so that derived fields follow (Llama's head_dim, Qwen2's layer_types)
                overrides = families.parse_overrides(cfg.config_overrides, config)
                if cfg.config_name:
                    for key, value in overrides.items():
                        setattr(config, key, value)
                else:
                    config = families.build_config(cfg.model_type, overrides)
        except (ValueError, TypeError) as err:
            raise ConfigError("config_overrides", str(err)) from None
    why = families.check_family(config)  # after the overrides: they may make blocks differ by position
    if why:
        raise ConfigError("config_name" if cfg.config_name else "model_type", why)
    positions = max_positions(config)
    if positions is not None and cfg.max_seq_length > positions:
        raise ConfigError("max_seq_length", f"{cfg.max_seq_length} exceeds the model's {positions} positions")
    if cfg.apollo and cfg.layer_list()[-1] != config.num_hidden_layers:
        raise ConfigError("apollo_layers", f"must end at the model's depth {config.num_hidden_layers}, "
                                           f"got {cfg.apollo_layers}")
    return config


def check_vocabulary(cfg: TrainConfig, config, n: int) -> bool:
    """Refuse a tokenizer larger than an explicitly sized model (unless resizing is asked for).

    Called before any data work with the named tokenizer's size or the size a local tokenizer is
    trained to, and again with the trained tokenizer. True if the config's vocab_size is explicit.
    """
    explicit = bool(cfg.config_name or "vocab_size" in (cfg.config_overrides or ""))
    if n > config.vocab_size and explicit and not cfg.resize_token_embeddings:
        flag = "tokenizer_name" if cfg.tokenizer_name else "tokenizer_vocab_size"
        raise ConfigError(flag, f"tokenizer has {n} tokens but the model's vocab_size is {config.vocab_size}; "
                                f"pass --resize_token_embeddings to grow the embeddings")
    return explicit


def fit_vocabulary(cfg: TrainConfig, config, tokenizer) -> None:
    """Size the embeddings for the tokenizer: set for a new config, checked for a named one."""
    n = len(tokenizer)
    explicit = check_vocabulary(cfg, config, n)
    if not explicit or n > config.vocab_size:
        config.vocab_size = n
    for role, token in kind_of(cfg.model_type).ids_from_tokenizer.items():  # the config's ids are the tokenizer's
        setattr(config, f"{role}_token_id", getattr(tokenizer, f"{token}_token_id"))

