"""The learning loop's pure parts: decision-log rows, outcome attribution, the join report,
frozen labels, logging weights and the gate's target policies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.config import TrainSettings
from training.data.datasets import WEIGHT_CAP, Dataset, TimeSplit, logging_weights, reweighted
from training.data.decision_log import (
    assignments_from_log, attribute_by_item, join_report, offers_from_log,
)
from training.data.history import label_assignments, label_offers, labelled_decisions
from training.data.snapshots import content_hash, freeze
from training.evaluation.gate import ArmShares, Exploration, logged_rows, policy_distribution

T0 = pd.Timestamp("2026-03-01T10:00:00Z")
UTC_US = "datetime64[us, UTC]"


def ts(days: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=days)


def log_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Five service decisions: d1 offers R1 (slot 0) and C1 at target 5, d2 draws no offer;
    inside experiment e1, d3 (random arm) offers R2 uniformly among 8, d4 (holdout) offers
    nothing with probability 1, and d5 is a holdout logged before its probability was."""
    decisions = pd.DataFrame({
        "decision_id": ["d1", "d2", "d3", "d4", "d5"],
        "member_id": ["m1", "m2", "m3", "m4", "m5"],
        "event_timestamp": pd.Series([ts(0), ts(0.5), ts(1), ts(1), ts(1)]).astype(UTC_US),
        "channel": "app", "arm": [None, None, "random", "holdout", "holdout"],
        "experiment_id": [None, None, "e1", "e1", "e1"], "policy": "model",
        "no_offer": [False, True, False, True, False],
        "no_offer_probability": [0.05, 0.05, np.nan, 1.0, np.nan], "model_versions": "{}",
        "features": None, "personalized": True, "cold_start": False, "degraded": False})
    items = pd.DataFrame({
        "decision_id": ["d1", "d1", "d3"], "member_id": ["m1", "m1", "m3"],
        "event_timestamp": pd.Series([ts(0), ts(0), ts(1)]).astype(UTC_US),
        "item_type": ["reward", "challenge", "reward"], "item_id": ["R1", "C1", "R2"],
        "item_rank": [0, 0, 0], "score": 1.0, "shown_probability": [0.6, 0.45, 0.125],
        "target": [np.nan, 5.0, np.nan], "target_probability": [np.nan, 0.9, np.nan],
        "cost": [2.0, np.nan, 3.0]})
    return decisions, items


def event_frame(rows: list[dict]) -> pd.DataFrame:
    cols = ["member_id", "event_timestamp", "event_type", "decision_id", "reward_id",
            "challenge_id", "amount", "category", "points", "target", "propensity",
            "received_at"]
    frame = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
    for c in ("event_timestamp", "received_at"):
        frame[c] = pd.to_datetime(frame[c], utc=True).astype(UTC_US)
    for c in ("amount", "target", "propensity"):
        frame[c] = frame[c].astype("float64")
    return frame


