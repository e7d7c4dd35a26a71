"""Known-answer and simulation tests for training.evaluation.metrics (fast, synthetic data only)."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import pytest
from sklearn.calibration import calibration_curve as sk_calibration_curve
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from training.evaluation import metrics

Binning = Literal["uniform", "quantile"]

# A six-row uplift example small enough to compute by hand. Scores 0.8 tie (rows 1 and 2), so the
# curves have a point only after the tie block: cutoffs at N = 1, 3, 4, 5, 6.
Y = np.array([1, 0, 1, 0, 1, 0])
T = np.array([1, 0, 1, 1, 0, 0])
S = np.array([0.9, 0.8, 0.8, 0.5, 0.3, 0.1])


# --- AUC -------------------------------------------------------------------------------------


def test_auc_hand_computed() -> None:
    # Positive pairs won: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4); lost (0.35 < 0.4): 3/4.
    assert metrics.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    score = np.round(rng.normal(size=300) + y, 1)  # coarse rounding creates many ties
    assert metrics.auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)


# --- log loss --------------------------------------------------------------------------------


def test_log_loss_hand_computed_and_matches_sklearn() -> None:
    prob = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.25, 0.25, 0.5]])
    y = np.array([0, 1, 2])
    assert metrics.log_loss(y, prob) == pytest.approx(-np.log([0.7, 0.8, 0.5]).mean(), abs=1e-12)
    w = np.array([1.0, 2.0, 3.0])
    assert metrics.log_loss(y, prob, w) == pytest.approx(
        -(np.log(0.7) + 2 * np.log(0.8) + 3 * np.log(0.5)) / 6, abs=1e-12)
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(3), 500)
    labels = rng.integers(0, 3, 500)
    weight = rng.uniform(0.1, 5, 500)
    assert metrics.log_loss(labels, p, weight) == pytest.approx(
        sk_log_loss(labels, p, sample_weight=weight, labels=[0, 1, 2]), abs=1e-9)
    # one confident miss costs -log(eps), not infinity
    assert metrics.log_loss([1], [[1.0, 0.0]]) == pytest.approx(-np.log(1e-6))


def test_log_loss_names_the_bad_argument() -> None:
    with pytest.raises(ValueError, match="prob"):
        metrics.log_loss([0, 1], [0.5, 0.5])
    with pytest.raises(ValueError, match="y_true"):
        metrics.log_loss([0, 3], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="weight"):
        metrics.log_loss([0, 1], [[0.5, 0.5], [0.5, 0.5]], [1.0, -1.0])


# --- calibration -----------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_is_zero_when_each_bin_is_calibrated(strategy: Binning) -> None:
    prob = [0.25] * 4 + [0.75] * 4
    y = [1, 0, 0, 0] + [1, 1, 1, 0]
    assert metrics.expected_calibration_error(y, prob, 2, strategy) == pytest.approx(0.0)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_hand_computed(strategy: Binning) -> None:
    # Bin 0.2 observes 3/5 (gap 0.4), bin 0.9 observes 5/5 (gap 0.1): (5 * 0.4 + 5 * 0.1) / 10.
    prob = [0.2] * 5 + [0.9] * 5
    y = [1, 1, 1, 0, 0] + [1] * 5
    mean_pred, frac_pos, counts = metrics.calibration_curve(y, prob, 2, strategy)
    np.testing.assert_allclose(mean_pred, [0.2, 0.9])
    np.testing.assert_allclose(frac_pos, [0.6, 1.0])
    np.testing.assert_array_equal(counts, [5, 5])
    assert metrics.expected_calibration_error(y, prob, 2, strategy) == pytest.approx(0.25)


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_calibration_curve_matches_sklearn(strategy: Binning) -> None:
    rng = np.random.default_rng(0)
    prob = np.round(rng.beta(1, 4, 1000), 2)  # skewed and tied, like conversion scores
    y = rng.binomial(1, prob)
    expected_frac, expected_pred = sk_calibration_curve(y, prob, n_bins=8, strategy=strategy)
    mean_pred, frac_pos, _ = metrics.calibration_curve(y, prob, 8, strategy)
    np.testing.assert_allclose(mean_pred, expected_pred)
    np.testing.assert_allclose(frac_pos, expected_frac)


# --- uplift ----------------------------------------------------------------------------------


def test_qini_curve_hand_computed() -> None:
    # N   N_T Y_T N_C Y_C   Y_T - Y_C * N_T / N_C
    # 1   1   1   0   0     1   (no control yet: 0 term)
    # 3   2   2   1   0     2
    # 4   3   2   1   0     2
    # 5   3   2   2   1     2 - 1 * 3/2 = 0.5
    # 6   3   2   3   1     2 - 1 * 3/3 = 1
    x, qini = metrics.qini_curve(Y, T, S)
    np.testing.assert_allclose(x, [0, 1 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    np.testing.assert_allclose(qini, [0, 1, 2, 2, 0.5, 1])


def test_uplift_curve_hand_computed() -> None:
    # (Y_T / N_T - Y_C / N_C) * N at the same cutoffs: 1, 3, (2/3)*4, (2/3 - 1/2)*5, (1/3)*6.
    x, uplift = metrics.uplift_curve(Y, T, S)
    np.testing.assert_allclose(x, [0, 1 / 6, 3 / 6, 4 / 6, 5 / 6, 1])
    np.testing.assert_allclose(uplift, [0, 1, 3, 8 / 3, 5 / 6, 2])


def test_curves_do_not_depend_on_row_order_within_ties() -> None:
    swapped = [0, 2, 1, 3, 4, 5]  # swap the two rows scored 0.8
    for curve in (metrics.qini_curve, metrics.uplift_curve):
        np.testing.assert_allclose(curve(Y, T, S), curve(Y[swapped], T[swapped], S[swapped]))


def test_auc_scores_hand_computed() -> None:
    # Areas in row-count units (the ratio does not depend on the x scale). Random line to (6, 1):
    # 3. Model Qini area 7.5. Perfect score y*t - y*(1-t) gives points (2, 2), (5, 2), (6, 1):
    # area 9.5. (7.5 - 3) / (9.5 - 3) = 9/13.
    assert metrics.qini_auc_score(Y, T, S) == pytest.approx(9 / 13)
    # Without negative effects the perfect curve is (0,0) -> (1/6, 1) -> (1, 1): area 11/12 in
    # fraction units, random 1/2, model 7.5/6. (1.25 - 0.5) / (11/12 - 0.5) = 1.8.
    assert metrics.qini_auc_score(Y, T, S, negative_effect=False) == pytest.approx(1.8)
    # Uplift: random line to (6, 2) has area 6, model 10.5, perfect 43/3: 4.5 / (25/3) = 0.54.
    assert metrics.uplift_auc_score(Y, T, S) == pytest.approx(0.54)


def test_perfect_score_beats_model_beats_random() -> None:
    rng = np.random.default_rng(7)
    n = 4000
    x = rng.uniform(size=n)
    true_uplift = 0.3 * x - 0.1  # harms low-x users, helps high-x users
    treatment = rng.integers(0, 2, n)
    y = rng.binomial(1, 0.3 + treatment * true_uplift)

    perfect = metrics.qini_auc_score(y, treatment, y * treatment - y * (1 - treatment))
    oracle = metrics.qini_auc_score(y, treatment, true_uplift)
    random = [metrics.qini_auc_score(y, treatment, rng.uniform(size=n)) for _ in range(20)]

    assert perfect == pytest.approx(1.0)
    assert np.mean(random) == pytest.approx(0.0, abs=0.02)
    assert oracle > np.mean(random) + 4 * np.std(random)
    assert metrics.uplift_auc_score(y, treatment, true_uplift) > 0


@pytest.mark.parametrize(
    ("k", "strategy", "expected"),
    [
        (0.5, "overall", 1.0),  # top 3 rows 0, 2, 1: treated 2/2 - control 0/1
        (0.7, "overall", 2 / 3),  # int(6 * 0.7) = 4 rows: treated 2/3 - control 0/1
        (4, "overall", 2 / 3),
        (2, "by_group", 0.5),  # treated rows 0, 2: 2/2; control rows 1, 4: 1/2
        (0.5, "by_group", 1.0),  # int(3 * 0.5) = 1 per group: row 0 vs row 1
    ],
)
def test_uplift_at_k_hand_computed(
    k: float, strategy: Literal["overall", "by_group"], expected: float
) -> None:
    assert metrics.uplift_at_k(Y, T, S, k=k, strategy=strategy) == pytest.approx(expected)


# --- treatment effects and intervals ---------------------------------------------------------


def test_ate_hand_computed() -> None:
    # Means 3.5 - 1.5; Welch se = sqrt(0.5/2 + 0.5/2).
    ate, low, high, p_value = metrics.ate_difference_in_means([1, 2, 3, 4], [0, 0, 1, 1])
    half_width = 1.959964 * np.sqrt(0.5)
    assert (ate, low, high) == pytest.approx((2.0, 2.0 - half_width, 2.0 + half_width))
    assert p_value == pytest.approx(2 * (1 - 0.997661), abs=1e-5)  # z = 2 / sqrt(0.5) = 2.83


def test_ate_ci_coverage() -> None:
    rng = np.random.default_rng(42)
    true_effect, n = 0.05, 400
    covered = 0
    for _ in range(400):
        treatment = rng.integers(0, 2, n)
        y = rng.binomial(1, 0.3 + true_effect * treatment)
        _, low, high, _ = metrics.ate_difference_in_means(y, treatment)
        covered += low <= true_effect <= high
    assert 0.92 <= covered / 400 <= 0.98


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [(50, 100, 0.4038, 0.5962), (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0)],
)
def test_wilson_interval_known_values(successes: int, n: int, low: float, high: float) -> None:
    estimate = metrics.proportion_ci(successes, n)
    assert estimate.value == pytest.approx(successes / n)
    assert (estimate.ci_low, estimate.ci_high) == pytest.approx((low, high), abs=1e-4)


def test_mean_ci_uses_student_t() -> None:
    # Mean 2, sd 1, n 3: half width t(0.975, 2) / sqrt(3) = 4.302653 / 1.732051.
    estimate = metrics.mean_ci([1.0, 2.0, 3.0])
    expected = (2.0, 2.0 - 2.484138, 2.0 + 2.484138)
    assert (estimate.value, estimate.ci_low, estimate.ci_high) == pytest.approx(expected)


# --- off-policy evaluation -------------------------------------------------------------------

# Three equally likely context types, three actions. Expected reward per (context, action):
MEAN_REWARD = np.array([[0.1, 0.5, 0.3], [0.6, 0.2, 0.4], [0.3, 0.3, 0.8]])
LOGGING = np.array([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]])  # covers every action
TARGETS = {
    "deterministic": np.eye(3)[MEAN_REWARD.argmax(axis=1)],  # greedy policy
    "stochastic": np.array([[0.1, 0.8, 0.1], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]),
}


@dataclass(frozen=True)
class BanditLog:
    """Logged rows plus a perfect reward model's predictions."""

    rewards: np.ndarray
    logged_propensity: np.ndarray
    target_prob: np.ndarray
    q_logged: np.ndarray
    q_target: np.ndarray

    def ips(self) -> metrics.Estimate:
        return metrics.ips(self.rewards, self.logged_propensity, self.target_prob)

    def snips(self) -> metrics.Estimate:
        return metrics.snips(self.rewards, self.logged_propensity, self.target_prob)

    def doubly_robust(self, q_logged: np.ndarray, q_target: np.ndarray) -> metrics.Estimate:
        return metrics.doubly_robust(
            self.rewards, self.logged_propensity, self.target_prob, q_logged, q_target
        )


