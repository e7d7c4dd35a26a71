"""Fast tests of the simulator on a tiny world (2,000 members x 30 days).

Statistical checks use 4 standard errors, so a correct simulator fails them about once in
15,000 runs; the seeds are fixed, so in practice they are deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pandas.testing as pdt
import pytest

from training.simulate import WorldConfig, simulate_world, truth
from training.simulate.generate.catalog import (
    CATEGORIES,
    PLAYER_TYPES,
    REWARD_TYPES,
    TIERS,
    allowed_targets,
    challenge_targets,
)

TINY = {"members": 2_000, "days": 30}
SEED = 7
FILES = (
    "members", "rewards", "challenges", "events", "offers", "assignments",
    "truth/member_traits", "truth/offers", "truth/assignments",
)
Z = 4.0  # standard errors allowed in statistical checks


def _simulate(root: Path, name: str, **overrides: object) -> Path:
    out = root / name
    config = WorldConfig.model_validate({**TINY, "seed": SEED, **overrides})
    simulate_world(config, out, progress=False)
    return out


def _read(world: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(world / f"{name}.parquet")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _simulate(tmp_path_factory.mktemp("worlds"), "a")


@pytest.fixture(scope="module")
def offers(world: Path) -> pd.DataFrame:
    """Offer log joined with its truth and the member's tier."""
    frame = _read(world, "offers").merge(_read(world, "truth/offers"), on="offer_id")
    return frame.merge(_read(world, "members")[["member_id", "tier"]], on="member_id")


@pytest.fixture(scope="module")
def response(world: Path) -> dict[str, np.ndarray]:
    return truth.reward_response(
        _read(world, "truth/member_traits"), _read(world, "members"), _read(world, "rewards"), 0.3
    )


def _assert_mean_matches(observed: np.ndarray, probability: np.ndarray, what: str) -> None:
    """Observed Bernoulli outcomes agree with their true probabilities within Z standard errors."""
    se = np.sqrt(np.sum(probability * (1 - probability))) / probability.size
    gap = observed.mean() - probability.mean()
    assert abs(gap) <= Z * se, f"{what}: observed {observed.mean():.4f} vs true " \
        f"{probability.mean():.4f} (gap {gap:.4f} > {Z} se = {Z * se:.4f})"


# --- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"members": 0}, "members"),
        ({"days": 0}, "days"),
        ({"holdout_share": 0.05}, "holdout_share"),
        ({"margin": 0.0}, "margin"),
        ({"offer_interval_days": 7, "attribution_window_days": 8}, "attribution_window_days"),
    ],
)
def test_invalid_config_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        WorldConfig.model_validate({**TINY, **overrides})


def test_world_json_describes_the_run(world: Path) -> None:
    meta = json.loads((world / "world.json").read_text())
    assert meta["seed"] == SEED and meta["members"] == TINY["members"]
    assert meta["start"] == "2026-01-01" and meta["end"] == "2026-01-31"
    for key in ("margin", "attribution_window_days", "holdout_share", "offer_interval_days",
                "challenge_interval_days", "generator_version", "days"):
        assert key in meta


# --- determinism -----------------------------------------------------------------------------
def test_same_seed_gives_identical_files(world: Path, tmp_path: Path) -> None:
    again = _simulate(tmp_path, "again")
    for name in FILES:
        pdt.assert_frame_equal(_read(world, name), _read(again, name), obj=name)
    assert (world / "world.json").read_text() == (again / "world.json").read_text()


def test_different_seeds_differ(world: Path, tmp_path: Path) -> None:
    other = _simulate(tmp_path, "other", seed=SEED + 1)
    for name in ("members", "events", "offers", "assignments", "truth/member_traits"):
        assert not _read(world, name).equals(_read(other, name)), name


