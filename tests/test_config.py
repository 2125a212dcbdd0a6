"""Tests for smart_tuner.config: typed sections, presets, YAML files and ``--set`` overrides."""

from __future__ import annotations

import dataclasses

import pytest

from smart_tuner.config import (
    PRESETS,
    Config,
    ConfigError,
    TrainConfig,
    build_config,
    from_dict,
    load_config_file,
    merge,
    parse_set_overrides,
)


def count_parameters(config: Config) -> int:
    from smart_tuner.tts.tacotron2 import Tacotron2

    model = Tacotron2(n_symbols=40, n_mels=80, cfg=config.model)
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------ unknown names
def test_unknown_key_names_dotted_key_and_lists_known_keys():
    with pytest.raises(ConfigError) as info:
        build_config({"train": {"lrr": 0.01}})
    message = str(info.value)
    assert "train.lrr" in message
    # Every real key of the section is offered, so a typo is easy to fix.
    for name in (f.name for f in dataclasses.fields(TrainConfig)):
        assert name in message
    assert "known keys" in message


def test_unknown_key_in_another_section_names_that_section():
    with pytest.raises(ConfigError, match=r"model\.embeding_dim") as info:
        build_config({"model": {"embeding_dim": 8}})
    assert "embedding_dim" in str(info.value)


def test_unknown_section():
    with pytest.raises(ConfigError) as info:
        build_config({"trian": {"lr": 0.01}})
    message = str(info.value)
    assert "trian" in message
    for section in ("data", "audio", "model", "loss", "train"):
        assert section in message


def test_unknown_preset():
    with pytest.raises(ConfigError) as info:
        build_config({"preset": "huge"})
    message = str(info.value)
    assert "huge" in message
    for name in PRESETS:
        assert name in message


def test_section_that_is_not_a_mapping():
    with pytest.raises(ConfigError, match="train"):
        build_config({"train": [1, 2]})


# ------------------------------------------------------------------------------------ types
@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("train", "lr", "fast", "number"),  # string for a float
        ("train", "batch_size", 16.0, "integer"),  # float for an int
        ("train", "batch_size", "16", "integer"),
        ("train", "bf16", 1, "true or false"),  # int for a bool
        ("train", "bf16", "yes", "true or false"),
        ("model", "prenet_dims", 64, "list"),  # non-list for a list
        ("train", "adam_betas", "0.9, 0.999", "list"),
        ("train", "lr", True, "number"),  # bool is not a number
        ("train", "batch_size", False, "integer"),
        ("train", "device", 0, "string"),
        ("data", "corpus", 5, "string"),  # optional string: None or a string only
    ],
)
def test_wrong_type_is_refused_with_dotted_key(section, key, value, expected):
    with pytest.raises(ConfigError) as info:
        build_config({section: {key: value}})
    message = str(info.value)
    assert f"{section}.{key}" in message
    assert expected in message
    assert repr(value) in message


def test_wrong_item_type_inside_a_list_names_the_index():
    with pytest.raises(ConfigError, match=r"model\.prenet_dims\[1\]"):
        build_config({"model": {"prenet_dims": [64, "wide"]}})
    with pytest.raises(ConfigError, match=r"model\.prenet_dims\[0\]"):
        build_config({"model": {"prenet_dims": [64.0, 64]}})


def test_int_is_coerced_to_float():
    config = build_config({"train": {"lr": 1, "grad_clip": 2}, "loss": {"ga_weight": 0}})
    assert config.train.lr == 1.0 and type(config.train.lr) is float
    assert config.train.grad_clip == 2.0 and type(config.train.grad_clip) is float
    assert config.loss.ga_weight == 0.0 and type(config.loss.ga_weight) is float
    betas = build_config({"train": {"adam_betas": [0, 0]}}).train.adam_betas
    assert betas == [0.0, 0.0] and all(type(b) is float for b in betas)


def test_none_is_accepted_for_optional_keys_only():
    assert build_config({"data": {"corpus": None}}).data.corpus is None
    assert build_config({"data": {"cache_dir": "/tmp/x"}}).data.cache_dir == "/tmp/x"
    with pytest.raises(ConfigError, match=r"train\.lr"):
        build_config({"train": {"lr": None}})


def test_overrides_are_not_mutated():
    overrides = {"preset": "demo", "train": {"lr": 1}}
    build_config(overrides)
    assert overrides == {"preset": "demo", "train": {"lr": 1}}


