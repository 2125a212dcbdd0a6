"""Adapter rules at their boundaries (no model), torch equivalence, state round trips, and real runs with faults."""

from __future__ import annotations

import random

import pytest
import torch

from smart_tuner.adapters import (
    AttentionCollapseAdapter,
    GradientHealthAdapter,
    GuidedAttentionAdapter,
    LearningRateAdapter,
    build_adapters,
)
from smart_tuner.config import CollapseAdapterConfig, GaAdapterConfig, GradAdapterConfig, LrAdapterConfig, build_config
from smart_tuner.hooks import Event
from smart_tuner.run_logs import read_events, read_metrics
from smart_tuner.train.trainer import Trainer
from smart_tuner.tts import checkpoint as ckpt

from .conftest import tiny_config
from .stats import StepLog, eval_stats, step_stats


def step(n=1, loss=1.0, grad_norm=1.0, lr=1e-3, ga_weight=2.0):
    return step_stats(n, loss=loss, grad_norm=grad_norm, lr=lr, ga_weight=ga_weight)


def evaluation(n=1, val_loss=1.0, diagonality=0.5, ga_weight=2.0, free_running_diagonality=0.5, **fields):
    return eval_stats(n, val_loss=val_loss, diagonality=diagonality, ga_weight=ga_weight,
                      free_running_diagonality=free_running_diagonality, **fields)


def controls(decisions):
    return {d.control: d.value for d in decisions}