# --- contract --------------------------------------------------------------------------------
def test_files_follow_the_contract(world: Path) -> None:
    rewards, challenges = _read(world, "rewards"), _read(world, "challenges")
    assert len(rewards) >= 30 and set(rewards["reward_type"]) == set(REWARD_TYPES)
    assert set(rewards["category"]) <= {*CATEGORIES, "any"}
    assert set(rewards["min_tier"]) <= set(TIERS)
    assert len(challenges) >= 12 and challenges["kind"].nunique() >= 6
    assert all(allowed_targets(row).size >= 4 for _, row in challenges.iterrows())

    start, end = pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-01-31", tz="UTC")
    for name in ("events", "offers", "assignments", "members", "rewards", "challenges"):
        frame = _read(world, name)
        for column in frame.columns:
            if "timestamp" in column or column == "signup_date":
                assert str(frame[column].dtype) == "datetime64[us, UTC]", (name, column)
    events = _read(world, "events")
    assert events["event_timestamp"].between(start, end, inclusive="left").all()
    assert set(events["event_type"]) <= {
        "visit", "purchase", "review", "referral", "redemption", "challenge_completed",
    }
    is_purchase = events["event_type"] == "purchase"
    assert (events.loc[is_purchase, "amount"] > 0).all()
    assert (events.loc[~is_purchase, "amount"] == 0).all()
    assert (events.loc[~is_purchase, "category"] == "").all()
    assert (events.loc[events["event_type"] == "redemption", "points"] < 0).all()
    assert (_read(world, "assignments")["outcome_timestamp"] < end).all()
    assert (_read(world, "offers")["outcome_timestamp"] <= end).all()
    members = _read(world, "members")
    assert members["member_id"].tolist() == list(range(1, TINY["members"] + 1))
    assert (members["signup_date"] < start).all()


def test_member_attributes_have_the_intended_mix(world: Path) -> None:
    members, traits = _read(world, "members"), _read(world, "truth/member_traits")
    n = len(members)
    for column, shares in (
        (members["tier"], dict(zip(TIERS, (0.50, 0.30, 0.15, 0.05), strict=True))),
        (traits["player_type"], dict(zip(PLAYER_TYPES, (0.30, 0.25, 0.25, 0.20), strict=True))),
    ):
        for label, share in shares.items():
            observed = (column == label).to_numpy()
            _assert_mean_matches(observed, np.full(n, share), f"share of {label}")
    _assert_mean_matches(members["consent"].to_numpy(), np.full(n, 0.9), "consent")
    activity_by_tier = traits["activity"].groupby(members["tier"]).median().reindex(TIERS)
    assert activity_by_tier.is_monotonic_increasing, activity_by_tier.to_dict()
    prefs = traits[list(truth.PREF_COLUMNS)].to_numpy()
    np.testing.assert_allclose(prefs.sum(axis=1), 1.0)
    assert traits["price_sensitivity"].between(0, 1).all() and traits["skill"].between(0, 1).all()


def test_events_agree_with_offer_outcomes(world: Path, offers: pd.DataFrame) -> None:
    events = _read(world, "events")
    assert not (offers["redeemed"] > offers["converted"]).any()
    assert not ((offers["redeemed"] == 1) & ~offers["treated"]).any()
    purchases = events[events["event_type"] == "purchase"]
    joined = offers[["offer_id", "member_id", "event_timestamp", "outcome_timestamp"]].merge(
        purchases[["member_id", "event_timestamp", "amount"]], on="member_id", suffixes=("", "_p")
    )
    inside = joined[
        (joined["event_timestamp_p"] >= joined["event_timestamp"])
        & (joined["event_timestamp_p"] < joined["outcome_timestamp"])
    ]
    spend = inside.groupby("offer_id")["amount"].sum().reindex(offers["offer_id"], fill_value=0)
    np.testing.assert_allclose(spend.to_numpy(), offers["spend"].to_numpy(), atol=0.02)
    assert ((spend.to_numpy() > 0) == (offers["converted"].to_numpy() == 1)).all()
    redemptions = events[events["event_type"] == "redemption"]
    assert len(redemptions) == offers["redeemed"].sum()
    redeemed = offers.loc[offers["redeemed"] == 1, "reward_id"]
    assert sorted(redemptions["reward_id"]) == sorted(redeemed)
    completions = (events["event_type"] == "challenge_completed").sum()
    assert completions == _read(world, "assignments")["completed"].sum()


# --- logging policy --------------------------------------------------------------------------
def test_holdout_share_matches_config(offers: pd.DataFrame) -> None:
    holdout = ~offers["treated"]
    assert (offers.loc[holdout, "reward_id"] == "").all()
    assert np.allclose(offers.loc[holdout, "propensity"], 0.15)
    _assert_mean_matches(holdout.to_numpy(), np.full(len(offers), 0.15), "holdout share")
    assert holdout.mean() >= 0.10 - Z * np.sqrt(0.15 * 0.85 / len(offers))