def test_log_rows_carry_probabilities_experiment_arms_included() -> None:
    decisions, items = log_frames()
    decisions["model_versions"] = ['{"reward":"3"}', '{"reward":"3"}', '{"reward":"2"}', "{}",
                                   "{}"]
    offers = offers_from_log(decisions, items)
    # d5, a holdout without its probability, cannot be weighted: left out
    assert sorted(offers["decision_id"]) == ["d1", "d2", "d3", "d4"]
    by_id = offers.set_index("decision_id")
    row = lambda d: (by_id.loc[d, "reward_id"], bool(by_id.loc[d, "treated"]),  # noqa: E731
                     by_id.loc[d, "propensity"])
    assert row("d1") == ("R1", True, 0.6)
    assert row("d2") == ("", False, 0.05)
    assert row("d3") == ("R2", True, 0.125)  # the random arm's uniform draw, given the arm
    assert row("d4") == ("", False, 1.0)  # the holdout: no offer with probability 1
    assert by_id["arm"].to_dict() == {"d1": "", "d2": "", "d3": "random", "d4": "holdout"}
    # which models served, for the gate's model arm (training.evaluation.gate.served_versions)
    assert by_id["model_versions"].to_dict() == {"d1": '{"reward":"3"}', "d2": '{"reward":"3"}',
                                                 "d3": '{"reward":"2"}', "d4": "{}"}
    # the off-policy gate reads experiment decisions only when it knows the experiment's arm
    # shares: given its arm a decision rules out actions (a holdout never shows a reward), over
    # the arm draw it does not (training.evaluation.gate.mixture_propensity)
    assert sorted(logged_rows(offers)["decision_id"]) == ["d1", "d2"]
    e1 = ArmShares(ts(0.9), ts(1.1), {"model": 0.8, "random": 0.1, "holdout": 0.1})
    assert sorted(logged_rows(offers, [e1])["decision_id"]) == ["d1", "d2", "d3", "d4"]
    # what the fit weighs them by: 1 / probability among the model policy's rows
    weights = logging_weights(offers.sort_values("decision_id"))
    assert weights is not None
    raw = 1 / np.array([0.6, 0.05, 0.125, 1.0])
    assert weights == pytest.approx(raw / raw.mean())
    asg = assignments_from_log(decisions, items)
    assert list(asg["challenge_id"]) == ["C1"]
    assert asg["target_probability"].iloc[0] == 0.9 and asg["source"].iloc[0] == "service"


def test_outcomes_join_by_id_then_by_member_and_item() -> None:
    decisions, items = log_frames()
    challenges = pd.DataFrame({"challenge_id": ["C1"], "duration_days": [14]})
    events = event_frame([
        # by id: a purchase and a redemption of d1 inside the window
        {"member_id": "m1", "event_timestamp": ts(1), "event_type": "purchase",
         "decision_id": "d1", "amount": 40.0, "received_at": ts(1)},
        # no id, names R1 for m1: attributed to d1 (its window is open)
        {"member_id": "m1", "event_timestamp": ts(2), "event_type": "redemption",
         "reward_id": "R1", "received_at": ts(2)},
        # no id, names C1: attributed to d1's assignment (14-day duration)
        {"member_id": "m1", "event_timestamp": ts(10), "event_type": "challenge_completed",
         "challenge_id": "C1", "received_at": ts(10)},
        # after the 7-day window: not attributed
        {"member_id": "m1", "event_timestamp": ts(9), "event_type": "redemption",
         "reward_id": "R1", "received_at": ts(9)},
        # a purchase of the no-offer member carrying the decision id: the control's outcome
        {"member_id": "m2", "event_timestamp": ts(3), "event_type": "purchase",
         "decision_id": "d2", "amount": 10.0, "received_at": ts(3)},
        # an unknown decision id
        {"member_id": "m2", "event_timestamp": ts(3), "event_type": "purchase",
         "decision_id": "zz", "amount": 5.0, "received_at": ts(3)},
    ])
    labelled = labelled_decisions(events, decisions, items, challenges, window_days=7)
    offers = labelled.offers.set_index("decision_id")
    assert offers.loc["d1", "redeemed"] == 1 and offers.loc["d1", "spend"] == 40.0
    assert offers.loc["d2", "converted"] == 1 and offers.loc["d2", "redeemed"] == 0
    assert labelled.assignments["completed"].tolist() == [1]
    matched = labelled.events["matched_by"].tolist()
    # the unknown id matched nothing (a purchase names no item to fall back on)
    assert matched == ["decision_id", "member_item", "member_item", None, "decision_id", None]

    report = join_report(labelled.events, labelled.offers, labelled.assignments,
                         as_of=ts(8), window_days=7)
    assert report.decisions["service_logged"] == 4  # d5 has nothing to learn from
    assert report.decisions["no_offer"] == 2 and report.decisions["challenge_slots"] == 1
    # d1's 14-day challenge is still open; d2 closed at 7.5 days, d3 and d4 at 8
    assert report.decisions["open_windows"] == 1
    assert report.outcomes["matched_by_decision_id"] == 2
    assert report.outcomes["matched_by_member_and_item"] == 2
    assert report.outcomes["unmatched_unknown_decision_id"] == 1
    assert report.outcomes["unmatched_no_decision_in_window"] == 1
    assert "matched by member and item" in report.text()
    # d1's label frozen at 1.5 days: its redemption and completion received later are late
    frozen = pd.Series({"d1": ts(1.5)}).astype(UTC_US)
    late = join_report(labelled.events, labelled.offers, labelled.assignments, as_of=ts(8),
                       window_days=7, labelled_at=frozen)
    assert late.outcomes["late_after_labelling"] == 2
    assert report.outcomes["late_after_labelling"] == 0