# ------------------------------------------------------------------------------------------ learning rate
@pytest.mark.parametrize("cooldown", [0, 2])
def test_plateau_matches_torch_reduce_lr_on_plateau(cooldown):
    cfg = LrAdapterConfig(patience=3, factor=0.5, threshold=0.01, cooldown=cooldown, min_lr=1e-4)
    adapter = LearningRateAdapter(cfg, initial_lr=1e-2)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=3,
                                                           threshold=0.01, threshold_mode="rel",
                                                           cooldown=cooldown, min_lr=1e-4)
    rng = random.Random(7)
    value, losses = 5.0, []
    for i in range(120):  # falling phases, flat phases, noise, a NaN
        value *= 0.9 if (i // 15) % 2 == 0 else 1.0
        losses.append(float("nan") if i == 50 else value * (1 + 0.004 * rng.random()))
    ours, theirs = [], []
    lr = 1e-2
    for i, loss in enumerate(losses):
        for d in adapter.on_eval(evaluation(i, val_loss=loss)):
            lr = d.value
        scheduler.step(loss)
        ours.append(lr)
        theirs.append(optimizer.param_groups[0]["lr"])
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert min(theirs) < 1e-2  # the sequence did trigger reductions
    assert theirs[-1] == pytest.approx(1e-4)  # and reached min_lr


def test_plateau_waits_for_alignment():
    cfg = LrAdapterConfig(patience=1, factor=0.5, plateau_from_diagonality=0.6)
    adapter = LearningRateAdapter(cfg, initial_lr=1e-2)
    # Rising loss while attention is still unaligned: no reduction, however long it lasts.
    for i in range(10):
        assert adapter.on_eval(evaluation(i, val_loss=1.0 + i, diagonality=0.59)) == []
    # From the first aligned evaluation the plateau rule counts, with the best value taken from there on.
    assert adapter.on_eval(evaluation(10, val_loss=20.0, diagonality=0.6)) == []
    assert adapter.on_eval(evaluation(11, val_loss=19.0, diagonality=0.3)) == []  # improvement: counts, diag dips
    assert adapter.on_eval(evaluation(12, val_loss=19.5, diagonality=0.9)) == []
    plateau = adapter.on_eval(evaluation(13, val_loss=19.5, diagonality=0.9))
    assert controls(plateau) == {"lr": pytest.approx(5e-3)} and not plateau[0].alarm
    state = adapter.state_dict()
    assert state["plateau_started"] is True
    fresh = LearningRateAdapter(cfg, initial_lr=1e-2)
    fresh.load_state_dict(state)
    assert fresh.plateau_started and fresh.lr == pytest.approx(5e-3)


@pytest.mark.parametrize("loss,grad_norm,emergency", [
    (1e6, 1.0, False), (1.0000001e6, 1.0, True), (1.0, 1000.0, False), (1.0, 1000.001, True),
    (float("nan"), 1.0, True), (float("inf"), 1.0, True), (1.0, float("inf"), True), (1.0, float("nan"), True)])
def test_emergency_boundaries(loss, grad_norm, emergency):
    adapter = LearningRateAdapter(LrAdapterConfig(), initial_lr=1e-3)
    decisions = adapter.on_step(step(loss=loss, grad_norm=grad_norm))
    if emergency:
        assert controls(decisions) == {"skip_update": None, "lr": pytest.approx(1e-4)}
        assert all(d.reason.startswith("emergency") and d.alarm for d in decisions)
    else:
        assert decisions == []


def test_emergencies_never_go_below_min_lr_and_consecutive_ones_ask_for_a_rollback():
    adapter = LearningRateAdapter(LrAdapterConfig(min_lr=1e-5, max_emergencies=3), initial_lr=1e-3)
    first = adapter.on_step(step(loss=float("nan")))
    assert controls(first)["lr"] == pytest.approx(1e-4)
    second = adapter.on_step(step(loss=float("nan")))
    assert controls(second)["lr"] == pytest.approx(1e-5) and "rollback" not in controls(second)
    third = adapter.on_step(step(loss=float("nan")))
    assert "lr" not in controls(third)  # already at min_lr: nothing to cut
    assert "rollback" in controls(third) and "skip_update" in controls(third)
    assert all(d.alarm for d in first + second + third)  # every emergency decision is an alarm
    # The count restarts after a rollback, and a healthy step in between resets it.
    adapter.on_step(step(loss=float("nan")))
    adapter.on_step(step())
    adapter.on_step(step(loss=float("nan")))
    assert "rollback" not in controls(adapter.on_step(step(loss=float("nan"))))


def test_recovery_climbs_back_stepwise_to_the_rate_before_the_emergency():
    cfg = LrAdapterConfig(recovery_steps=4, recovery_factor=10.0, emergency_factor=0.01)
    adapter = LearningRateAdapter(cfg, initial_lr=1e-3)
    adapter.on_step(step(loss=float("nan")))
    assert adapter.lr == pytest.approx(1e-5)
    rates = []
    for i in range(12):
        decisions = adapter.on_step(step(n=i))
        assert not any(d.alarm for d in decisions)  # recovering is not trouble
        rates.append(controls(decisions).get("lr"))
    assert rates == [None, None, None, pytest.approx(1e-4), None, None, None, pytest.approx(1e-3),
                     None, None, None, None]


def test_max_lr_bounds_the_rate_and_defaults_to_twice_the_initial_rate():
    assert LearningRateAdapter(LrAdapterConfig(), initial_lr=1e-3).max_lr == pytest.approx(2e-3)
    adapter = LearningRateAdapter(LrAdapterConfig(max_lr=5e-4), initial_lr=1e-3)
    assert adapter.lr == pytest.approx(5e-4)


def test_a_rollback_by_another_adapter_cuts_the_rate_once_then_recovers():
    adapter = LearningRateAdapter(LrAdapterConfig(recovery_steps=2), initial_lr=1e-3)
    adapter.on_event(Event(5, "grad", "rollback", None, None, "emergency: vanishing", 0.0, True, True))
    cut = adapter.on_step(step())
    assert controls(cut)["lr"] == pytest.approx(1e-4) and cut[0].alarm
    assert adapter.on_step(step()) == []
    assert controls(adapter.on_step(step()))["lr"] == pytest.approx(2e-4)
    # Its own rollbacks and lost requests change nothing more.
    adapter.on_event(Event(9, "lr", "rollback", None, None, "emergency", 0.0, True))
    adapter.on_event(Event(9, "grad", "rollback", None, None, "emergency", 0.0, False))
    assert adapter.on_step(step()) == []


@pytest.mark.parametrize("change, expected", [
    (0.04, 1e-3),          # exactly weight_change_high: in range
    (0.0400001, 1e-4),     # above: far too large, cut x emergency_factor (0.1)
    (8e-4, 1e-3),          # exactly weight_change_low: in range
    (7.99e-4, 4e-3),       # below: far too small, raised x raise_factor (4)
    (1e-6, 4e-3),
    (float("nan"), 1e-3),  # no measurement (a test's stats): nothing
])
def test_rate_range_rules_at_their_boundaries(change, expected):
    adapter = LearningRateAdapter(LrAdapterConfig(max_lr=1e-2), initial_lr=1e-3)
    decisions = adapter.on_eval(evaluation(diagonality=0.2, weight_change=change))
    assert controls(decisions).get("lr", 1e-3) == pytest.approx(expected)
    assert (decisions == []) == (expected == 1e-3)
    assert all(d.alarm == (expected < 1e-3) for d in decisions)  # too large is an emergency, too small is not
    assert ("rollback" in controls(decisions)) == (expected < 1e-3)  # and undoes what the rate did
    assert all("far too large" in d.reason or "too small" in d.reason for d in decisions)


def test_a_raised_rate_stops_at_max_lr_and_raises_end_with_alignment_but_cuts_do_not():
    adapter = LearningRateAdapter(LrAdapterConfig(max_lr=5e-3, plateau_from_diagonality=0.5), initial_lr=1e-3)
    rates = [controls(adapter.on_eval(evaluation(i, diagonality=0.2, weight_change=1e-5))).get("lr")
             for i in range(3)]
    assert rates == [pytest.approx(4e-3), pytest.approx(5e-3), None]  # capped, then nothing left to raise
    # From the first aligned evaluation slow weights are what a converging run makes: no raise any more ...
    assert adapter.on_eval(evaluation(3, diagonality=0.5, weight_change=1e-5)) == []
    assert adapter.on_eval(evaluation(4, diagonality=0.2, weight_change=1e-5)) == []
    fresh = LearningRateAdapter(adapter.cfg, initial_lr=1e-3)
    fresh.load_state_dict(adapter.state_dict())
    assert fresh.lr == pytest.approx(5e-3) and fresh.on_eval(evaluation(5, diagonality=0.2, weight_change=1e-5)) == []
    # ... but weights jumping by far too much are a rate far too large at any time.
    assert controls(fresh.on_eval(evaluation(6, diagonality=0.9, weight_change=0.05))) == {
        "rollback": None, "lr": pytest.approx(5e-4)}
    # And no rule raises it again above what it was cut to (here the free-running lag rule would).
    assert fresh.max_lr == pytest.approx(5e-4)
    for i in range(7, 10):
        assert fresh.on_eval(evaluation(i, val_loss=1.0 - 0.1 * i, diagonality=0.9, free_running_diagonality=0.1)) == []
    restored = LearningRateAdapter(fresh.cfg, initial_lr=1e-3)
    restored.load_state_dict(fresh.state_dict())
    assert restored.max_lr == pytest.approx(5e-4)


def test_no_raise_while_recovering_from_an_emergency():
    adapter = LearningRateAdapter(LrAdapterConfig(max_lr=1e-2), initial_lr=1e-3)
    adapter.on_step(step(loss=float("nan")))
    assert adapter.lr == pytest.approx(1e-4)
    assert adapter.on_eval(evaluation(diagonality=0.2, weight_change=1e-6)) == []  # slow because it was cut


@pytest.mark.parametrize("pairs, raised_at", [
    ([(0.9, 0.4), (0.9, 0.4)], [1]),                 # gap 0.5 exactly, twice (lag_patience 2): raise
    ([(0.9, 0.4001), (0.9, 0.4)], []),               # 0.4999: not lagging, the count restarts
    ([(0.9, 0.1), (0.9, 0.9), (0.9, 0.1)], []),      # one evaluation in between without lag: restarts
    ([(0.9, 0.1)] * 5, [1, 3]),                      # after a raise the count starts over
    ([(0.9, float("nan"))] * 3, []),                 # no free-running measurement (none decoded): never
])
def test_free_running_lag_rule_at_its_boundaries(pairs, raised_at):
    adapter = LearningRateAdapter(LrAdapterConfig(max_lr=1.0, plateau_from_diagonality=0.0), initial_lr=1e-3)
    fired = []
    for i, (tf, fr) in enumerate(pairs):
        decisions = adapter.on_eval(evaluation(i, val_loss=1.0 - 0.1 * i, diagonality=tf, free_running_diagonality=fr))
        if decisions:
            assert controls(decisions) == {"lr": pytest.approx(1e-3 * 4 ** (len(fired) + 1))}
            assert "lags" in decisions[0].reason and not decisions[0].alarm
            fired.append(i)
    assert fired == raised_at


def test_free_running_lag_rule_respects_max_lr_recovery_off_switch_and_state():
    cfg = LrAdapterConfig(max_lr=2e-3, plateau_from_diagonality=0.0)
    adapter = LearningRateAdapter(cfg, initial_lr=1e-3)
    adapter.on_eval(evaluation(0, diagonality=0.9, free_running_diagonality=0.1))
    state = adapter.state_dict()
    assert state["lagging_evals"] == 1
    fresh = LearningRateAdapter(cfg, initial_lr=1e-3)
    fresh.load_state_dict(state)  # the count survives a checkpoint: the next lagging evaluation raises
    assert controls(fresh.on_eval(evaluation(1, val_loss=0.9, diagonality=0.9, free_running_diagonality=0.1))) == {
        "lr": pytest.approx(2e-3)}  # capped at max_lr
    for i in range(2, 5):
        assert fresh.on_eval(evaluation(i, val_loss=1.0 - 0.1 * i, diagonality=0.9, free_running_diagonality=0.1)) == []
    off = LearningRateAdapter(LrAdapterConfig(max_lr=1.0, plateau_from_diagonality=0.0, lag_gap=0.0), 1e-3)
    assert all(off.on_eval(evaluation(i, val_loss=1.0 - 0.1 * i, diagonality=0.9, free_running_diagonality=0.0)) == []
               for i in range(4))
    recovering = LearningRateAdapter(LrAdapterConfig(max_lr=1.0, plateau_from_diagonality=0.0), 1e-3)
    recovering.on_step(step(loss=float("nan")))
    assert all(recovering.on_eval(evaluation(i, val_loss=1.0 - 0.1 * i, diagonality=0.9,
                                             free_running_diagonality=0.0)) == [] for i in range(4))


# ------------------------------------------------------------------------------------------ collapse
@pytest.mark.parametrize("history, expected", [
    ([0.2, 0.1], []),                 # never aligned: a low value is no collapse
    ([0.69, 0.1], []),                # just below high: never counted as aligned
    ([0.7, 0.3], []),                 # aligned at high exactly; low exactly is not below it
    ([0.7, 0.2999], [1]),             # aligned, then below low: rollback at the second evaluation
    ([0.9, 0.5, 0.29], [2]),          # a slow fall counts too
    ([0.9, 0.1, 0.1, 0.9, 0.1], [1, 4]),  # one rollback per fall: it must align again first
    ([0.9, float("nan"), 0.5], []),   # no measurement: nothing
])
def test_collapse_rule_at_its_boundaries(history, expected):
    adapter = AttentionCollapseAdapter(CollapseAdapterConfig())
    fired = []
    for i, diag in enumerate(history):
        decisions = adapter.on_eval(evaluation(i, diagonality=diag))
        if decisions:
            assert controls(decisions) == {"rollback": None} and decisions[0].alarm
            assert "collapsed" in decisions[0].reason and decisions[0].trigger == pytest.approx(diag)
            fired.append(i)
    assert fired == expected


def test_collapse_rule_on_the_worse_diagonality_and_its_state_round_trip():
    adapter = AttentionCollapseAdapter(CollapseAdapterConfig(metric="worse"))
    assert adapter.on_eval(evaluation(diagonality=0.95, free_running_diagonality=0.6)) == []  # worse 0.6: not aligned
    assert adapter.on_eval(evaluation(diagonality=0.95, free_running_diagonality=0.2)) == []
    assert adapter.on_eval(evaluation(diagonality=0.95, free_running_diagonality=0.8)) == []  # now aligned
    fresh = AttentionCollapseAdapter(adapter.cfg)
    fresh.load_state_dict(adapter.state_dict())
    assert fresh.state_dict() == {"aligned": True}
    assert controls(fresh.on_eval(evaluation(diagonality=0.95, free_running_diagonality=0.2))) == {"rollback": None}


# ------------------------------------------------------------------------------------------ guided attention
@pytest.mark.parametrize("weight,diag,expected", [
    (2.0, 0.05, 4.0),     # critical: x2
    (15.0, 0.05, 20.0),   # critical: capped at 20
    (30.0, 0.05, 30.0),   # above the cap: never lowered by a boost
    (2.0, 0.1, 2.4),      # exactly critical is "low": x1.2
    (9.5, 0.2, 10.0),     # low: capped at 10
    (2.0, 0.3, 2.0),      # exactly low: no change
    (2.0, 0.7, 2.0),      # exactly high: no change
    (2.0, 0.71, 1.9),     # high: decay x0.95
    (1.02, 0.9, 1.0),     # decay stops at the floor
    (0.0, 0.05, 1.0),     # a zero weight is raised to the floor first
    (0.5, 0.2, 1.0),
    (0.5, 0.9, 0.5),      # a low weight is left alone when aligned
    (2.0, float("nan"), 2.0),
])
def test_ga_weight_rules_at_their_boundaries(weight, diag, expected):
    adapter = GuidedAttentionAdapter(GaAdapterConfig())
    decisions = adapter.on_eval(evaluation(diagonality=diag, ga_weight=weight))
    new = controls(decisions).get("ga_weight", weight)
    assert new == pytest.approx(expected)
    assert not any(d.alarm for d in decisions)
    assert (decisions == []) == (expected == weight)


def test_ga_adapter_can_follow_free_running_diagonality():
    adapter = GuidedAttentionAdapter(GaAdapterConfig(metric="free_running"))
    decisions = adapter.on_eval(evaluation(diagonality=0.9, free_running_diagonality=0.05))
    assert controls(decisions) == {"ga_weight": pytest.approx(4.0)}


@pytest.mark.parametrize("tf, fr, expected", [
    (0.9, 0.05, 4.0),  # aligned teacher-forced, mute free-running: the free-running value drives (critical boost)
    (0.2, 0.9, 2.4),  # the other way round: the teacher-forced value drives (low boost)
    (0.75, 0.71, 1.9),  # both above high (0.7): decay
    (0.75, 0.7, 2.0),  # the worse one at high exactly: no rule fires
    (0.9, float("nan"), 1.9),  # no free-running measure (data.free_running_sentences 0): teacher-forced alone
])
def test_ga_adapter_on_the_worse_diagonality(tf, fr, expected):
    adapter = GuidedAttentionAdapter(GaAdapterConfig(metric="worse"))
    decisions = adapter.on_eval(evaluation(diagonality=tf, free_running_diagonality=fr))
    assert controls(decisions).get("ga_weight", 2.0) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------ gradient health
def test_vanishing_gradients_ask_for_a_rollback_after_patience_consecutive_steps():
    adapter = GradientHealthAdapter(GradAdapterConfig(vanish_eps=1e-8, vanish_patience=3))
    assert adapter.on_step(step(grad_norm=1e-9)) == [] and adapter.on_step(step(grad_norm=1e-9)) == []
    assert adapter.on_step(step(grad_norm=1e-8)) == []  # not below eps: the count restarts
    assert adapter.on_step(step(grad_norm=0.0)) == [] and adapter.on_step(step(grad_norm=0.0)) == []
    decisions = adapter.on_step(step(grad_norm=0.0))
    assert controls(decisions) == {"rollback": None} and "vanishing" in decisions[0].reason and decisions[0].alarm
    assert adapter.on_step(step(grad_norm=0.0)) == []  # counting starts over


# ------------------------------------------------------------------------------------------ state
def test_adapter_state_survives_a_checkpoint_file(tmp_path):
    config = build_config({"adapters": {"lr": {"patience": 1, "recovery_steps": 3}}})
    adapters = build_adapters(config)
    lr, _ga, collapse, grad = adapters
    collapse.on_eval(evaluation(diagonality=0.9))
    lr.on_step(step(loss=float("nan")))
    for v in (1.0, 1.1, 1.2):
        lr.on_eval(evaluation(val_loss=v))
    grad.on_step(step(grad_norm=0.0))
    ckpt.save_atomic({"format": ckpt.FORMAT, "hooks": {a.name: a.state_dict() for a in adapters}}, tmp_path / "a.pt")
    state = ckpt.load(tmp_path / "a.pt")["hooks"]  # weights_only=True
    fresh = build_adapters(config)
    for adapter in fresh:
        adapter.load_state_dict(state[adapter.name])
    assert [a.state_dict() for a in fresh] == [a.state_dict() for a in adapters]
    # The restored adapters decide exactly as the originals.
    for original, restored in zip(adapters, fresh):
        for s in (step(), step(), step(grad_norm=0.0), step()):
            assert original.on_step(s) == restored.on_step(s)
    with pytest.raises(KeyError, match="unexpected state"):
        fresh[0].load_state_dict({"nonsense": 1})


def test_disabled_adapters_are_not_built():
    config = build_config({"adapters": {"lr": {"enabled": False}, "grad": {"enabled": False}}})
    assert [a.name for a in build_adapters(config)] == ["ga", "collapse"]


# ------------------------------------------------------------------------------------------ real runs
def all_finite(trainer):
    params = all(torch.isfinite(p).all() for p in trainer.model.parameters())
    state = all(torch.isfinite(v).all() for s in trainer.optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor))
    return params and state