def _simulate_log(
    rng: np.random.Generator, target: np.ndarray, n: int, noisy: bool = True
) -> BanditLog:
    context = rng.integers(0, 3, n)
    action = (rng.uniform(size=(n, 1)) > LOGGING[context].cumsum(axis=1)).sum(axis=1)
    mean = MEAN_REWARD[context, action]
    return BanditLog(
        rewards=rng.binomial(1, mean).astype(float) if noisy else mean,
        logged_propensity=LOGGING[context, action],
        target_prob=target[context, action],
        q_logged=mean,
        q_target=(target * MEAN_REWARD).sum(axis=1)[context],
    )


@pytest.mark.parametrize("policy", TARGETS)
def test_off_policy_estimators_recover_true_value(policy: str) -> None:
    target = TARGETS[policy]
    true_value = (target * MEAN_REWARD).sum(axis=1).mean()
    rng = np.random.default_rng(3)
    estimates: dict[str, list[float]] = {"ips": [], "snips": [], "dr": [], "dr_wrong_model": []}
    for _ in range(200):
        log = _simulate_log(rng, target, n=500)
        estimates["ips"].append(log.ips().value)
        estimates["snips"].append(log.snips().value)
        estimates["dr"].append(log.doubly_robust(log.q_logged, log.q_target).value)
        # DR stays unbiased with a useless reward model because the propensities are right.
        useless = np.full(500, 0.5)
        estimates["dr_wrong_model"].append(log.doubly_robust(useless, useless).value)
    for name, values in estimates.items():
        standard_error = np.std(values) / np.sqrt(len(values))
        assert np.mean(values) == pytest.approx(true_value, abs=4 * standard_error + 1e-3), name