def test_without_the_fallback_an_unlabelled_redemption_is_lost() -> None:
    """The join by member and item is what counts an id-less redemption (a real difference)."""
    decisions, items = log_frames()
    offers = offers_from_log(decisions, items)
    events = event_frame([{"member_id": "m1", "event_timestamp": ts(2),
                           "event_type": "redemption", "reward_id": "R1"}])
    plain = label_offers(offers, events, 7).set_index("decision_id")
    attributed = attribute_by_item(events, offers, offers.iloc[:0], 7, pd.Series(dtype=int))
    joined = label_offers(offers, attributed, 7).set_index("decision_id")
    assert plain.loc["d1", "redeemed"] == 0 and joined.loc["d1", "redeemed"] == 1


def test_frozen_labels_never_change_and_open_windows_wait(tmp_path) -> None:  # noqa: ANN001
    frame = pd.DataFrame({
        "decision_id": ["a", "b"], "reward_id": ["R1", "R2"], "member_id": ["m1", "m2"],
        "event_timestamp": pd.Series([ts(0), ts(5)]).astype(UTC_US),
        "propensity": [0.5, 0.5], "redeemed": [0, 0], "converted": [0, 0],
        "spend": [0.0, 0.0],
        "outcome_timestamp": pd.Series([ts(7), ts(12)]).astype(UTC_US)})
    first, counts = freeze("offers", frame, tmp_path, as_of=ts(8))
    assert list(first["decision_id"]) == ["a"]
    assert counts == {"newly_labelled": 1, "frozen_reused": 0, "open_left_out": 1}
    late = frame.copy()
    late.loc[0, ["redeemed", "converted", "spend"]] = [1, 1, 30.0]  # a late outcome for a
    second, counts = freeze("offers", late, tmp_path, as_of=ts(13))
    second = second.set_index("decision_id")
    assert second.loc["a", "redeemed"] == 0 and second.loc["a", "spend"] == 0.0  # frozen
    assert counts == {"newly_labelled": 1, "frozen_reused": 1, "open_left_out": 0}
    # same content, same hash; a different label, another hash
    again, _ = freeze("offers", late, tmp_path, as_of=ts(14))
    h = content_hash({"offers": second.reset_index()})
    assert content_hash({"offers": again}) == h
    assert content_hash({"offers": late}) != h


def test_an_early_completion_waits_for_the_end_of_its_period(tmp_path) -> None:  # noqa: ANN001
    """A challenge completed on day 2 of 14 is known, but its decision closes on day 14 with
    the others of its period: else the latest decisions would train with their successes and
    without their failures."""
    decisions, items = log_frames()
    asg = assignments_from_log(decisions, items)
    asg = pd.concat([asg, asg.assign(decision_id="d9", member_id="m9")], ignore_index=True)
    events = event_frame([{"member_id": "m1", "event_timestamp": ts(2),
                           "event_type": "challenge_completed", "decision_id": "d1",
                           "challenge_id": "C1"}])
    challenges = pd.DataFrame({"challenge_id": ["C1"], "duration_days": [14]})
    labelled = label_assignments(asg, events, challenges).set_index("decision_id")
    assert labelled.loc["d1", "completed"] == 1 and labelled.loc["d9", "completed"] == 0
    assert labelled.loc["d1", "outcome_timestamp"] == ts(2)  # known at once
    assert (labelled["window_end"] == ts(14)).all()  # final when the period ends
    frame = labelled.reset_index()
    early, counts = freeze("assignments", frame, tmp_path, as_of=ts(5))
    assert early.empty and counts["open_left_out"] == 2  # the success does not go in alone
    both, counts = freeze("assignments", frame, tmp_path, as_of=ts(15))
    assert sorted(both["completed"]) == [0, 1] and counts["newly_labelled"] == 2
    report = join_report(events.assign(matched_by="decision_id"), frame.iloc[:0], frame,
                         ts(5), 7)
    assert report.decisions["open_windows"] == 2