@pytest.mark.parametrize("fault", ["nan_loss_at", "inf_grad_at"])
def test_faults_are_survived_with_the_rate_cut_and_events_written(corpus_en, tmp_path, fault):
    config = tiny_config(corpus_en, tmp_path, train={"max_steps": 10, "eval_every": 5},
                         faults={fault: [3, 7]}, adapters={"lr": {"recovery_steps": 100}})
    log = StepLog()
    trainer = Trainer(config, tmp_path / "run", hooks=[*build_adapters(config), log], progress=False)
    result = trainer.fit()
    assert result.status == "completed" and result.step == 10
    assert all_finite(trainer)
    assert trainer.controls.lr == pytest.approx(config.train.lr * 0.01)
    events = read_events(tmp_path / "run")
    skips = [e for e in events if e["control"] == "skip_update" and e["applied"]]
    cuts = [e for e in events if e["control"] == "lr" and e["source"] == "lr"]
    assert [e["step"] for e in skips] == [3, 7] and [e["step"] for e in cuts] == [3, 7]
    assert all(e["reason"].startswith("emergency: non-finite") for e in skips + cuts)
    assert [s.lr for s in log.steps][2:4] == [config.train.lr, pytest.approx(config.train.lr * 0.1)]
    assert not log.steps[2].finite and log.steps[3].finite