def test_doubly_robust_with_perfect_model_has_no_action_noise() -> None:
    rng = np.random.default_rng(5)
    dr_values, ips_values = [], []
    for _ in range(50):
        log = _simulate_log(rng, TARGETS["stochastic"], n=500, noisy=False)
        dr = log.doubly_robust(log.q_logged, log.q_target)
        # Correction terms vanish: only the spread of q_target across sampled contexts remains.
        assert dr.value == pytest.approx(log.q_target.mean())
        dr_values.append(dr.value)
        ips_values.append(log.ips().value)
    assert np.std(dr_values) < np.std(ips_values) / 3


def test_off_policy_ci_contains_estimate() -> None:
    log = _simulate_log(np.random.default_rng(0), TARGETS["stochastic"], n=300)
    for estimate in (log.ips(), log.snips(), log.doubly_robust(log.q_logged, log.q_target)):
        assert estimate.ci_low < estimate.value < estimate.ci_high


# --- held-out evaluation helpers ------------------------------------------------------------


def test_eligible_rewards_is_servings_min_tier_rule() -> None:
    import pandas as pd

    from training.evaluation.evaluate import eligible_rewards

    members = pd.DataFrame({"tier_rank": [0.0, 1.0, 3.0]})
    items = pd.DataFrame({"reward_min_tier_rank": np.array([0, 1, 2], dtype=np.float32)})
    assert eligible_rewards(members, items).tolist() == [
        [True, False, False], [True, True, False], [True, True, True]]