def test_logging_weights_only_for_the_model_policy() -> None:
    rows = pd.DataFrame({"policy": ["", "cold_start", "model", "model", "model"],
                         "propensity": [np.nan, 0.1, 0.5, 0.05, 1e-6]})
    w = logging_weights(rows)
    assert w[0] == 1.0 and w[1] == 1.0
    model = w[2:]
    assert model.mean() == pytest.approx(1.0)
    assert model[1] / model[0] == pytest.approx(10.0)  # 1/p
    assert model.max() / np.median(model) <= WEIGHT_CAP + 1e-9  # 1/1e-6 is capped
    assert logging_weights(rows.assign(policy="")) is None


def test_tempered_and_no_logging_weights() -> None:
    """`REWARDS_TRAIN_LOGGING_WEIGHTS`: sqrt takes the square root of the (capped) 1/p weights,
    none drops them; rows other policies chose keep weight 1 either way."""
    rows = pd.DataFrame({"policy": ["cold_start", "model", "model", "model"],
                         "propensity": [0.1, 0.9, 0.09, 0.01]})
    sqrt = logging_weights(rows, power=0.5)
    assert sqrt[0] == 1.0 and sqrt[1:].mean() == pytest.approx(1.0)
    assert sqrt[2] / sqrt[1] == pytest.approx(np.sqrt(10.0))
    assert sqrt[3] / sqrt[1] == pytest.approx(np.sqrt(90.0))
    split = TimeSplit(*(pd.Timestamp("2026-01-01", tz="UTC"),) * 4)
    data = Dataset(np.zeros((4, 1)), np.zeros(4, dtype=np.int64), np.array(["train"] * 4),
                   rows, ["x"], [], split, None, logging_weights(rows))  # type: ignore[arg-type]
    assert reweighted(data, "inverse", "propensity") is data
    assert reweighted(data, "none", "propensity").weight is None
    np.testing.assert_allclose(reweighted(data, "sqrt", "propensity").weight, sqrt)
    assert TrainSettings().logging_weights == "sqrt"


def test_target_policy_matches_serving_randomization() -> None:
    rng = np.random.default_rng(0)
    value = rng.normal(size=(200, 6))
    eligible = rng.random((200, 6)) < 0.7
    eligible[0] = False  # nothing eligible: no offer for sure
    ex = Exploration(no_offer_share=0.05, epsilon=0.05, floor=0.02)
    pi = policy_distribution(value, eligible, ex)
    np.testing.assert_allclose(pi.sum(axis=1), 1.0, atol=1e-12)
    assert pi[0, -1] == 1.0
    assert (pi[:, :-1][~eligible] == 0).all()
    n = eligible.sum(axis=1)
    e = np.minimum(1, np.maximum(0.05, n * 0.02))
    best = np.argmax(np.where(eligible, value, -np.inf), axis=1)
    rows = np.flatnonzero(n > 0)
    np.testing.assert_allclose(pi[rows, best[rows]], 0.95 * (1 - e[rows] + e[rows] / n[rows]))
    floor_ok = pi[:, :-1][eligible] >= 0.95 * 0.02 - 1e-12
    assert floor_ok.all()


def test_gate_reads_only_the_services_first_slot() -> None:
    rows = pd.DataFrame({
        "decision_id": ["a", "a", "b", "c", "d"], "source": ["service"] * 4 + ["import"],
        "policy": ["model", "model", "cold_start", "fallback", ""],
        "slot": [0, 1, 0, 0, 0], "treated": [True, True, False, True, True]})
    assert logged_rows(rows)["decision_id"].tolist() == ["a", "b"]
    # feature files written before the arm was recorded read as outside experiments
    rows["arm"] = ["", "", "random", "", ""]
    assert logged_rows(rows)["decision_id"].tolist() == ["a"]