# ------------------------------------------------------------------------------------ --set
def test_parse_set_overrides_yaml_values():
    nested = parse_set_overrides([
        "train.lr=0.001",
        "train.batch_size=8",
        "train.bf16=false",
        "train.device=cpu",
        "model.prenet_dims=[32, 32]",
        "data.corpus=",
        "preset=tacotron2",
        " loss.ga_weight = 5 ",
    ])
    assert nested == {
        "train": {"lr": 0.001, "batch_size": 8, "bf16": False, "device": "cpu"},
        "model": {"prenet_dims": [32, 32]},
        "data": {"corpus": None},
        "preset": "tacotron2",
        "loss": {"ga_weight": 5},
    }
    assert type(nested["train"]["lr"]) is float
    config = build_config(nested)
    assert config.preset == "tacotron2"
    assert config.model.prenet_dims == [32, 32]
    assert config.train.bf16 is False
    assert config.loss.ga_weight == 5.0


@pytest.mark.parametrize("item", ["train.lr=5e-4", "train.lr=1e-3"])
def test_parse_set_exponent_without_dot_is_a_number(item):
    value = float(item.partition("=")[2])
    assert build_config(parse_set_overrides([item])).train.lr == value


def test_config_file_exponent_without_dot_is_a_number(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train: {lr: 1e-3, weight_decay: 1e-6}\n", encoding="utf-8")
    config = load_config_file(path)
    assert config.train.lr == 1e-3
    assert config.train.weight_decay == 1e-6


def test_parse_set_exponent_with_dot_is_a_number():
    assert build_config(parse_set_overrides(["train.lr=5.0e-4"])).train.lr == 5e-4


def test_parse_set_value_may_contain_equals_sign():
    assert parse_set_overrides(["train.device=a=b"]) == {"train": {"device": "a=b"}}


@pytest.mark.parametrize("item", ["train.lr", "=0.1", "  =0.1"])
def test_parse_set_without_key_value_form(item):
    with pytest.raises(ConfigError) as info:
        parse_set_overrides([item])
    assert "key=value" in str(info.value)
    assert repr(item) in str(info.value)


@pytest.mark.parametrize("item", ["lr=0.1", "train..lr=0.1"])
def test_parse_set_key_without_section(item):
    with pytest.raises(ConfigError) as info:
        parse_set_overrides([item])
    assert "section.name" in str(info.value)
    assert repr(item) in str(info.value)


def test_nested_set_keys_reach_nested_sections_and_unknown_ones_are_named():
    config = build_config(parse_set_overrides(["adapters.lr.patience=4", "alerts.telegram.summary_every=2"]))
    assert config.adapters.lr.patience == 4 and config.alerts.telegram.summary_every == 2
    with pytest.raises(ConfigError, match="unknown key 'train.optim'"):
        build_config(parse_set_overrides(["train.optim.lr=0.1"]))
    with pytest.raises(ConfigError, match="unknown key 'adapters.lr.patienc'"):
        build_config(parse_set_overrides(["adapters.lr.patienc=3"]))


def test_the_telegram_token_never_leaves_memory():
    config = build_config({"alerts": {"telegram": {"token": "123:SECRET", "chat_id": "42"}}})
    assert config.alerts.telegram.token == "123:SECRET"
    assert "SECRET" not in repr(config.to_dict())


def test_parse_set_invalid_yaml_value():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_set_overrides(["model.prenet_dims=[32, 32"])


def test_set_value_of_wrong_type_is_refused():
    with pytest.raises(ConfigError, match=r"train\.lr.*'abc'"):
        build_config(parse_set_overrides(["train.lr=abc"]))


def test_merge_is_section_wise_and_extra_wins():
    base = {"preset": "demo", "train": {"lr": 0.1, "batch_size": 4}, "loss": {"ga_weight": 1.0}}
    merged = merge(base, {"train": {"lr": 0.2}, "preset": "tacotron2"})
    assert merged == {"preset": "tacotron2", "train": {"lr": 0.2, "batch_size": 4}, "loss": {"ga_weight": 1.0}}
    assert base["train"]["lr"] == 0.1  # not mutated


# ------------------------------------------------------------------------------------ files
def test_load_plain_config_file(tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text("preset: demo\ntrain: {lr: 0.005, batch_size: 4}\nloss:\n  ga_weight: 5\n", encoding="utf-8")
    config = load_config_file(path)
    assert config.preset == "demo"
    assert config.train.lr == 0.005
    assert config.train.batch_size == 4
    assert config.loss.ga_weight == 5.0
    # Untouched keys keep the preset's values.
    assert config.model.embedding_dim == PRESETS["demo"]["model"]["embedding_dim"]


def test_load_objective_file_reads_its_config_key(tmp_path):
    path = tmp_path / "objective.yaml"
    path.write_text(
        "study: {direction: minimize}\n"
        "search_space:\n  train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
        "config:\n  preset: demo\n  train: {lr: 0.002, max_steps: 7}\n",
        encoding="utf-8",
    )
    config = load_config_file(path)
    assert config.train.lr == 0.002
    assert config.train.max_steps == 7


def test_load_config_file_applies_sets_after_the_file(tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text("train: {lr: 0.005, batch_size: 4}\n", encoding="utf-8")
    config = load_config_file(path, ["train.lr=0.02", "model.r=2"])
    assert config.train.lr == 0.02
    assert config.train.batch_size == 4
    assert config.model.r == 2


def test_repo_demo_objective_loads():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "objectives" / "demo.yaml"
    config = load_config_file(path)
    assert config.preset == "demo"
    assert config.data.demo_lang == "en"


def test_empty_file_is_the_default_config(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load_config_file(path) == build_config()


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(path) in str(info.value)
    assert "no such" in str(info.value)


@pytest.mark.parametrize("name,content,says", [
    ("broken.yaml", b"train: {lr: 0.1\n", "YAML"),
    ("list.yaml", b"- train\n- model\n", "mapping"),
    ("objective.yaml", b"config: [1, 2]\n", "config"),
    ("objective.yaml", b"config:\n  train: {lrr: 0.1}\n", "train.lrr"),
    ("latin1.yaml", b"train: {device: \"caf\xe9\"}\n", "UTF-8"),
    ("bad_lr.yaml", b"train: {lr: 0}\n", "train.lr: 0.0 must be > 0"),
])
def test_a_malformed_file_names_the_path(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(path) in str(info.value)
    assert says in str(info.value)


def test_wrong_type_inside_file_names_path_and_key(tmp_path):
    path = tmp_path / "typed.yaml"
    path.write_text("train:\n  batch_size: sixteen\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    message = str(info.value)
    assert str(path) in message
    assert "train.batch_size" in message
    assert "sixteen" in message


# ------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"train": {"lr": 0}}, "train.lr: 0.0 must be > 0"),
        ({"train": {"lr": -1e-3}}, "train.lr: -0.001 must be > 0"),
        # The values found by a hostile user (issue 14): each is one error naming the key, from the bounds declared
        # next to the field.
        ({"train": {"num_threads": -1}}, "train.num_threads: -1 must be >= 0"),
        ({"model": {"embedding_dim": 0}}, "model.embedding_dim: 0 must be >= 1"),
        ({"data": {"demo_size": 0}}, "data.demo_size: 0 must be >= 1"),
        ({"train": {"weight_decay": -1}}, "train.weight_decay: -1.0 must be >= 0"),
        ({"train": {"adam_betas": [2, 0.5]}}, "train.adam_betas[0]: 2.0 must be < 1"),
        ({"audio": {"hop_length": 0}}, "audio.hop_length: 0 must be >= 1"),
        ({"model": {"max_decoder_steps": 0}}, "model.max_decoder_steps: 0 must be >= 1"),
        ({"data": {"free_running_sentences": -1}}, "data.free_running_sentences: -1 must be >= 0"),
        ({"preset": [1]}, "preset: unknown preset [1]"),
        ({"train": {"device": "tpu"}}, "train.device: 'tpu' is not valid (expected auto, cpu, cuda or cuda:N)"),
        ({"train": {"lr": float("inf")}}, "train.lr: inf is not a finite number"),
        ({"faults": {"nan_loss_at": [0]}}, "faults.nan_loss_at[0]: 0 must be >= 1"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"train": {"eval_every": 0}}, "train.eval_every"),
        ({"train": {"grad_clip": 0}}, "train.grad_clip"),
        ({"train": {"adam_betas": [0.9]}}, "train.adam_betas"),
        ({"model": {"r": 0}}, "model.r"),
        ({"model": {"prenet_dims": []}}, "model.prenet_dims"),
        ({"loss": {"ga_sigma": 0}}, "loss.ga_sigma"),
        ({"loss": {"ga_weight": -1}}, "loss.ga_weight"),
        ({"data": {"max_bad_share": 1.5}}, "data.max_bad_share"),
        ({"data": {"val_size": 0}}, "data.val_size"),
        ({"data": {"demo_lang": "de"}}, "data.demo_lang"),
        ({"audio": {"fmax": 12000.0}}, "audio.fmax must be <= audio.sample_rate / 2"),
        ({"audio": {"sample_rate": 8000}}, "audio.fmax"),
        ({"audio": {"win_length": 2048}}, "audio.win_length"),
    ],
)
def test_cross_field_validation(overrides, expected):
    with pytest.raises(ConfigError) as info:
        build_config(overrides)
    assert expected in str(info.value)


def test_fmax_at_nyquist_is_allowed():
    config = build_config({"audio": {"sample_rate": 16000}})  # the default fmax 8000 is exactly the limit
    assert config.audio.fmax == 8000.0
    assert config.audio.sample_rate == 16000


# ------------------------------------------------------------------------------------ presets
def test_default_preset_is_demo():
    assert build_config().preset == "demo"
    assert build_config() == build_config({"preset": "demo"})


def test_presets_differ_and_have_the_documented_sizes():
    demo = build_config({"preset": "demo"})
    full = build_config({"preset": "tacotron2"})
    assert demo.model != full.model
    assert demo.train.batch_size != full.train.batch_size
    assert demo.model.r == 4 and full.model.r == 1

    demo_params = count_parameters(demo)
    full_params = count_parameters(full)
    assert 0.6e6 < demo_params < 1.0e6  # "about 0.8M parameters"
    assert full_params > 20e6
    assert full_params > 20 * demo_params


def test_preset_values_can_be_overridden():
    config = build_config({"preset": "tacotron2", "train": {"batch_size": 8}})
    assert config.train.batch_size == 8
    assert config.train.max_steps == PRESETS["tacotron2"]["train"]["max_steps"]


def test_presets_are_not_mutated_by_building():
    before = {name: repr(values) for name, values in PRESETS.items()}
    config = build_config({"preset": "demo"})
    config.model.prenet_dims.append(1)
    config.train.adam_betas[0] = 0.0
    assert {name: repr(values) for name, values in PRESETS.items()} == before
    assert build_config().model.prenet_dims == [64, 64]
    assert build_config().train.adam_betas == [0.9, 0.999]


# ------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_from_dict_round_trips(preset):
    config = build_config({
        "preset": preset,
        "data": {"corpus": "/some/corpus", "val_size": 3},
        "train": {"lr": 2e-4, "adam_betas": [0.8, 0.99]},
        "model": {"prenet_dims": [48, 24, 12]},
        "audio": {"n_mels": 64},
    })
    data = config.to_dict()
    again = from_dict(data)
    assert again == config
    assert again.to_dict() == data
    assert again.preset == preset
    assert again.model.prenet_dims == [48, 24, 12]


def test_set_errors_name_the_command_line_not_the_file(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text("config:\n  preset: demo\n  train: {lr: 1e-3}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config_file(path, ["train.lr=abc"])
    assert str(info.value).startswith("--set: train.lr")
    assert str(path) not in str(info.value)
    path.write_text("config:\n  train: {lrr: 1}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"good\.yaml: unknown key 'train\.lrr'"):
        load_config_file(path, ["train.lr=0.1"])


def test_every_number_field_declares_its_bounds():
    """The one validation pass covers every numeric setting: a new field without bounds is caught here."""
    from smart_tuner.config import Config, fields_of

    unbounded = [key for key, value, f in fields_of(Config())
                 if ((isinstance(value, (int, float)) and not isinstance(value, bool))
                     or (isinstance(value, list) and ("int" in str(f.type) or "float" in str(f.type))))
                 and not f.metadata.get("rules") and not key.endswith("seed") and key != "tracking.source_trial"]
    assert not unbounded, unbounded


def test_config_paths_that_are_directories_are_clear_errors(tmp_path):
    from smart_tuner.config import load_config_file

    with pytest.raises(ConfigError, match="is a directory; name a YAML config or objective file"):
        load_config_file(tmp_path)