def test_uniform_eligible_draws_only_eligible_rewards_uniformly() -> None:
    from training.evaluation.reward import uniform_eligible

    rng = np.random.default_rng(0)
    eligible = rng.random((400, 12)) < 0.4
    eligible[:, 3] = True  # every row has at least one
    draws = np.stack([uniform_eligible(eligible, rng) for _ in range(200)], axis=1)
    assert eligible[np.arange(400)[:, None], draws].all()
    # one row's 200 draws spread evenly over its eligible columns (chi-square, p >> 1e-4)
    row = np.flatnonzero(eligible[0])
    counts = np.bincount(draws[0], minlength=12)[row]
    expected = 200 / row.size
    assert ((counts - expected) ** 2 / expected).sum() < 3 * row.size + 20


def test_flow_zone_calibration_measures_the_gap_near_the_flow_zone() -> None:
    from training.evaluation.difficulty import flow_zone_calibration

    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, 40_000)
    near = np.abs(p - 0.7) <= 0.1
    calibrated = flow_zone_calibration(rng.binomial(1, p), p, 0.7)
    assert calibrated["difficulty.flow_zone_rows"] == near.sum()
    assert calibrated["difficulty.flow_zone_calibration_gap"] < 0.015
    # overconfident by 0.1 near the flow zone only: the gap shows it, whatever happens elsewhere
    truth = np.where(near, p - 0.1, rng.uniform(0, 1, p.size))
    shifted = flow_zone_calibration(rng.binomial(1, truth), p, 0.7)
    assert shifted["difficulty.flow_zone_calibration_gap"] == pytest.approx(0.1, abs=0.015)
    assert shifted["difficulty.flow_zone_observed_rate"] == pytest.approx(0.6, abs=0.015)
    # nothing predicted near the flow zone: a count of zero and no gap (not a made-up 0)
    assert flow_zone_calibration(np.array([0, 1]), np.array([0.1, 0.2]), 0.7) == {
        "difficulty.flow_zone_rows": 0.0}