def test_assignments_are_labelled_before_any_challenge_was_ever_completed() -> None:
    """A new program's first assignments, with no completion in the store yet (none at all,
    or only other events): every one is labelled not completed at the end of its period."""
    decisions, items = log_frames()
    asg = assignments_from_log(decisions, items)
    challenges = pd.DataFrame({"challenge_id": ["C1"], "duration_days": [14]})
    purchase = event_frame([{"member_id": "m1", "event_timestamp": ts(1),
                             "event_type": "purchase", "decision_id": "d1", "amount": 20.0}])
    for events in (purchase, purchase.iloc[:0]):
        labelled = label_assignments(asg, events, challenges)
        assert labelled["completed"].tolist() == [0]
        assert labelled["outcome_timestamp"].tolist() == [ts(14)]
        assert str(labelled["outcome_timestamp"].dtype) == UTC_US


def test_a_window_ending_at_the_cut_is_closed_for_the_snapshot_and_the_report(
        tmp_path) -> None:  # noqa: ANN001
    """Labels count events before the window's end and the store is read before the cut: a
    window that ends exactly at the cut is final, for the snapshot as for the join report."""
    decisions, items = log_frames()
    decisions, items = decisions.iloc[:1], items.iloc[:1]  # d1's reward only
    events = event_frame([{"member_id": "m1", "event_timestamp": ts(6.9),
                           "event_type": "purchase", "decision_id": "d1", "amount": 5.0}])
    labelled = labelled_decisions(events, decisions, items,
                                  pd.DataFrame({"challenge_id": ["C1"], "duration_days": [14]}),
                                  7)
    assert labelled.offers["window_end"].tolist() == [ts(7)]
    report = join_report(labelled.events, labelled.offers, labelled.assignments, ts(7), 7)
    rows, counts = freeze("offers", labelled.offers, tmp_path, as_of=ts(7))
    assert report.decisions["open_windows"] == 0 and report.decisions["labelled"] == 1
    assert counts["newly_labelled"] == 1 and counts["open_left_out"] == 0
    assert rows["spend"].tolist() == [5.0]
    # a microsecond earlier, both wait
    early = join_report(labelled.events, labelled.offers, labelled.assignments,
                        ts(7) - pd.Timedelta(microseconds=1), 7)
    _, counts = freeze("offers", labelled.offers, tmp_path / "other",
                       as_of=ts(7) - pd.Timedelta(microseconds=1))
    assert early.decisions["open_windows"] == 1 and counts["open_left_out"] == 1


def test_an_outcome_received_while_the_build_ran_counts_as_late(tmp_path) -> None:  # noqa: ANN001
    """The labels are what the build read from the store; the snapshot is taken minutes later.
    Frozen at the read time, an outcome that arrived in between is reported late (kept, never
    relabelling) instead of being in neither the label nor the late count."""
    from training.data.snapshots import labelled_at

    decisions, items = log_frames()
    decisions, items = decisions.iloc[:1], items.iloc[:1]
    read_at = pd.Timestamp("2026-03-09T12:00:00Z")
    events = event_frame([{"member_id": "m1", "event_timestamp": ts(2), "event_type": "redemption",
                           "decision_id": "d1", "reward_id": "R1",
                           "received_at": read_at + pd.Timedelta(seconds=30)}])
    labelled = labelled_decisions(events.iloc[:0], decisions, items,
                                  pd.DataFrame({"challenge_id": ["C1"], "duration_days": [14]}),
                                  7)  # the build read the store before the redemption came
    rows, _ = freeze("offers", labelled.offers, tmp_path, as_of=ts(8), labelled_at=read_at)
    assert rows["redeemed"].tolist() == [0]
    frozen = labelled_at(tmp_path)
    assert frozen.to_dict() == {"d1": read_at}
    report = join_report(events.assign(matched_by="decision_id"), labelled.offers,
                         labelled.assignments, ts(8), 7, labelled_at=frozen)
    assert report.outcomes["late_after_labelling"] == 1