def test_without_adapters_the_trainer_still_never_applies_non_finite_updates(corpus_en, tmp_path):
    config = tiny_config(corpus_en, tmp_path, train={"max_steps": 5, "eval_every": 5}, faults={"inf_grad_at": [2]})
    trainer = Trainer(config, tmp_path / "run", progress=False)
    assert trainer.fit().status == "completed"
    assert all_finite(trainer)
    events = read_events(tmp_path / "run")
    assert [(e["source"], e["control"], e["step"], e["alarm"]) for e in events] == [
        ("trainer", "skip_update", 2, True)]


def test_consecutive_emergencies_roll_back_and_the_budget_ends_the_run(corpus_en, tmp_path):
    config = tiny_config(corpus_en, tmp_path, train={"max_steps": 12, "eval_every": 4},
                         faults={"nan_loss_at": [6, 7, 8]}, adapters={"lr": {"max_emergencies": 3}})
    trainer = Trainer(config, tmp_path / "ok", hooks=build_adapters(config), progress=False)
    healthy_step = None
    original = trainer.controls.rollback

    def spy(reason, step):
        nonlocal healthy_step
        healthy_step = trainer.controls.healthy["step"]
        original(reason, step)
        # After the rollback the model is exactly the healthy snapshot.
        for name, value in trainer.model.state_dict().items():
            assert torch.equal(value.cpu(), trainer.controls.healthy["model"][name])

    trainer.controls.rollback = spy
    result = trainer.fit()
    assert result.status == "completed" and trainer.controls.rollbacks == 1 and healthy_step == 4
    rollbacks = [e for e in read_events(tmp_path / "ok") if e["control"] == "rollback"]
    assert [(e["step"], e["applied"]) for e in rollbacks] == [(8, True)]

    failing = tiny_config(corpus_en, tmp_path, train={"max_steps": 12, "eval_every": 4},
                          faults={"nan_loss_at": [6, 7, 8]}, adapters={"max_rollbacks": 0})
    result = Trainer(failing, tmp_path / "fail", hooks=build_adapters(failing), progress=False).fit()
    assert result.status == "failed" and result.step == 7
    assert "rollback budget spent" in result.reason and "adapters.max_rollbacks" in result.reason
    assert (tmp_path / "fail" / "checkpoints" / "last.pt").is_file()