# --- validation ------------------------------------------------------------------------------

BOGUS = cast(Any, "bogus")  # a strategy outside the Literal; Any so type checkers let it through


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: metrics.auc([0, 1], [0.1]), "equal lengths"),
        (lambda: metrics.auc([[0, 1]], [[0.1, 0.2]]), "^y_true:"),
        (lambda: metrics.auc([0, 2], [0.1, 0.2]), "^y_true:"),
        (lambda: metrics.auc([1, 1], [0.1, 0.2]), "^y_true:"),
        (lambda: metrics.expected_calibration_error([0, 1], [0.1, 1.5]), "^prob:"),
        (lambda: metrics.expected_calibration_error([0, 1], [0.1, 0.5], n_bins=0), "^n_bins:"),
        (lambda: metrics.calibration_curve([0, 1], [0.1]), "equal lengths"),
        (lambda: metrics.calibration_curve([0, 1], [0.1, 0.5], 2, BOGUS), "^strategy:"),
        (lambda: metrics.qini_curve(Y, [2, 0, 1, 1, 0, 0], S), "^treatment:"),
        (lambda: metrics.qini_auc_score(Y, np.ones(6), S), "^treatment:"),
        (lambda: metrics.uplift_curve(Y, T, [np.nan, 1, 2, 3, 4, 5]), "^uplift_score:"),
        (lambda: metrics.uplift_auc_score(Y[:5], T, S), "equal lengths"),
        (lambda: metrics.uplift_at_k(Y, T, S, k=1.0), "^k:"),
        (lambda: metrics.uplift_at_k(Y, T, S, k=6), "^k:"),
        (lambda: metrics.uplift_at_k(Y, T, S, k=2), "^k:"),  # top 2 rows are all treated
        (lambda: metrics.uplift_at_k(Y, T, S, k=4, strategy="by_group"), "^k:"),
        (lambda: metrics.uplift_at_k(Y, T, S, strategy=BOGUS), "^strategy:"),
        (lambda: metrics.ate_difference_in_means([1, 2, 3], [0, 1, 1]), "^treatment:"),
        (lambda: metrics.ate_difference_in_means([1, 2, 3, 4], [0, 0, 1, 1], alpha=0), "^alpha:"),
        (lambda: metrics.proportion_ci(11, 10), "^successes:"),
        (lambda: metrics.proportion_ci(0, 0), "^n:"),
        (lambda: metrics.mean_ci([1.0]), "^values:"),
        (lambda: metrics.ips([1, 0], [0.5, 0.0], [1, 1]), "^logged_propensity:"),
        (lambda: metrics.snips([1, 0], [0.5, 1.5], [1, 1]), "^logged_propensity:"),
        (lambda: metrics.ips([1, 0], [0.5, 0.5], [1, -0.1]), "^target_prob:"),
        (lambda: metrics.snips([1, 0], [0.5, 0.5], [0, 0]), "^target_prob:"),
        (lambda: metrics.doubly_robust([1, 0], [1, 1], [1, 0], [0, 0], [0]), "equal lengths"),
    ],
)
def test_invalid_inputs_raise(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