def test_the_join_report_counts_windows_and_what_each_event_can_label() -> None:
    """d1 offers R1 (a 7-day window) and assigns C1 (14 days), d2 only assigns C1. On day 11
    the reward window is closed (the snapshot trains on it) and both challenge windows are
    open; an outcome is outside the window of the rows it could label, and an id naming a
    decision that has nothing for it to label is counted apart from the matches."""
    decisions = pd.DataFrame({
        "decision_id": ["d1", "d2"], "member_id": ["m1", "m2"],
        "event_timestamp": pd.Series([ts(0), ts(0)]).astype(UTC_US), "channel": "app",
        "arm": None, "experiment_id": None, "policy": "model", "no_offer": False,
        "no_offer_probability": 0.05, "model_versions": "{}", "features": None})
    items = pd.DataFrame({
        "decision_id": ["d1", "d1", "d2"], "member_id": ["m1", "m1", "m2"],
        "event_timestamp": pd.Series([ts(0)] * 3).astype(UTC_US),
        "item_type": ["reward", "challenge", "challenge"], "item_id": ["R1", "C1", "C1"],
        "item_rank": 0, "score": 1.0, "shown_probability": 0.5,
        "target": [np.nan, 5.0, 5.0], "target_probability": [np.nan, 0.9, 0.9], "cost": 1.0})
    events = event_frame([
        # by id on day 10: past R1's 7-day window, though inside d1's challenge period
        {"member_id": "m1", "event_timestamp": ts(10), "event_type": "redemption",
         "decision_id": "d1", "reward_id": "R1"},
        {"member_id": "m1", "event_timestamp": ts(10), "event_type": "purchase",
         "decision_id": "d1", "amount": 30.0},
        # by id, a reward d1 never offered: labels nothing
        {"member_id": "m1", "event_timestamp": ts(1), "event_type": "redemption",
         "decision_id": "d1", "reward_id": "R9"},
        {"member_id": "m2", "event_timestamp": ts(2), "event_type": "challenge_completed",
         "decision_id": "d2", "challenge_id": "C1"},
        # by id, a purchase naming a challenge-only decision: labels nothing
        {"member_id": "m2", "event_timestamp": ts(1), "event_type": "purchase",
         "decision_id": "d2", "amount": 20.0}])
    labelled = labelled_decisions(events, decisions, items,
                                  pd.DataFrame({"challenge_id": ["C1"], "duration_days": [14]}), 7)
    assert labelled.offers[["redeemed", "spend"]].values.tolist() == [[0, 0.0]]
    report = join_report(labelled.events, labelled.offers, labelled.assignments, ts(11), 7)
    assert report.decisions["open_windows"] == 2 and report.decisions["labelled"] == 1
    out = report.outcomes
    assert out["matched_by_decision_id"] == 3 and out["unmatched_item_not_in_decision"] == 2
    assert out["outside_window"] == 2  # the day-10 redemption and purchase


def test_an_unknown_decision_id_falls_back_on_member_and_item() -> None:
    """By decision id, else by member and item: an id no logged decision has (another
    system's, mistyped) is no key, so a redemption naming an offered reward inside its window
    still labels that offer; one that finds nothing keeps its id and is reported unknown."""
    decisions, items = log_frames()
    challenges = pd.DataFrame({"challenge_id": ["C1"], "duration_days": [14]})
    events = event_frame([
        {"member_id": "m1", "event_timestamp": ts(2), "event_type": "redemption",
         "decision_id": "crm-123", "reward_id": "R1"},
        {"member_id": "m1", "event_timestamp": ts(3), "event_type": "challenge_completed",
         "decision_id": "crm-124", "challenge_id": "C1"},
        {"member_id": "m2", "event_timestamp": ts(2), "event_type": "redemption",
         "decision_id": "crm-125", "reward_id": "R1"}])  # m2 was offered no R1
    labelled = labelled_decisions(events, decisions, items, challenges, window_days=7)
    assert labelled.events["decision_id"].tolist() == ["d1", "d1", "crm-125"]
    assert labelled.events["matched_by"].tolist() == ["member_item", "member_item", None]
    assert labelled.offers.set_index("decision_id").loc["d1", "redeemed"] == 1
    assert labelled.assignments["completed"].tolist() == [1]
    report = join_report(labelled.events, labelled.offers, labelled.assignments, ts(15), 7)
    assert report.outcomes["matched_by_member_and_item"] == 2
    assert report.outcomes["unmatched_unknown_decision_id"] == 1