def test_propensities_match_empirical_offer_rates(world: Path, offers: pd.DataFrame) -> None:
    rewards = _read(world, "rewards")
    tier = offers["tier"].map(TIERS.index).to_numpy()
    min_tier = rewards["min_tier"].map(TIERS.index).to_numpy()
    eligible = tier[:, None] >= min_tier[None, :]
    p_logged = 0.85 * eligible / eligible.sum(axis=1, keepdims=True)  # P(reward | decision)

    treated = offers["treated"].to_numpy()
    chosen = rewards["reward_id"].tolist()
    column = offers.loc[treated, "reward_id"].map(chosen.index).to_numpy()
    assert eligible[np.flatnonzero(treated), column].all(), "offered a reward above the tier"
    np.testing.assert_allclose(
        offers.loc[treated, "propensity"].to_numpy(), p_logged[np.flatnonzero(treated), column]
    )
    observed = np.bincount(column, minlength=len(rewards))
    expected = p_logged.sum(axis=0)
    se = np.sqrt((p_logged * (1 - p_logged)).sum(axis=0))
    assert np.all(np.abs(observed - expected) <= Z * se), (observed, expected.round(1))


def test_assignments_are_uniform_over_templates_then_targets(world: Path) -> None:
    assignments = _read(world, "assignments")
    challenges = _read(world, "challenges")
    pairs = challenge_targets(challenges)
    n_targets = assignments["challenge_id"].map(pairs.groupby("challenge_id").size())
    expected = 1.0 / (len(challenges) * n_targets)
    np.testing.assert_allclose(assignments["propensity"].to_numpy(), expected.to_numpy())
    logged = set(zip(assignments["challenge_id"], assignments["target"], strict=True))
    assert logged <= set(zip(pairs["challenge_id"], pairs["target"], strict=True))


# --- truth agrees with outcomes ---------------------------------------------------------------
def test_truth_matches_offer_outcomes(offers: pd.DataFrame) -> None:
    treated, holdout = offers[offers["treated"]], offers[~offers["treated"]]
    _assert_mean_matches(
        treated["redeemed"].to_numpy(), treated["p_redeem"].to_numpy(), "redemption"
    )
    _assert_mean_matches(
        treated["converted"].to_numpy(), treated["p_convert_offer"].to_numpy(),
        "treated conversion",
    )
    _assert_mean_matches(
        holdout["converted"].to_numpy(), holdout["p_convert_control"].to_numpy(),
        "holdout conversion",
    )
    assert (holdout["true_uplift"] == 0).all() and (holdout["p_redeem"] == 0).all()


def test_truth_matches_completions(world: Path) -> None:
    assignments = _read(world, "assignments").merge(
        _read(world, "truth/assignments"), on="assignment_id"
    )
    _assert_mean_matches(
        assignments["completed"].to_numpy(), assignments["p_complete"].to_numpy(), "completion"
    )
    recomputed = truth.completion_probability(
        _read(world, "truth/member_traits"), _read(world, "challenges"),
        assignments["member_id"].to_numpy(), assignments["challenge_id"].to_numpy(),
        assignments["target"].to_numpy(),
    )
    np.testing.assert_allclose(recomputed, assignments["p_complete"].to_numpy())


def test_logged_truth_equals_truth_functions(
    world: Path, offers: pd.DataFrame, response: dict[str, np.ndarray]
) -> None:
    treated = offers[offers["treated"]]
    rows = treated["member_id"].to_numpy() - 1
    columns = treated["reward_id"].map(_read(world, "rewards")["reward_id"].tolist().index)
    for key in ("p_redeem", "p_convert_offer", "p_convert_control", "basket_value"):
        np.testing.assert_allclose(
            treated[key].to_numpy(), response[key][rows, columns], err_msg=key
        )
    np.testing.assert_allclose(
        treated["true_incremental_value"].to_numpy(),
        response["incremental_value"][rows, columns],
    )


