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
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .numeric import is_number
from .seeds import MAX_SEED
from .yaml_reader import read_yaml, yaml_load, yaml_problem


# ----------------------------------------------------------------------------------------------- bounds
# Each field may declare, next to its default, what values it takes (checked by validate(), one pass over every
# section) and whether a resumed run may change it (kept on resume: the checkpoint's model or features depend on it).
def setting(default: Any = dataclasses.MISSING, *, factory: Any = None, ge: float | None = None,
            gt: float | None = None, le: float | None = None, lt: float | None = None,
            choices: tuple[str, ...] | None = None, pattern: str | None = None, length: int | None = None,
            min_length: int | None = None, items: dict[str, float] | None = None, pattern_help: str | None = None,
            aliases: dict[str, str] | None = None, kept_on_resume: bool = False) -> Any:
    """A config field with its bounds: ``ge``/``gt``/``le``/``lt`` for a number (``items`` for each number of a
    list), ``choices`` or a regular expression ``pattern`` for a string, ``length``/``min_length`` for a list.
    ``aliases`` maps old names of choices to their names now: a file (or a checkpoint's config) that says the old
    name still loads, as the new one."""
    rules = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices, pattern=pattern, length=length,
                                   min_length=min_length, items=items, pattern_help=pattern_help,
                                   aliases=aliases).items()
             if v is not None}
    metadata = {"rules": rules, "kept_on_resume": kept_on_resume}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def kept_on_resume(default: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """A setting that a resumed run cannot change (the model's shape, the features, the data split)."""
    return setting(default, kept_on_resume=True, **rules)


# The validation diagonality an adapter reads (one word for each across config, code and docs): teacher-forced, free-
# running (EvalStats.diagonality, EvalStats.free_running_diagonality), or the worse of the two.
DIAGONALITIES = ("teacher_forced", "free_running", "worse")
OLD_DIAGONALITY_NAMES = {"diagonality": "teacher_forced", "infer_diagonality": "free_running"}  # until 2026-12-03

# Keys renamed since a file or a checkpoint's config may have been written: the old key still loads, as the new one
# (giving both is an error). The one table: the config sections, --set, resumed checkpoints and search spaces read it.
RENAMED_KEYS = {"data.val_infer": "data.free_running_sentences"}  # until 2026-12-08


def current_key(key: str) -> str:
    """The dotted config key ``key`` is now (itself, unless it is in :data:`RENAMED_KEYS`)."""
    return RENAMED_KEYS.get(key, key)


def with_current_keys(overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of nested ``overrides`` (a config file's mapping) with renamed keys under their names now."""
    current = copy.deepcopy(overrides)
    for old, new in RENAMED_KEYS.items():
        *parents, old_name = old.split(".")
        section = current
        for part in parents:
            section = section.get(part) if isinstance(section, dict) else None
        if not isinstance(section, dict) or old_name not in section:
            continue
        new_name = new.rpartition(".")[2]  # a rename within its section
        if new_name in section:
            raise ConfigError(f"{old} is the old name of {new}: give only {new}")
        section[new_name] = section.pop(old_name)
    return current


_OPS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"), "le": (lambda v, b: v <= b, "<="),
        "lt": (lambda v, b: v < b, "<")}


def _check_number(key: str, value: Any, rules: dict[str, Any]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    for name, (ok, sign) in _OPS.items():
        if name in rules and not ok(value, rules[name]):
            bound = rules[name]
            raise ConfigError(f"{key}: {value!r} must be {sign} {bound if isinstance(bound, int) else f'{bound:g}'}")


def _check_field(key: str, value: Any, rules: dict[str, Any]) -> None:
    if value is None:
        return
    if isinstance(value, list):
        if "length" in rules and len(value) != rules["length"]:
            raise ConfigError(f"{key}: {value!r} must hold {rules['length']} values")
        if "min_length" in rules and len(value) < rules["min_length"]:
            raise ConfigError(f"{key}: {value!r} must hold at least {rules['min_length']} value(s)")
        for i, item in enumerate(value):
            if is_number(item):
                _check_number(f"{key}[{i}]", item, rules.get("items", {}))
    elif is_number(value):
        _check_number(key, value, rules)
    elif isinstance(value, str):
        if "choices" in rules and value not in rules["choices"]:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(rules['choices'])}")
        if "pattern" in rules and not re.fullmatch(rules["pattern"], value):
            raise ConfigError(f"{key}: {value!r} is not valid (expected {rules['pattern_help']})"
                              if "pattern_help" in rules else f"{key}: {value!r} does not match {rules['pattern']}")


def fields_of(obj: Any, prefix: str = "") -> list[tuple[str, Any, dataclasses.Field]]:
    """Every leaf field of a config (or section): (dotted key, value, its dataclass field)."""
    found = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            found += fields_of(value, f"{prefix}{f.name}.")
        else:
            found.append((f"{prefix}{f.name}", value, f))
    return found


@dataclass
class DataConfig:
    corpus: str | None = kept_on_resume(None)  # LJSpeech-format dir; None builds and uses the demo corpus
    # language of the demo corpus when no corpus is given: en | ru
    demo_lang: str = kept_on_resume("en", choices=("en", "ru"))
    demo_size: int = kept_on_resume(400, ge=1)  # sentences in the demo corpus
    # Words per demo utterance [low, high]; above the default, utterances of several sentences (harder alignment)
    demo_words: list[int] = kept_on_resume(factory=lambda: [3, 12], length=2, items={"ge": 1, "le": 200})
    lowercase: bool = kept_on_resume(True)  # lowercase texts before building the symbol table
    max_bad_share: float = setting(0.1, ge=0, le=1)  # refuse a corpus with more bad lines than this share
    val_size: int = kept_on_resume(16, ge=1)  # utterances held out for validation
    free_running_sentences: int = setting(4, ge=0)  # validation sentences decoded free-running too, each evaluation
    split_seed: int = kept_on_resume(1234)  # which utterances are held out
    cache_dir: str | None = None  # feature cache; default <corpus>/.smart_tuner_cache
    max_frames: int = kept_on_resume(1000, ge=1)  # utterances with more mel frames are skipped (and reported)
    # Static shapes: pad every batch's frames and text to one of at most this many lengths (quantiles of the
    # training set's lengths), so that compiled or captured code is reused; 0: pad to each batch's longest item.
    length_grid: int = setting(0, ge=0)
    # text normalizer: basic (any script) | english (NVIDIA's English cleaning)
    cleaner: str = kept_on_resume("basic", choices=("basic", "english"))
    # What the model reads: characters (of the cleaned text) | phonemes (eSpeak NG's, with stress marks, word
    # boundaries and punctuation; docs/corpus.md)
    text: str = kept_on_resume("characters", choices=("characters", "phonemes"))
    # eSpeak NG voice of the corpus's language for phonemes (en-us, en-gb, ru, de, ...); empty: the demo corpus's
    # (en -> en-us, ru -> ru), which a corpus of your own must set
    phoneme_language: str = kept_on_resume("", pattern=r"[a-z]{2,3}(-[a-z0-9]+)*|",
                                           pattern_help="an eSpeak NG voice name such as en-us or ru")
    # Share of the words of each training text read as their CMU dictionary ARPAbet ({HH AH0 L OW1}), drawn anew
    # each epoch (NVIDIA's p_arpabet; English characters only); above 0 the symbol table holds the ARPAbet symbols
    p_arpabet: float = kept_on_resume(0.0, ge=0, le=1)
    # Standardize each mel channel with the training set's mean and std; false: the model predicts log-mels as
    # computed (NVIDIA / HiFi-GAN / WaveGlow convention), as a converted NVIDIA checkpoint does.
    mel_standardize: bool = kept_on_resume(True)


@dataclass
class AudioConfig:
    sample_rate: int = kept_on_resume(22050, ge=1000, le=192000)  # Hz; audio is resampled to it
    n_fft: int = kept_on_resume(1024, ge=16)  # FFT size
    hop_length: int = kept_on_resume(256, ge=1)  # samples between frames
    win_length: int = kept_on_resume(1024, ge=1)  # Hann window length
    n_mels: int = kept_on_resume(80, ge=1)  # mel channels (Slaney mel scale and area normalization)
    fmin: float = kept_on_resume(0.0, ge=0)  # lowest mel frequency, Hz
    fmax: float = kept_on_resume(8000.0, gt=0)  # highest mel frequency, Hz
    trim_db: float = kept_on_resume(40.0, gt=0)  # leading/trailing audio quieter than peak - trim_db is cut


@dataclass
class ModelConfig:
    # the model family (smart_tuner.tts); the sizes below are its hyperparameters
    family: str = kept_on_resume("tacotron2")
    embedding_dim: int = kept_on_resume(512, ge=1)  # character embedding size
    encoder_conv_layers: int = kept_on_resume(3, ge=1)  # encoder convolutions
    encoder_kernel: int = kept_on_resume(5, ge=1)  # their kernel size
    encoder_channels: int = kept_on_resume(512, ge=1)  # their channels
    encoder_lstm_dim: int = kept_on_resume(256, ge=1)  # per direction
    encoder_dropout: float = kept_on_resume(0.5, ge=0, lt=1)  # after each encoder convolution
    attention_rnn_dim: int = kept_on_resume(1024, ge=1)  # attention LSTM size
    decoder_rnn_dim: int = kept_on_resume(1024, ge=1)  # decoder LSTM size
    attention_dim: int = kept_on_resume(128, ge=1)  # attention projection size
    location_filters: int = kept_on_resume(32, ge=1)  # location-sensitive attention filters
    location_kernel: int = kept_on_resume(31, ge=1)  # their kernel size
    attention_dropout: float = kept_on_resume(0.1, ge=0, lt=1)  # on the attention LSTM output
    decoder_dropout: float = kept_on_resume(0.1, ge=0, lt=1)  # on the decoder LSTM output
    prenet_dims: list[int] = kept_on_resume(factory=lambda: [256, 256], min_length=1, items={"ge": 1})
    prenet_dropout: float = kept_on_resume(0.5, ge=0, lt=1)  # kept on at inference too (Tacotron 2)
    postnet_channels: int = kept_on_resume(512, ge=1)  # postnet channels
    postnet_kernel: int = kept_on_resume(5, ge=1)  # postnet kernel size
    postnet_layers: int = kept_on_resume(5, ge=1)  # postnet convolutions
    postnet_dropout: float = kept_on_resume(0.5, ge=0, lt=1)  # postnet dropout
    r: int = kept_on_resume(1, ge=1)  # mel frames emitted per decoder step
    max_decoder_steps: int = kept_on_resume(1000, ge=1)  # free-running bound
    gate_threshold: float = kept_on_resume(0.5, gt=0, le=1)  # stop when the gate probability exceeds this


@dataclass
class LossConfig:
    ga_weight: float = setting(2.0, ge=0)  # guided-attention weight (the adapters may change it between steps)
    ga_sigma: float = setting(0.2, gt=0)  # g in W[n,t] = 1 - exp(-(n/N - t/T)^2 / (2 g^2))
    gate_pos_weight: float = setting(5.0, gt=0)  # BCE positive-class weight: one stop frame per utterance


@dataclass
class TrainConfig:
    lr: float = setting(1e-3, gt=0)  # AdamW learning rate
    batch_size: int = setting(16, ge=1)  # utterances per batch (length-bucketed)
    max_steps: int = setting(1000, ge=0)  # optimizer steps
    eval_every: int = setting(50, ge=1)  # steps between evaluations
    checkpoint_every: int = setting(0, ge=0)  # 0: at every evaluation
    seed: int = setting(0, ge=0, le=MAX_SEED)  # seeds torch, the batch order and dropout
    weight_decay: float = setting(1e-6, ge=0)  # AdamW weight decay
    grad_clip: float = setting(1.0, gt=0)  # gradient norm clip
    adam_betas: list[float] = setting(factory=lambda: [0.9, 0.999], length=2, items={"ge": 0, "lt": 1})  # AdamW betas
    device: str = setting("auto", pattern=r"auto|cpu|cuda(:[0-9]+)?",
                                  pattern_help="auto, cpu, cuda or cuda:N")  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # bf16 autocast on CUDA; CPU always runs fp32
    # How the model computes a training forward: fast (the teacher-forced decoder with state-free work out of its
    # loop), stepwise (every step's work inside the loop, for comparison; both are eager PyTorch, so "eager" until
    # 2026-12-08 named nothing), auto (the fastest correct one on the device: fast).
    execution: str = setting("auto", choices=("auto", "fast", "stepwise"), aliases={"eager": "stepwise"})
    num_threads: int = setting(0, ge=0)  # torch CPU threads; 0: a share of the cores among smart_tuner processes
    # Warm start: model weights only (fresh optimizer, step 0) from a smart_tuner or NVIDIA checkpoint.
    init_from: str | None = None
    init_ignore: list[str] = field(default_factory=list)  # regular expressions of parameter names not to load
    # A warm start bringing learned values to less than this share of the parameters is an error (0: any share)
    init_min_share: float = setting(0.5, ge=0, le=1)
    freeze_modules: list[str] = field(default_factory=list)  # parameter-name prefixes kept fixed at first
    freeze_steps: int = setting(0, ge=0)  # how many steps they stay fixed
    dist_timeout: float = setting(600.0, gt=0)  # several ranks: seconds a rank waits for the others before failing


@dataclass
class LrAdapterConfig:
    """Learning-rate adapter: plateau (torch's ReduceLROnPlateau semantics), emergency, recovery."""

    enabled: bool = True  # learning-rate adapter on
    patience: int = setting(10, ge=0)  # evaluations without improvement of the validation loss before a reduction
    factor: float = setting(0.5, gt=0, lt=1)  # plateau reduction
    threshold: float = setting(1e-4, ge=0)  # relative improvement that counts (torch's threshold_mode="rel")
    cooldown: int = setting(0, ge=0)  # evaluations to wait after a reduction
    # Plateau counting starts at the first evaluation whose diagonality reaches this (0: from the first one):
    # before attention aligns, the validation loss often rises while the model learns to use it.
    plateau_from_diagonality: float = setting(0.5, ge=0, le=1)
    min_lr: float = setting(1e-8, ge=0)  # lower bound of the rate
    max_lr: float = setting(0.0, ge=0)  # upper bound (of every rule, the raise below too); 0: twice train.lr
    # The weights' relative change per step (EvalStats.weight_change) says whether the rate is in range: above
    # weight_change_high (at any time) it is far too large (multiplied by emergency_factor, and a rollback), below
    # weight_change_low before alignment (see plateau_from_diagonality) far too small (x raise_factor, <= max_lr).
    weight_change_high: float = setting(0.04, gt=0)
    weight_change_low: float = setting(8e-4, ge=0)  # 0: never raise
    raise_factor: float = setting(4.0, ge=1)  # of the too-small rule and the free-running lag rule
    # Free-running lag: teacher-forced diagonality above free-running by lag_gap or more for lag_patience evaluations
    # in a row raises the rate by raise_factor (up to max_lr). 0: off.
    lag_gap: float = setting(0.5, ge=0, le=1)
    lag_patience: int = setting(2, ge=1)  # evaluations in a row of such a lag before the rate is raised
    # multiplies the rate on a non-finite loss, a huge loss or gradient
    emergency_factor: float = setting(0.1, gt=0, lt=1)
    loss_limit: float = setting(1e6, gt=0)  # a loss above this is an emergency
    grad_limit: float = setting(1000.0, gt=0)  # a gradient norm (before clipping) above this is an emergency
    max_emergencies: int = setting(3, ge=1)  # consecutive emergencies before a rollback is asked for
    recovery_steps: int = setting(50, ge=1)  # healthy steps before each climb back toward the rate before the emergency
    recovery_factor: float = setting(2.0, gt=1)  # each climb multiplies the rate by this, up to its pre-emergency value


@dataclass
class GaAdapterConfig:
    """Guided-attention weight adapter, driven by validation diagonality at each evaluation."""

    enabled: bool = True  # guided-attention weight adapter on
    # The diagonality it reads: teacher_forced | free_running | worse (the lower of the two: a model that aligns
    # teacher-forced but cannot speak free-running still counts as misaligned)
    metric: str = setting("teacher_forced", choices=DIAGONALITIES, aliases=OLD_DIAGONALITY_NAMES)
    critical: float = setting(0.1, ge=0, le=1)  # below this diagonality: critical_boost
    critical_boost: float = setting(2.0, ge=1)  # weight multiplier when critical
    critical_cap: float = setting(20.0, ge=0)  # highest weight a critical boost reaches
    low: float = setting(0.3, ge=0, le=1)  # below this diagonality: low_boost
    low_boost: float = setting(1.2, ge=1)  # weight multiplier when low
    low_cap: float = setting(10.0, ge=0)  # highest weight a low boost reaches
    high: float = setting(0.7, ge=0, le=1)  # above this diagonality: decay
    decay: float = setting(0.95, gt=0, le=1)  # weight multiplier when aligned
    floor: float = setting(1.0, ge=0)  # the decay stops here; a lower weight is raised to it when diagonality is low


@dataclass
class CollapseAdapterConfig:
    """Attention collapse: an aligned run whose diagonality falls below ``low`` rolls back (and the rate is cut)."""

    enabled: bool = True  # attention-collapse adapter on
    # The diagonality it watches: teacher_forced | free_running | worse (the lower of the two)
    metric: str = setting("teacher_forced", choices=DIAGONALITIES, aliases=OLD_DIAGONALITY_NAMES)
    high: float = setting(0.7, ge=0, le=1)  # the run counts as aligned from an evaluation at or above this
    low: float = setting(0.3, ge=0, le=1)  # an aligned run below this has collapsed


@dataclass
class GradAdapterConfig:
    """Gradient health: vanishing gradients trigger a rollback (non-finite ones are never applied)."""

    enabled: bool = True  # gradient-health adapter on
    vanish_eps: float = setting(1e-8, ge=0)  # a gradient norm below this counts as vanished
    vanish_patience: int = setting(10, ge=1)  # consecutive steps with a gradient norm below vanish_eps


@dataclass
class AdaptersConfig:
    lr: LrAdapterConfig = field(default_factory=LrAdapterConfig)
    ga: GaAdapterConfig = field(default_factory=GaAdapterConfig)
    collapse: CollapseAdapterConfig = field(default_factory=CollapseAdapterConfig)
    grad: GradAdapterConfig = field(default_factory=GradAdapterConfig)
    max_rollbacks: int = setting(3, ge=0)  # a run that needs more rollbacks ends as failed


@dataclass
class FaultsConfig:
    """Deliberate faults, to test the adapters and a set-up: 1-based steps."""

    nan_loss_at: list[int] = setting(factory=list, items={"ge": 1})  # steps (1-based) whose loss is made NaN
    inf_grad_at: list[int] = setting(factory=list, items={"ge": 1})  # steps whose gradients are made infinite
    hang_at: list[int] = setting(factory=list, items={"ge": 1})  # steps at which the process hangs (sleeps)
    # Steps after whose update every weight gets Gaussian noise of perturb_scale x its tensor's standard deviation:
    # a trained run knocked off its alignment (a collapse), for the rescue benchmark.
    perturb_at: list[int] = setting(factory=list, items={"ge": 1})
    perturb_scale: float = setting(1.0, ge=0)  # that noise, in units of each weight tensor's standard deviation
    rank: int = setting(-1, ge=-1)  # with several ranks, the one the faults happen on; -1: every rank


@dataclass
class TelegramConfig:
    token: str | None = None  # secret: prefer SMART_TUNER_TELEGRAM_TOKEN; never written anywhere
    chat_id: str | None = None  # or SMART_TUNER_TELEGRAM_CHAT_ID
    api_url: str | None = None  # or SMART_TUNER_TELEGRAM_API_URL; default https://api.telegram.org
    summary_every: int = setting(10, ge=0)  # evaluations between summary messages; 0: none
    send_photos: bool = True  # alignment images with summaries and emergencies
    timeout: float = setting(10.0, gt=0)  # seconds per HTTP request
    max_retries: int = setting(4, ge=0)  # per message, for 429 and 5xx answers and network errors
    queue_size: int = setting(64, ge=1)  # pending messages; when full, new alerts are dropped with a log line


@dataclass
class AlertsConfig:
    telegram: TelegramConfig = field(default_factory=TelegramConfig)


@dataclass
class DebugConfig:
    enabled: bool = True  # debug reporter on
    buffer_steps: int = setting(200, ge=1)  # steps kept in the ring buffer
    max_bundles: int = setting(20, ge=0)  # debug bundles written per run at most


@dataclass
class TrackingConfig:
    """MLflow tracking of a run (the store comes from --tracking-uri / MLFLOW_TRACKING_URI, never from here:
    a server URL may hold credentials)."""

    # Log the run to MLflow (store: --tracking-uri, MLFLOW_TRACKING_URI, else sqlite:///mlflow/mlflow.db)
    enabled: bool = True
    experiment: str = ""  # MLflow experiment of `train` runs; "": the source study's name, else "train"
    log_every: int = setting(10, ge=1)  # steps per batched metric write
    log_checkpoint: bool = True  # upload the run's best checkpoint at its end (`train` runs)
    source_study: str = ""  # set by `best` / `train --from-study`: where this config came from (run tags)
    source_trial: int = -1  # set with it: the trial number


@dataclass
class VocoderConfig:
    """The vocoder of the previews (MLflow, optuna-dashboard, the report): Griffin-Lim unless a HiFi-GAN generator
    checkpoint is named (its sampling rate, hop and mel count must be audio's)."""

    checkpoint: str | None = None  # a jik876/hifi-gan generator checkpoint (g_XXXXXXXX); None: Griffin-Lim
    config: str | None = None  # its config.json; None: the one beside the checkpoint


@dataclass
class Config:
    preset: str = "demo"  # demo (small, CPU) or tacotron2 (the paper's sizes, GPU)
    data: DataConfig = field(default_factory=DataConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adapters: AdaptersConfig = field(default_factory=AdaptersConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for config.yaml, checkpoints and trackers: secrets are left out."""
        data = dataclasses.asdict(self)
        data["alerts"]["telegram"]["token"] = None
        return data


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

CONFIG_SECTIONS = ("data", "audio", "model", "loss", "train", "adapters", "faults", "alerts", "debug", "tracking",
                   "vocoder")


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
    """Set the fields of dataclass ``obj`` (dotted name ``section``) from a mapping; nested sections recurse."""
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a mapping of keys to values, got {_describe(values)}")
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    names = list(fields)
    for name, value in values.items():
        key = f"{section}.{name}"
        if name not in names:
            raise ConfigError(f"unknown key {key!r}; known keys in {section!r}: {', '.join(names)}")
        if dataclasses.is_dataclass(hints[name]):
            _apply_section(getattr(obj, name), key, value)
        else:
            setattr(obj, name, current_name(fields[name], _coerce(key, value, hints[name])))


def current_name(f: dataclasses.Field, value: Any) -> Any:
    """``value`` with an old name of a choice replaced by its name now (``aliases`` of :func:`setting`)."""
    aliases = f.metadata.get("rules", {}).get("aliases", {})
    return aliases.get(value, value) if isinstance(value, str) else value


def config_keys(obj: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key of the config, e.g. ``adapters.lr.patience`` (for docs and search-space checks)."""
    obj = obj if obj is not None else Config()
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += config_keys(value, f"{prefix}{f.name}.")
        elif f.name != "preset":
            keys.append(f"{prefix}{f.name}")
    return keys


def build_config(overrides: dict[str, Any] | None = None) -> Config:
    """Preset defaults, then ``overrides`` (a mapping like a YAML config file)."""
    overrides = copy.deepcopy(overrides or {})
    if not isinstance(overrides, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {_describe(overrides)}")
    overrides = with_current_keys(overrides)
    preset = overrides.pop("preset", "demo")
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = Config(preset=preset)
    for layer in (PRESETS[preset], overrides):
        for section, values in layer.items():
            if section not in CONFIG_SECTIONS:
                raise ConfigError(
                    f"unknown section {section!r}; known sections: preset, {', '.join(CONFIG_SECTIONS)}"
                )
            _apply_section(getattr(config, section), section, values)
    validate(config)
    return config


def validate(config: Config) -> None:
    """One pass over every field's declared bounds (:func:`setting`), then the checks that tie fields together."""
    for key, value, f in fields_of(config):
        _check_field(key, value, f.metadata.get("rules", {}))
    checks = [
        (config.audio.fmin < config.audio.fmax, "audio.fmin must be < audio.fmax"),
        (config.data.demo_words[0] <= config.data.demo_words[1] and config.data.demo_words[1] >= 3,
         "data.demo_words must be [low, high] with low <= high and high >= 3"),
        (not config.train.freeze_modules or config.train.freeze_steps > 0,
         "train.freeze_modules needs train.freeze_steps > 0 (how many steps they stay fixed)"),
        (config.audio.fmax <= config.audio.sample_rate / 2, "audio.fmax must be <= audio.sample_rate / 2"),
        (config.audio.win_length <= config.audio.n_fft, "audio.win_length must be <= audio.n_fft"),
        (config.adapters.lr.max_lr == 0 or config.adapters.lr.max_lr >= config.adapters.lr.min_lr,
         "adapters.lr.max_lr must be 0 (twice train.lr) or >= adapters.lr.min_lr"),
        (config.adapters.lr.max_lr == 0 or config.adapters.lr.max_lr >= config.train.lr,
         f"adapters.lr.max_lr ({config.adapters.lr.max_lr:g}) is below train.lr ({config.train.lr:g}): raise it, or "
         "set it to 0 (twice train.lr)"),
        (config.adapters.ga.critical <= config.adapters.ga.low <= config.adapters.ga.high,
         "adapters.ga thresholds must satisfy critical <= low <= high"),
        (config.adapters.collapse.low < config.adapters.collapse.high,
         "adapters.collapse thresholds must satisfy low < high"),
        (config.data.p_arpabet == 0 or config.data.text == "characters",
         "data.p_arpabet mixes ARPAbet into character text: set data.text: characters, or data.p_arpabet: 0"),
        *((not (adapter.enabled and adapter.metric == "free_running") or config.data.free_running_sentences > 0,
           f"adapters.{name}.metric: free_running reads the free-running diagonality, which "
           "data.free_running_sentences: 0 does not measure: decode some validation sentences "
           "(data.free_running_sentences >= 1) or choose teacher_forced or worse")
          for name, adapter in (("ga", config.adapters.ga), ("collapse", config.adapters.collapse))),
        (config.data.text != "phonemes" or config.data.phoneme_language or not config.data.corpus,
         "data.text: phonemes needs data.phoneme_language, the eSpeak NG voice of the corpus's language "
         "(e.g. en-us or ru)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


DEMO_VOICES = {"en": "en-us", "ru": "ru"}  # the eSpeak NG voice of each demo corpus language


def phoneme_voice(data: DataConfig) -> str | None:
    """The eSpeak NG voice the model reads phonemes of, or None when it reads characters."""
    if data.text != "phonemes":
        return None
    return data.phoneme_language or DEMO_VOICES[data.demo_lang]


def resume_changes(saved: dict[str, Any], config: Config) -> tuple[list[str], list[str]]:
    """How ``config`` differs from the config a checkpoint was saved with: (changes a resumed run cannot make,
    because the model or its features depend on them; changes it applies), each as ``key: old -> new``."""
    old = {current_key(key): value for key, value in flatten(saved).items()}
    cannot, applied = [], []
    for key, value, f in fields_of(config):
        if key.startswith("alerts.telegram.token") or key not in old or old[key] == value:
            continue
        if current_name(f, old[key]) == value:  # an old name of the same choice
            continue
        (cannot if f.metadata.get("kept_on_resume") else applied).append(f"{key}: {old[key]!r} -> {value!r}")
    return cannot, applied


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
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({yaml_problem(exc)})") from None
        if key == "preset":
            nested["preset"] = value
            continue
        parts = key.split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: keys look like section.name, e.g. train.lr or adapters.lr.patience")
        try:
            set_dotted(nested, key, value)
        except ValueError as exc:
            raise ConfigError(f"--set {item!r}: {exc}") from None
    return with_current_keys(nested)


def set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` (``"train.lr"``) in a nested mapping, making the sections on the way."""
    *parents, name = key.split(".")
    for part in parents:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ValueError(f"{part!r} is set both as a value and as a section")
    target[name] = value


def nest(key: str, value: Any) -> dict[str, Any]:
    """``("train.lr", 0.01)`` -> ``{"train": {"lr": 0.01}}``."""
    nested: dict[str, Any] = {}
    set_dotted(nested, key, value)
    return nested


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of two override mappings; ``extra`` wins."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


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
    try:
        return with_current_keys(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


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


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and other leaves stay as they are."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