def test_the_dataset_hash_follows_what_the_features_derive_from(tmp_path) -> None:  # noqa: ANN001
    """An import of older history changes the training rows' features, so the dataset is
    another (a cron retrain trains instead of reporting nothing new); events after the last
    decision, which no training row's features can see yet, leave it as it was."""
    from training.data.snapshots import input_digest, take_snapshot, write_input_digest

    offers = pd.DataFrame({
        "decision_id": ["a"], "reward_id": ["R1"], "member_id": ["m1"],
        "event_timestamp": pd.Series([ts(5)]).astype(UTC_US), "propensity": [0.5],
        "redeemed": [0], "converted": [0], "spend": [0.0],
        "outcome_timestamp": pd.Series([ts(12)]).astype(UTC_US)})
    assignments = pd.DataFrame({
        "decision_id": ["a"], "challenge_id": ["C1"], "member_id": ["m1"],
        "event_timestamp": pd.Series([ts(5)]).astype(UTC_US), "propensity": [0.5],
        "completed": [0], "outcome_timestamp": pd.Series([ts(19)]).astype(UTC_US)})
    members = pd.DataFrame({"member_id": ["m1", "m2"], "tier": ["gold", "silver"],
                            "joined_at": pd.Series([ts(-90), ts(-30)]).astype(UTC_US),
                            "consent": pd.array([True, None], dtype="boolean"),
                            "attributes": [{"city": "Lyon", "age": 41}, None]})
    catalog = {"rewards": pd.DataFrame({"reward_id": ["R1"], "cost": [2.0]})}
    history = event_frame([
        {"member_id": "m1", "event_timestamp": ts(1), "event_type": "purchase", "amount": 9.0},
        {"member_id": "m2", "event_timestamp": ts(3), "event_type": "visit"}])

    def snapshot_id(events: pd.DataFrame, who: pd.DataFrame = members) -> str:
        features = tmp_path / "features"
        features.mkdir(exist_ok=True)
        offers.to_parquet(features / "offers.parquet")
        assignments.to_parquet(features / "assignments.parquet")
        write_input_digest(features, input_digest(who, events, catalog))
        return take_snapshot(features, tmp_path / "snapshots", ts(20)).id

    base = snapshot_id(history)
    assert snapshot_id(history) == base  # the same inputs, the same dataset
    older = event_frame([{"member_id": "m1", "event_timestamp": ts(-20),
                          "event_type": "purchase", "amount": 40.0}])
    assert snapshot_id(pd.concat([history, older], ignore_index=True)) != base
    amended = history.copy()
    amended.loc[0, "amount"] = 10.0
    assert snapshot_id(amended) != base
    later = event_frame([{"member_id": "m1", "event_timestamp": ts(6), "event_type": "visit"}])
    assert snapshot_id(pd.concat([history, later], ignore_index=True)) == base
    upgraded = members.assign(tier=["platinum", "silver"])
    assert snapshot_id(history, upgraded) != base
    joined_later = pd.concat([members, pd.DataFrame({
        "member_id": ["m3"], "tier": ["bronze"], "joined_at": pd.Series([ts(9)]).astype(UTC_US),
        "consent": pd.array([True], dtype="boolean"), "attributes": [None]})],
        ignore_index=True)
    assert snapshot_id(history, joined_later) == base  # no row of the dataset can see them
    # the order rows were read in, a dict's key order and a time's unit do not matter
    assert snapshot_id(history.iloc[::-1].reset_index(drop=True)) == base
    assert snapshot_id(history, members.assign(
        attributes=[{"age": 41, "city": "Lyon"}, None],
        joined_at=members["joined_at"].astype("datetime64[ns, UTC]"))) == base
