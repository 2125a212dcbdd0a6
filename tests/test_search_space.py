"""Tests for smart_tuner.study.objective_file: objective files, their checks, and the glue to Optuna. No training."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest

from smart_tuner.config import ConfigError, build_config, merge
from smart_tuner.study.objective_file import (
    PRUNERS,
    SAMPLERS,
    Dimension,
    ObjectiveSpec,
    PruningSpec,
    Score,
    SearchSpaceError,
    load_objective,
    make_pruner,
    make_sampler,
    params_to_overrides,
    reference_params,
    suggest,
)

OBJECTIVES = Path(__file__).resolve().parents[1] / "objectives"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "objective.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def space_file(tmp_path: Path, space: str) -> Path:
    """An objective with a valid base config and the given search_space body (one line per dimension)."""
    return write(tmp_path, "config: {preset: demo}\nsearch_space:\n" + textwrap.indent(textwrap.dedent(space), "  "))


def error_of(path: Path) -> str:
    with pytest.raises(SearchSpaceError) as info:
        load_objective(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


def lookup(nested: dict, key: str):
    for part in key.split("."):
        nested = nested[part]
    return nested


# ------------------------------------------------------------------------------------ malformed files
BAD_DIMENSIONS = [
    # (search_space body, the key the message must name, another fragment it must hold)
    ("train.lrr: {type: float, low: 0.0001, high: 0.01}", "search_space.train.lrr", "train.lr"),
    ("train.lr: {type: flaot, low: 0.0001, high: 0.01}", "search_space.train.lr", "'flaot'"),
    ("train.lr: {low: 0.0001, high: 0.01}", "search_space.train.lr", "unknown type None"),
    ("train.lr: {type: float, low: 0.0001}", "search_space.train.lr", "high is missing"),
    ("train.lr: {type: float, high: 0.01}", "search_space.train.lr", "low is missing"),
    ("train.lr: {type: float, low: small, high: 0.01}", "search_space.train.lr", "low must be a number"),
    ("adapters.lr.patience: {type: int, low: 2.5, high: 8}", "search_space.adapters.lr.patience",
     "low must be an integer"),
    ("adapters.lr.patience: {type: int, low: 8, high: 8}", "search_space.adapters.lr.patience",
     "low (8) must be < high (8)"),
    ("train.weight_decay: {type: float, low: 0.0, high: 0.1, log: true}", "search_space.train.weight_decay",
     "log: true needs low > 0"),
    ("train.lr: {type: float, low: 0.001, high: 0.01, log: yes please}", "search_space.train.lr",
     "log must be true or false"),
    ("train.grad_clip: {type: float, low: 0.5, high: 5.0, step: 0}", "search_space.train.grad_clip",
     "step must be a number > 0"),
    ("train.grad_clip: {type: float, low: 0.5, high: 5.0, step: -0.5}", "search_space.train.grad_clip",
     "step must be a number > 0"),
    ("train.grad_clip: {type: float, low: 0.5, high: 5.0, step: 0.5, log: true}", "search_space.train.grad_clip",
     "step and log"),
    ("train.grad_clip: {type: float, low: 0.5, high: 5.0, step: 2.0}", "search_space.train.grad_clip",
     "multiple of step"),
    ("adapters.lr.patience: {type: int, low: 2, high: 12, step: 1.5}", "search_space.adapters.lr.patience",
     "step must be an integer"),
    ("train.batch_size: {type: categorical}", "search_space.train.batch_size", "needs a choices list"),
    ("train.batch_size: {type: categorical, choices: []}", "search_space.train.batch_size",
     "non-empty list"),
    ("train.batch_size: {type: categorical, choices: 16}", "search_space.train.batch_size", "non-empty list"),
    ("train.batch_size: {type: categorical, choices: [8, 16, 8]}", "search_space.train.batch_size",
     "listed twice"),
    ("train.lr: {type: float, low: 0.0001, hgh: 0.01}", "search_space.train.lr", "'hgh' (did you mean 'high'?)"),
    ("train.batch_size: {type: categorical, choices: [8, 16], low: 8}", "search_space.train.batch_size",
     "unknown field 'low'"),
    ("train.lr: 0.001", "search_space.train.lr", "expected a mapping"),
    # The dimension does not fit the config field.
    ("train.batch_size: {type: float, low: 8, high: 32}", "search_space.train.batch_size",
     "does not fit an integer field"),
    ("train.bf16: {type: float, low: 0, high: 1}", "search_space.train.bf16", "does not fit a true/false field"),
    ("train.bf16: {type: int, low: 0, high: 1}", "search_space.train.bf16", "does not fit a true/false field"),
    ("train.device: {type: int, low: 0, high: 1}", "search_space.train.device", "does not fit a text field"),
    ("model.prenet_dims: {type: int, low: 32, high: 64}", "search_space.model.prenet_dims",
     "does not fit a list field"),
    ("train.batch_size: {type: categorical, choices: [8, 16.5]}", "search_space.train.batch_size",
     "choice 16.5"),
    ("train.bf16: {type: categorical, choices: [0, 1]}", "search_space.train.bf16", "choice 0"),
    ("model.prenet_dims: {type: categorical, choices: [[64, 64], 64]}", "search_space.model.prenet_dims",
     "choice 64"),
    # A bound or choice that the trainer's own checks refuse.
    ("adapters.lr.factor: {type: float, low: 0.5, high: 1.5}", "search_space.adapters.lr.factor",
     "high (1.5)"),
    ("model.r: {type: categorical, choices: [0, 2]}", "search_space.model.r", "model.r: 0 must be >= 1"),
]


@pytest.mark.parametrize("space, key, fragment", BAD_DIMENSIONS, ids=[f"{i}" for i in range(len(BAD_DIMENSIONS))])
def test_malformed_dimension_names_file_and_key(tmp_path, space, key, fragment):
    message = error_of(space_file(tmp_path, space))
    assert f": {key}: " in message, message
    assert fragment in message, message


def test_low_not_below_high_message_reads_as_documented(tmp_path):
    path = space_file(tmp_path, "train.lr: {type: float, low: 0.01, high: 0.001}")
    assert error_of(path) == f"{path}: search_space.train.lr: low (0.01) must be < high (0.001)"


def test_unknown_config_key_lists_close_matches(tmp_path):
    message = error_of(space_file(tmp_path, "adapters.lr.patiense: {type: int, low: 1, high: 5}"))
    assert "close matches: adapters.lr.patience" in message


@pytest.mark.parametrize("text, key, fragment", [
    ("trian: {lr: 0.001}\n", "", "unknown top-level section 'trian'"),
    ("search_spaces: {}\n", "", "(did you mean 'search_space'?)"),
    ("config: {train: {lr: fast}}\n", "config: ", "train.lr"),
    ("config: {train: {lrr: 0.001}}\n", "config: ", "train.lrr"),
    ("config: {preset: huge}\n", "config: ", "huge"),
    ("config: [1, 2]\n", "config: ", "expected a mapping"),
    ("search_space: [train.lr]\n", "search_space: ", "expected a mapping"),
    ("score: {alignment_penalty: -1.0}\n", "score.alignment_penalty: ", ">= 0"),
    ("score: {alignment_penalty: high}\n", "score.alignment_penalty: ", "a number"),
    ("score: {alignment_penalty: true}\n", "score.alignment_penalty: ", "a number"),
    ("score: {stop_penalty: -0.5}\n", "score.stop_penalty: ", ">= 0"),
    ("score: {alignment: synthesis}\n", "score.alignment: ", "teacher_forced, free_running, worse"),
    ("score: {penalty: 1.0}\n", "score: ", "unknown field 'penalty'"),
    ("pruning: {pruner: mediam}\n", "pruning.pruner: ", "'mediam'"),
    ("pruning: {warmup_steps: -1}\n", "pruning.warmup_steps: ", "integer >= 0"),
    ("pruning: {warmup_steps: 1.5}\n", "pruning.warmup_steps: ", "integer >= 0"),
    ("pruning: {startup_trials: '3'}\n", "pruning.startup_trials: ", "integer >= 0"),
    ("pruning: {warmup: 100}\n", "pruning: ", "(did you mean 'warmup_steps'?)"),
    ("- 1\n- 2\n", "", "expected a mapping at the top level"),
    ("", "", "empty objective file"),
])
def test_malformed_sections_name_file_and_key(tmp_path, text, key, fragment):
    path = write(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path}: {key}"), message
    assert fragment in message, message


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    assert "no such" in error_of(tmp_path / "nowhere.yaml")
    assert "not valid YAML" in error_of(write(tmp_path, "search_space: {train.lr: [\n"))


def test_search_space_error_is_a_config_error():
    # The CLI turns every ConfigError into one `error: ...` line; objective files must get the same treatment.
    assert issubclass(SearchSpaceError, ConfigError)


def test_empty_search_space_runs_the_base_config(tmp_path):
    spec = load_objective(write(tmp_path, "config: {preset: demo, train: {lr: 0.002}}\nsearch_space:\n"))
    assert spec.space == []
    assert spec.config == {"preset": "demo", "train": {"lr": 0.002}}
    assert spec.score.alignment_penalty == 1.0 and spec.pruning == PruningSpec("median", 0, 5)
    trial = optuna.create_study().ask()
    assert suggest(trial, spec.space) == {}
    assert reference_params(spec) == ({}, [])


# --------------------------------------------------------------------------------------- shipped files
@pytest.mark.parametrize("name", ["demo.yaml", "tacotron2.yaml"])
def test_shipped_objectives_load_and_their_reference_is_fully_in_range(name):
    spec = load_objective(OBJECTIVES / name)
    assert spec.space, "a shipped objective searches something"
    params, left_out = reference_params(spec)
    assert left_out == []
    assert set(params) == {dim.key for dim in spec.space}
    rebuilt = build_config(merge(spec.config, params_to_overrides(params)))
    assert rebuilt.to_dict() == build_config(spec.config).to_dict()


def test_demo_objective_settings():
    spec = load_objective(OBJECTIVES / "demo.yaml")
    assert spec.config["preset"] == "demo"
    assert spec.score.alignment_penalty == 1.0
    assert spec.pruning == PruningSpec(pruner="median", warmup_steps=100, startup_trials=2)
    keys = {dim.key for dim in spec.space}
    for key in ("train.lr", "train.batch_size", "loss.ga_weight", "model.r", "adapters.lr.patience",
                "adapters.lr.grad_limit", "adapters.ga.low", "adapters.ga.critical_cap"):
        assert key in keys
    prenet = next(dim for dim in spec.space if dim.key == "model.prenet_dropout")
    assert prenet.low >= 0.3


def test_tacotron2_objective_settings():
    spec = load_objective(OBJECTIVES / "tacotron2.yaml")
    config = build_config(spec.config)
    assert config.preset == "tacotron2" and config.data.corpus is None
    assert (config.train.max_steps, config.train.eval_every, config.train.batch_size) == (20000, 500, 64)
    assert spec.pruning.warmup_steps == 3000


def test_enqueued_reference_trial_reproduces_the_base_config():
    spec = load_objective(OBJECTIVES / "demo.yaml")
    base = build_config(spec.config).to_dict()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params, _ = reference_params(spec)
    study.enqueue_trial(params)
    reference = study.ask()
    assert build_config(merge(spec.config, suggest(reference, spec.space))).to_dict() == base
    # The next trial is sampled: the same comparison tells it apart.
    sampled = study.ask()
    assert build_config(merge(spec.config, suggest(sampled, spec.space))).to_dict() != base


def test_reference_outside_the_range_is_left_out(tmp_path):
    spec = load_objective(space_file(tmp_path, """\
        train.lr: {type: float, low: 0.002, high: 0.01, log: true}
        train.batch_size: {type: categorical, choices: [8, 32]}
        train.grad_clip: {type: float, low: 0.25, high: 2.25, step: 0.5}
        adapters.lr.patience: {type: int, low: 1, high: 13, step: 4}
        model.prenet_dims: {type: categorical, choices: [[32, 32], [64, 64]]}
        loss.ga_weight: {type: int, low: 1, high: 5}
        """))
    params, left_out = reference_params(spec)
    # lr 1e-3 < low, 16 not a choice, clip 1.0 off the 0.25 + 0.5k grid, patience 10 off the 1 + 4k grid.
    assert left_out == ["train.lr", "train.batch_size", "train.grad_clip", "adapters.lr.patience"]
    assert params == {"model.prenet_dims": "[64, 64]", "loss.ga_weight": 2}
    assert type(params["loss.ga_weight"]) is int  # an int dimension on a float field gets an int parameter


# ----------------------------------------------------------------------------------------------- suggest
def test_suggest_stays_in_range_with_the_right_types_and_builds():
    spec = load_objective(OBJECTIVES / "demo.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        overrides = suggest(trial, spec.space)
        config = build_config(merge(spec.config, overrides)).to_dict()
        for dim in spec.space:
            value = lookup(overrides, dim.key)
            assert lookup(config, dim.key) == value
            if dim.kind == "categorical":
                assert value in dim.choices and type(value) is type(dim.choices[0])
                continue
            assert type(value) is (float if dim.kind == "float" else int), dim.key
            assert dim.low <= value <= dim.high, dim.key
        study.tell(trial, 1.0)


def test_suggest_honours_step_and_int_log(tmp_path):
    spec = load_objective(space_file(tmp_path, """\
        train.grad_clip: {type: float, low: 0.5, high: 5.0, step: 0.5}
        adapters.lr.patience: {type: int, low: 2, high: 12, step: 5}
        adapters.lr.recovery_steps: {type: int, low: 10, high: 1000, log: true}
        """))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    seen_patience = set()
    for _ in range(30):
        overrides = suggest(study.ask(), spec.space)
        clip = overrides["train"]["grad_clip"]
        assert abs(clip * 2 - round(clip * 2)) < 1e-9
        seen_patience.add(overrides["adapters"]["lr"]["patience"])
        assert 10 <= overrides["adapters"]["lr"]["recovery_steps"] <= 1000
    assert seen_patience <= {2, 7, 12} and len(seen_patience) > 1


def test_list_choices_round_trip_through_optuna_storage(tmp_path):
    spec = load_objective(space_file(tmp_path, """\
        model.prenet_dims: {type: categorical, choices: [[32, 32], [64, 64], [96, 96, 96]]}
        train.batch_size: {type: categorical, choices: [8, 16]}
        """))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="lists", storage=storage, sampler=optuna.samplers.RandomSampler(3))
    params, left_out = reference_params(spec)
    assert (params, left_out) == ({"model.prenet_dims": "[64, 64]", "train.batch_size": 16}, [])
    study.enqueue_trial(params)
    suggested = []
    for _ in range(8):
        trial = study.ask()
        overrides = suggest(trial, spec.space)
        assert isinstance(trial.params["model.prenet_dims"], str)  # Optuna holds the JSON text
        suggested.append(overrides["model"]["prenet_dims"])
        study.tell(trial, float(len(suggested)))
    assert suggested[0] == [64, 64]
    assert all(dims in ([32, 32], [64, 64], [96, 96, 96]) for dims in suggested)
    assert len({tuple(dims) for dims in suggested}) > 1
    # A stored trial alone gives back its config (as `best` does), lists decoded.
    stored = optuna.load_study(study_name="lists", storage=storage).trials
    for trial, dims in zip(stored, suggested):
        overrides = params_to_overrides(trial.params)
        assert overrides["model"]["prenet_dims"] == dims
        assert build_config(merge(spec.config, overrides)).model.prenet_dims == dims


def test_params_to_overrides_nests_and_refuses_unknown_keys():
    assert params_to_overrides({"train.lr": 0.002, "adapters.ga.low": 0.2, "model.prenet_dims": "[8, 8]"}) == {
        "train": {"lr": 0.002}, "adapters": {"ga": {"low": 0.2}}, "model": {"prenet_dims": [8, 8]}}
    assert params_to_overrides({"train.device": "[1]"}) == {"train": {"device": "[1]"}}  # a text field stays text
    with pytest.raises(SearchSpaceError, match="train.lrr"):
        params_to_overrides({"train.lrr": 0.1})


# -------------------------------------------------------------------------------------------- pruners
@pytest.mark.parametrize("name, cls", [
    ("median", optuna.pruners.MedianPruner),
    ("hyperband", optuna.pruners.HyperbandPruner),
    ("sha", optuna.pruners.SuccessiveHalvingPruner),
    ("none", optuna.pruners.NopPruner),
])
def test_make_pruner_classes(name, cls):
    assert type(make_pruner(PruningSpec(pruner=name, warmup_steps=10, startup_trials=1))) is cls
    # The CLI's --pruner wins over the file.
    other = "none" if name != "none" else "median"
    assert type(make_pruner(PruningSpec(pruner=other), name_override=name)) is cls


def test_make_pruner_refuses_an_unknown_override():
    with pytest.raises(SearchSpaceError, match="'asha'"):
        make_pruner(PruningSpec(), name_override="asha")


def test_every_listed_pruner_and_sampler_is_made_and_no_other():
    assert {type(make_pruner(PruningSpec(pruner=name))) for name in PRUNERS} == {
        optuna.pruners.MedianPruner, optuna.pruners.HyperbandPruner, optuna.pruners.SuccessiveHalvingPruner,
        optuna.pruners.NopPruner}
    assert [type(make_sampler(name, seed=0)) for name in SAMPLERS] == [
        optuna.samplers.TPESampler, optuna.samplers.RandomSampler, optuna.samplers.GPSampler,
        optuna.samplers.CmaEsSampler]
    with pytest.raises(SearchSpaceError, match="--sampler 'bayes': choose one of tpe, random, gp, cmaes"):
        make_sampler("bayes", seed=0)


STEPS = list(range(10, 410, 10))  # training steps at which each trial reports, as every eval_every steps
WARMUP = 150
# Hyperband splits trials into brackets by a hash of study name and trial number. With these 13 good trials in
# study "warmup" and no warm-up (6 brackets), the terrible trial (number 13) shares bracket 1 with four good
# ones, so the control below can see it pruned; with the warm-up there is a single bracket.
N_GOOD = 13


def first_pruned_step(pruner: optuna.pruners.BasePruner) -> int | None:
    """N_GOOD completed trials report good values; then a trial reports terrible ones: where is it pruned?"""
    study = optuna.create_study(study_name="warmup", pruner=pruner, sampler=optuna.samplers.RandomSampler(0))
    for i in range(N_GOOD):
        trial = study.ask()
        for step in STEPS:
            trial.report(1.0 - 0.01 * i, step)  # each better than all before
            assert not trial.should_prune()  # also records the rung values successive halving compares against
        study.tell(trial, 1.0 - 0.01 * i)
    bad = study.ask()
    for step in STEPS:
        bad.report(100.0, step)
        if bad.should_prune():
            return step
    return None


@pytest.mark.parametrize("name", ["median", "sha", "hyperband"])
def test_no_pruning_before_warmup(name):
    pruned_at = first_pruned_step(make_pruner(PruningSpec(name, warmup_steps=WARMUP, startup_trials=2)))
    # Each compares at the first report at or after the warm-up, and the terrible trial loses there.
    assert pruned_at == WARMUP, pruned_at


@pytest.mark.parametrize("name", ["median", "sha", "hyperband"])
def test_without_warmup_the_same_trial_is_pruned_early(name):
    # The control for the test above: the set-up does prune before step WARMUP when nothing stops it.
    pruned_at = first_pruned_step(make_pruner(PruningSpec(name, warmup_steps=0, startup_trials=2)))
    assert pruned_at is not None and pruned_at < WARMUP, pruned_at


def test_median_waits_for_startup_trials():
    pruner = make_pruner(PruningSpec("median", warmup_steps=0, startup_trials=20))
    assert first_pruned_step(pruner) is None  # only N_GOOD completed trials


def test_nop_pruner_never_prunes():
    assert first_pruned_step(make_pruner(PruningSpec("none", warmup_steps=0))) is None


def test_hyperband_max_steps_lets_it_prune_before_any_trial_completes():
    def pruned(max_steps):
        pruner = make_pruner(PruningSpec("hyperband", 10), max_steps=max_steps)
        study = optuna.create_study(study_name="budget", pruner=pruner)  # a fixed name: fixed brackets
        results = []
        for value in (1.0, 1.1, 1.2, 1.3, 100.0, 100.0, 100.0, 100.0):  # all running: none completed
            trial = study.ask()
            trial.report(value, 400)
            results.append(trial.should_prune())
        return results

    assert not any(pruned(None))  # "auto" waits for a completed trial to learn the budget
    assert any(pruned(400))


def test_dataclasses_hold_what_the_file_says(tmp_path):
    spec = load_objective(write(tmp_path, """\
        config: {preset: demo}
        search_space:
          train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
          adapters.lr.patience: {type: int, low: 2, high: 12, step: 2}
          model.r: {type: categorical, choices: [3, 4]}
        score: {alignment_penalty: 0.5, alignment: worse, stop_penalty: 0.25}
        pruning: {pruner: sha, warmup_steps: 100, startup_trials: 0}
        """))
    assert spec == ObjectiveSpec(
        path=str(tmp_path / "objective.yaml"),
        config={"preset": "demo"},
        space=[
            Dimension("train.lr", "float", low=1e-4, high=1e-2, log=True),
            Dimension("adapters.lr.patience", "int", low=2, high=12, step=2),
            Dimension("model.r", "categorical", choices=[3, 4]),
        ],
        score=Score(alignment_penalty=0.5, alignment="worse", stop_penalty=0.25),
        pruning=PruningSpec("sha", 100, 0),
    )


@pytest.mark.parametrize("formula, metrics, expected", [
    (Score(alignment="teacher_forced", stop_penalty=0.0),
     {"diagonality": 0.9, "free_running_diagonality": 0.1, "free_running_stop_rate": 0.0}, 1.0 + 0.1),
    (Score(),  # the default
     {"diagonality": 0.9, "free_running_diagonality": 0.1, "free_running_stop_rate": 0.0},
     1.0 + 0.9 + 0.5),
    (Score(alignment="free_running", stop_penalty=0.0), {"diagonality": 0.9, "free_running_diagonality": 0.1,
                                                                    "free_running_stop_rate": 0.0}, 1.0 + 0.9),
    (Score(alignment="worse", stop_penalty=0.5),
     {"diagonality": 0.9, "free_running_diagonality": 0.1, "free_running_stop_rate": 0.0}, 1.0 + 0.9 + 0.5),
    (Score(alignment="worse", stop_penalty=0.5),
     {"diagonality": 0.6, "free_running_diagonality": 0.95, "free_running_stop_rate": 1.0}, 1.0 + 0.4),
    (Score(),  # no free-running measure (data.free_running_sentences: 0): teacher-forced alone, no stop term
     {"diagonality": 0.8, "free_running_diagonality": float("nan"), "free_running_stop_rate": float("nan")}, 1.0 + 0.2),
])
def test_the_score(formula, metrics, expected):
    assert formula.value(1.0, metrics) == pytest.approx(expected)


def test_the_formula_names_the_study_metric():
    assert Score(alignment="teacher_forced", stop_penalty=0.0).describe("postnet") == \
        "val_postnet + 1 * (1 - diagonality)"
    assert Score(2.0, "worse", 0.5).describe("postnet") == \
        "val_postnet + 2 * (1 - min(diagonality, free_running_diagonality)) + 0.5 * (1 - free_running_stop_rate)"
