"""The one config module: typed dataclasses, presets, YAML files and dotted ``--set`` overrides.

A config is plain data. A YAML file holds a preset name plus overrides, section by section::

    preset: demo
    train: {lr: 0.001, batch_size: 16}
    loss: {ga_weight: 5.0}

An objective file (``objectives/*.yaml``) holds the same mapping under its ``config:`` key, next to the
search space; :func:`load_config_file` reads either. Every key is checked against the dataclasses: an unknown
key or a value of the wrong type raises :class:`ConfigError` naming the dotted key (and the file).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message says which and what to do."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; hyperparameters are written that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with exponent floats; the only YAML reader of the project."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


@dataclass
class DataConfig:
    corpus: str | None = None  # LJSpeech-format dir; None builds and uses the demo corpus
    demo_lang: str = "en"  # language of the demo corpus when no corpus is given: en | ru
    demo_size: int = 400  # sentences in the demo corpus
    lowercase: bool = True  # lowercase texts before building the symbol table
    max_bad_share: float = 0.1  # refuse a corpus with more bad lines than this share
    val_size: int = 16  # utterances held out for validation
    val_infer: int = 4  # validation sentences also decoded free-running at each evaluation
    split_seed: int = 1234  # which utterances are held out
    cache_dir: str | None = None  # feature cache; default <corpus>/.smart_tuner_cache
    max_frames: int = 1000  # utterances with more mel frames are skipped (and reported)


@dataclass
class AudioConfig:
    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    trim_db: float = 40.0  # leading/trailing audio quieter than peak - trim_db is cut


@dataclass
class ModelConfig:
    embedding_dim: int = 512
    encoder_conv_layers: int = 3
    encoder_kernel: int = 5
    encoder_channels: int = 512
    encoder_lstm_dim: int = 256  # per direction
    encoder_dropout: float = 0.5
    attention_rnn_dim: int = 1024
    decoder_rnn_dim: int = 1024
    attention_dim: int = 128
    location_filters: int = 32
    location_kernel: int = 31
    attention_dropout: float = 0.1
    decoder_dropout: float = 0.1
    prenet_dims: list[int] = field(default_factory=lambda: [256, 256])
    prenet_dropout: float = 0.5  # kept on at inference too (Tacotron 2)
    postnet_channels: int = 512
    postnet_kernel: int = 5
    postnet_layers: int = 5
    postnet_dropout: float = 0.5
    r: int = 1  # mel frames emitted per decoder step
    max_decoder_steps: int = 1000
    gate_threshold: float = 0.5


@dataclass
class LossConfig:
    ga_weight: float = 2.0  # guided-attention weight (the adapters may change it between steps)
    ga_sigma: float = 0.2  # g in W[n,t] = 1 - exp(-(n/N - t/T)^2 / (2 g^2))
    gate_pos_weight: float = 5.0  # BCE positive-class weight: one stop frame per utterance


@dataclass
class TrainConfig:
    lr: float = 1e-3
    batch_size: int = 16
    max_steps: int = 1000
    eval_every: int = 50
    checkpoint_every: int = 0  # 0: at every evaluation
    seed: int = 0
    weight_decay: float = 1e-6
    grad_clip: float = 1.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # bf16 autocast on CUDA; CPU always runs fp32
    num_threads: int = 0  # torch CPU threads; 0: all cores


@dataclass
class Config:
    preset: str = "demo"
    data: DataConfig = field(default_factory=DataConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Presets are overrides on the dataclass defaults (which are the paper's sizes).
PRESETS: dict[str, dict[str, Any]] = {
    # Small enough to align within a few hundred steps on 2 CPU cores (about 0.8M parameters).
    "demo": {
        "model": {
            "embedding_dim": 64,
            "encoder_channels": 64,
            "encoder_lstm_dim": 32,
            "attention_rnn_dim": 128,
            "decoder_rnn_dim": 128,
            "attention_dim": 64,
            "location_filters": 16,
            "location_kernel": 31,
            "prenet_dims": [64, 64],
            "postnet_channels": 128,
            "r": 4,
            "max_decoder_steps": 250,
        },
        "train": {"lr": 1e-3, "batch_size": 16, "max_steps": 600, "eval_every": 25},
        "loss": {"ga_weight": 2.0, "ga_sigma": 0.2},
    },
    # Tacotron 2 as published (Shen et al. 2018), for GPUs.
    "tacotron2": {
        "model": {"r": 1, "max_decoder_steps": 1000},
        "train": {"lr": 1e-3, "batch_size": 64, "max_steps": 100000, "eval_every": 1000},
        "loss": {"ga_weight": 2.0, "ga_sigma": 0.2},
    },
}

SECTIONS = ("data", "audio", "model", "loss", "train")


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type ``hint`` of dotted ``key``; return it converted (int -> float only)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_describe(value)}")
        return [_coerce(f"{key}[{i}]", v, item_hint) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}")  # a bug in this module, not in the user's file


def _apply_section(obj: Any, section: str, values: Any) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a mapping of keys to values, got {_describe(values)}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for name, value in values.items():
        key = f"{section}.{name}"
        if name not in names:
            raise ConfigError(f"unknown key {key!r}; known keys in {section!r}: {', '.join(names)}")
        setattr(obj, name, _coerce(key, value, hints[name]))


def build_config(overrides: dict[str, Any] | None = None) -> Config:
    """Preset defaults, then ``overrides`` (a mapping like a YAML config file)."""
    overrides = copy.deepcopy(overrides or {})
    if not isinstance(overrides, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {_describe(overrides)}")
    preset = overrides.pop("preset", "demo")
    if preset not in PRESETS:
        raise ConfigError(f"preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = Config(preset=preset)
    for layer in (PRESETS[preset], overrides):
        for section, values in layer.items():
            if section not in SECTIONS:
                raise ConfigError(
                    f"unknown section {section!r}; known sections: preset, {', '.join(SECTIONS)}"
                )
            _apply_section(getattr(config, section), section, values)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Cross-field checks that a type alone cannot express."""
    checks = [
        (config.train.lr > 0, "train.lr must be > 0"),
        (config.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (config.train.max_steps >= 0, "train.max_steps must be >= 0"),
        (config.train.eval_every >= 1, "train.eval_every must be >= 1"),
        (config.train.checkpoint_every >= 0, "train.checkpoint_every must be >= 0"),
        (config.train.grad_clip > 0, "train.grad_clip must be > 0"),
        (len(config.train.adam_betas) == 2, "train.adam_betas must hold two numbers"),
        (config.model.r >= 1, "model.r must be >= 1"),
        (len(config.model.prenet_dims) >= 1, "model.prenet_dims must hold at least one size"),
        (config.loss.ga_weight >= 0, "loss.ga_weight must be >= 0"),
        (config.loss.ga_sigma > 0, "loss.ga_sigma must be > 0"),
        (0 <= config.data.max_bad_share <= 1, "data.max_bad_share must be within [0, 1]"),
        (config.data.val_size >= 1, "data.val_size must be >= 1"),
        (config.data.demo_lang in ("en", "ru"), "data.demo_lang must be en or ru"),
        (config.audio.fmax <= config.audio.sample_rate / 2, "audio.fmax must be <= audio.sample_rate / 2"),
        (config.audio.win_length <= config.audio.n_fft, "audio.win_length must be <= audio.n_fft"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def parse_set_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-3", "model.prenet_dims=[32, 32]"]`` -> nested mapping; values are YAML scalars."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=0.001")
        try:
            value = yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
        if key == "preset":
            nested["preset"] = value
            continue
        parts = key.split(".")
        if len(parts) != 2:
            raise ConfigError(f"--set {item!r}: keys look like section.name, e.g. train.lr")
        nested.setdefault(parts[0], {})[parts[1]] = value
    return nested


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Section-wise merge of two override mappings; ``extra`` wins."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        return yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def config_overrides_from_file(path: str | Path) -> dict[str, Any]:
    """The training part of a plain config file or of an objective file (its ``config:`` key)."""
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    if "config" in data:
        data = data["config"] or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: 'config' must be a mapping of sections")
    return data


def load_config_file(path: str | Path, sets: list[str] | None = None) -> Config:
    """Read a config (or objective) file, apply ``--set`` items, and check everything."""
    overrides = config_overrides_from_file(path)
    try:
        build_config(overrides)  # the file alone first, so that its errors name the file
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return build_config(merge(overrides, parse_set_overrides(sets or [])))
    except ConfigError as exc:
        raise ConfigError(f"--set: {exc}" if not str(exc).startswith("--set") else str(exc)) from None


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a config saved with :meth:`Config.to_dict` (for example from a checkpoint)."""
    return build_config(data)