def test_vanishing_gradients_roll_back_and_cut_the_rate(corpus_en, tmp_path):
    # A vanish_eps above any real gradient norm makes every step "vanished".
    config = tiny_config(corpus_en, tmp_path, train={"max_steps": 6, "eval_every": 3},
                         adapters={"grad": {"vanish_eps": 1e9, "vanish_patience": 4}, "max_rollbacks": 5})
    trainer = Trainer(config, tmp_path / "run", hooks=build_adapters(config), progress=False)
    assert trainer.fit().status == "completed"
    events = read_events(tmp_path / "run")
    assert [(e["source"], e["control"], e["step"]) for e in events if e["control"] in ("rollback", "lr")] == [
        ("grad", "rollback", 4), ("lr", "lr", 5)]
    assert trainer.controls.lr == pytest.approx(config.train.lr * 0.1)


def test_the_ga_adapter_weight_reaches_the_loss(corpus_en, tmp_path):
    config = tiny_config(corpus_en, tmp_path, train={"max_steps": 8, "eval_every": 4},
                         adapters={"lr": {"enabled": False}, "grad": {"enabled": False}})
    log = StepLog()
    trainer = Trainer(config, tmp_path / "run", hooks=[*build_adapters(config), log], progress=False)
    trainer.fit()
    changes = [e for e in read_events(tmp_path / "run") if e["control"] == "ga_weight"]
    assert changes and changes[0]["step"] == 4 and changes[0]["new"] > changes[0]["old"]  # untrained: low diag
    after = [s for s in log.steps if s.step > 4]
    assert all(s.loss_weights["ga_weight"] == changes[0]["new"] for s in after)
    for s in after:
        terms = s.losses
        weighted_ga = changes[0]["new"] * terms["ga"]
        assert s.loss == pytest.approx(terms["mel"] + terms["postnet"] + terms["gate"] + weighted_ga,
                                       rel=1e-5)