def test_completion_probability_strictly_decreases_in_target(world: Path) -> None:
    traits, challenges = _read(world, "truth/member_traits"), _read(world, "challenges")
    members = traits["member_id"].to_numpy()[:50]
    for _, template in challenges.iterrows():
        grid = np.linspace(template["min_target"], template["max_target"], 25)
        member_id = np.repeat(members, grid.size)
        target = np.tile(grid, members.size)
        p = truth.completion_probability(
            traits, challenges, member_id, np.full(member_id.size, template["challenge_id"]), target
        ).reshape(members.size, grid.size)
        assert np.all(np.diff(p, axis=1) < 0), template["challenge_id"]


def test_targets_span_easy_to_hard_for_typical_members(world: Path) -> None:
    """The flow zone (0.7) must fall inside the target range, at member-specific targets."""
    traits, challenges = _read(world, "truth/member_traits"), _read(world, "challenges")
    pairs = challenge_targets(challenges)
    first, last = pairs.groupby("challenge_id").first(), pairs.groupby("challenge_id").last()
    ids = np.repeat(traits["member_id"].to_numpy(), len(first))
    template = np.tile(first.index.to_numpy(), len(traits))
    easiest = truth.completion_probability(
        traits, challenges, ids, template, np.tile(first["target"].to_numpy(), len(traits))
    )
    hardest = truth.completion_probability(
        traits, challenges, ids, template, np.tile(last["target"].to_numpy(), len(traits))
    )
    assert np.median(easiest) > 0.85 and np.median(hardest) < 0.35


# --- heterogeneity: personalization must matter ------------------------------------------------
def test_oracle_best_reward_is_heterogeneous(world: Path, response: dict[str, np.ndarray]) -> None:
    rewards, traits = _read(world, "rewards"), _read(world, "truth/member_traits")
    value = np.where(response["eligible"], response["incremental_value"], -np.inf)
    best = value.argmax(axis=1)
    assert np.unique(best).size >= 5
    best_type = pd.Series(rewards["reward_type"].to_numpy()[best])
    modal = best_type.groupby(traits["player_type"].to_numpy()).agg(lambda s: s.mode()[0])
    assert set(modal.index) == set(PLAYER_TYPES)
    assert modal.nunique() >= 3, modal.to_dict()


def test_personalization_beats_simple_policies(response: dict[str, np.ndarray]) -> None:
    eligible, value = response["eligible"], response["incremental_value"]
    oracle = np.where(eligible, value, -np.inf).max(axis=1).mean()
    random = (np.where(eligible, value, 0.0).sum(axis=1) / eligible.sum(axis=1)).mean()
    for_everyone = np.flatnonzero(eligible.all(axis=0))
    one_size = value[:, for_everyone].mean(axis=0).max()
    by_propensity = np.where(eligible, response["p_redeem"], -1).argmax(axis=1)
    propensity_only = value[np.arange(value.shape[0]), by_propensity].mean()
    assert oracle > 0 and random > 0
    assert oracle >= 3 * random
    assert one_size < 0.8 * oracle
    assert propensity_only < 0.85 * oracle


def test_reward_response_shapes_and_identity(response: dict[str, np.ndarray]) -> None:
    shape = response["p_redeem"].shape
    for key in ("p_convert_offer", "p_convert_control", "basket_value", "incremental_value",
                "eligible"):
        assert response[key].shape == shape, key
    assert np.all(response["p_redeem"] <= response["p_convert_offer"])
    uplift = response["p_convert_offer"] - response["p_convert_control"]
    assert (uplift < 0).any() and (uplift > 0).mean() > 0.5


def test_only_a_world_with_its_truth_offers_oracle_and_live_runs(world: Path,
                                                                 tmp_path: Path) -> None:
    """The oracle and live periods need the hidden truth; a copy without it (what a real
    program's import looks like) is recognized as such, and its player types are unknown."""
    import shutil

    from training.simulate import oracle
    from training.simulate.live import missing_world

    assert oracle.available(world) and missing_world(world) is None
    types = oracle.player_types(world)
    assert types is not None and list(types.columns) == ["member_id", "player_type"]
    assert set(types["player_type"]) == set(PLAYER_TYPES)
    assert len(types) == TINY["members"]

    real = tmp_path / "real"
    shutil.copytree(world, real, ignore=shutil.ignore_patterns("truth"))
    assert not oracle.available(real) and oracle.player_types(real) is None
    assert "no hidden truth" in (missing_world(real) or "")
    assert "world.json missing" in (missing_world(tmp_path / "nothing") or "")