def test_the_ga_adapter_is_silent_for_a_family_without_the_weight():
    adapter = GuidedAttentionAdapter(GaAdapterConfig())
    assert adapter.on_eval(evaluation(diagonality=0.05, loss_weights={})) == []


def test_in_a_real_run_a_rate_far_too_small_is_raised_and_a_jump_of_the_weights_rolled_back(corpus_en, tmp_path):
    config = tiny_config(corpus_en, tmp_path, train={"lr": 1e-7, "max_steps": 9, "eval_every": 3},
                         adapters={"lr": {"max_lr": 1e-3, "plateau_from_diagonality": 1.0}},
                         faults={"perturb_at": [7], "perturb_scale": 3.0})
    trainer = Trainer(config, tmp_path / "run", hooks=build_adapters(config), progress=False)
    assert trainer.fit().status == "completed"
    metrics = read_metrics(tmp_path / "run")
    changes = [m["weight_change"] for m in metrics]
    # At 1e-7 the weights hardly move; the raises (x4 at each evaluation) show in the rate and the next change.
    assert changes[0] < 8e-4 and changes[1] > changes[0]
    raises = [e for e in read_events(tmp_path / "run") if e["control"] == "lr" and "too small" in e["reason"]]
    assert [e["step"] for e in raises][:2] == [3, 6]
    assert [m["lr"] for m in metrics][:3] == [1e-7, pytest.approx(4e-7), pytest.approx(1.6e-6)]  # in force
    # The noise after step 7 (3x each tensor's spread) moves the weights by far more than any update did; before
    # alignment the rate takes the blame: cut, and the run rolls back to the healthy state of step 6.
    assert changes[2] > 10 * max(changes[:2]) and changes[2] > 0.04
    undo = [e for e in read_events(tmp_path / "run") if "far too large" in e["reason"]]
    assert {e["control"] for e in undo} == {"rollback", "lr"} and all(e["applied"] and e["alarm"] for e in undo)
    assert trainer.controls.rollbacks == 1 and trainer.controls.healthy["step"] == 6
