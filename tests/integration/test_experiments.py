"""Uplift experiments against the real service on a small trained world: the routes, arms
applied in decisions, a live period answered by the simulator's hidden truth, the report (JSON,
HTML, CLI + MLflow), and the page in a real headless Chromium."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from serving.config import ServeSettings, StoreSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "test-output" / "experiment_report.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def store(trained_store) -> StoreSettings:  # noqa: ANN001
    return trained_store[0]


@pytest.fixture(scope="module")
def settings(store: StoreSettings) -> ServeSettings:
    # the default location (<data>/events.db), so the CLI finds the same store with --data-dir
    return ServeSettings(events_url=f"sqlite:///{store.data / 'events.db'}",
                         model_poll_seconds=0, seed=3)


@pytest.fixture(scope="module")
def client(store: StoreSettings, settings: ServeSettings, make_api_key  # noqa: ANN001
           ) -> Iterator[TestClient]:
    from serving.main import create_app

    key = make_api_key(settings.events_url, "recommend", "events", "experiments:read",
                       "experiments:write")
    with TestClient(create_app(store, settings), base_url="https://testserver",
                    headers={"Authorization": f"Bearer {key}"}) as c:
        # the HTML pages take a signed session cookie, never the key: sign in like a marketer
        r = c.post("/login", data={"key": key, "next": "/"}, follow_redirects=False)
        assert r.status_code == 303, r.text
        yield c


def _body(**over: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"name": "Live test", "arms": [{"name": "model", "share": 0.6},
                                          {"name": "random", "share": 0.1},
                                          {"name": "holdout", "share": 0.3}],
            "start": (now - timedelta(minutes=1)).isoformat(),
            "end": (now + timedelta(days=2)).isoformat(),
            "primary_metric": "redemption", "attribution_window_days": 7, **over}


@pytest.fixture(scope="module")
def live(client: TestClient, store: StoreSettings) -> dict[str, Any]:
    """An active experiment and a live period: every world member visits once."""
    from training.simulate.live import simulate_live

    # A fixed salt (chosen once, not tuned) makes the arms, hence the whole run, reproducible:
    # one 95% interval misses the truth 1 time in 20 by design, and a test must not flicker.
    # Coverage itself is tested on repeated draws in tests/unit/test_experiment_stats.py.
    r = client.post("/v1/experiments", json=_body(description="e2e on the simulator",
                                                  salt="e2e-live-period"))
    assert r.status_code == 201, r.text
    exp = r.json()
    members = len(pd.read_parquet(store.world_dir / "members.parquet"))
    truth = simulate_live(client, store.world_dir, exp["id"], members=members, seed=1)
    svc = client.app.state.services
    deadline = time.monotonic() + 10
    while len(svc.events.exposures(exp["id"])) < members:  # group-committed in the background
        assert time.monotonic() < deadline, "exposures were not committed"
        time.sleep(0.05)
    report = client.get(f"/v1/experiments/{exp['id']}/report")
    assert report.status_code == 200, report.text
    return {"experiment": exp, "truth": truth, "report": report.json()}


# --- routes ---------------------------------------------------------------------------------------


def test_create_list_and_get(client: TestClient, live: dict[str, Any]) -> None:
    exp = live["experiment"]
    assert exp["salt"] == "e2e-live-period" and [a["name"] for a in exp["arms"]] == [
        "model", "random", "holdout"]
    listed = client.get("/v1/experiments").json()["experiments"]
    assert exp["id"] in [e["id"] for e in listed]
    assert client.get(f"/v1/experiments/{exp['id']}").json() == exp


@pytest.mark.parametrize(("over", "field"), [
    ({"arms": [{"name": "model", "share": 0.7}, {"name": "holdout", "share": 0.2}]}, "body.arms"),
    ({"arms": [{"name": "model", "share": 0.5}, {"name": "treat", "share": 0.5}]},
     "body.arms.1.name"),
    ({"arms": [{"name": "model", "share": 1.5}, {"name": "holdout", "share": -0.5}]},
     "body.arms.0.share"),
    ({"end": "2020-01-01T00:00:00+00:00"}, "body.end"),
    ({"start": "2031-01-01T00:00:00"}, "body.start"),
    ({"primary_metric": "clicks"}, "body.primary_metric"),
    ({"attribution_window_days": 365}, "body.attribution_window_days"),
    ({"name": "x" * 81}, "body.name"),
    ({"surprise": 1}, "body.surprise"),
])
def test_bad_definitions_name_the_field(client: TestClient, over: dict, field: str) -> None:
    r = client.post("/v1/experiments", json=_body(**over))
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]]


def test_overlap_unknown_and_malformed_ids(client: TestClient, live: dict[str, Any]) -> None:
    r = client.post("/v1/experiments", json=_body(name="Overlapping"))
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "body.start"
    r = client.get("/v1/experiments/nope-123/report")
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "path.experiment_id"
    r = client.get("/v1/experiments/bad%20id!")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "path.experiment_id"
    assert client.get("/experiments/nope-123").status_code == 404


# --- arms in decisions ----------------------------------------------------------------------------


def test_arm_is_applied_and_returned(client: TestClient, live: dict[str, Any]) -> None:
    from serving.experiments.definition import Experiment

    exp = Experiment.model_validate(live["experiment"])
    seen: dict[str, int] = {}
    for member_id in map(str, range(1, 120)):
        body = client.post("/v1/recommendations", json={
            "member_id": member_id, "k_rewards": 2, "k_challenges": 2}).json()
        arm = body["experiment_arm"]
        assert arm == exp.arm_of(member_id)  # stable: recomputed from the salt alone
        assert body["experiment_id"] == exp.id
        seen[arm] = seen.get(arm, 0) + 1
        if arm == "holdout":
            assert body["rewards"] == [] and body["challenges"] == []
        elif arm == "random":
            assert all("random arm" in r["reason"] for r in body["rewards"])
            assert body["rewards"] and all(0 < r["shown_probability"] <= 1
                                           for r in body["rewards"])
        else:
            assert body["rewards"] and not any("random" in r["reason"] for r in body["rewards"])
    assert set(seen) == {"model", "random", "holdout"}


def test_experiment_decisions_are_training_rows(client: TestClient, live: dict[str, Any],
                                                 store: StoreSettings,
                                                 settings: ServeSettings) -> None:
    """Retraining learns from an experiment's decisions with their probabilities given the arm
    (recorded on each row): a holdout is a control row of probability 1, a random arm's first
    slot a uniform draw. The off-policy gate reads them too, weighed over the arms."""
    from training.data.decision_log import offers_from_log
    from training.evaluation.gate import experiment_shares, logged_rows
    from training.retrain import experiment_arms

    decisions, items = client.app.state.services.events.decision_log()
    decisions = decisions[decisions["experiment_id"] == live["experiment"]["id"]]
    offers = offers_from_log(decisions, items)
    arms = decisions.set_index("decision_id")["arm"]
    assert (offers["arm"] == arms.reindex(offers["decision_id"]).to_numpy()).all()
    held = decisions[decisions["arm"] == "holdout"]
    asked = held[held["no_offer_probability"].notna()]  # requests that asked for rewards
    assert len(asked) > 0.9 * len(held) and (asked["no_offer_probability"] == 1.0).all()
    controls = offers[offers["arm"] == "holdout"]
    assert sorted(controls["decision_id"]) == sorted(asked["decision_id"])
    assert (~controls["treated"]).all() and (controls["propensity"] == 1.0).all()
    first = offers[(offers["arm"] == "random") & (offers["slot"] == 0)]
    eligible = 1 / first["propensity"]  # uniform: one over the member's eligible rewards
    assert len(first) > 0 and first["treated"].all()
    assert ((eligible - eligible.round()).abs() < 1e-3).all() and eligible.min() >= 2
    assert offers.loc[offers["arm"] == "model", "propensity"].between(0, 1).all()
    arms = experiment_arms(store, settings.events(store))  # the store's experiment registry
    shares = {a["name"]: a["share"] for a in live["experiment"]["arms"]}
    start = pd.Timestamp(live["experiment"]["start"])
    assert [a.shares for a in arms if a.start == start] == [shares]
    read = logged_rows(offers, arms)
    served = decisions[decisions["policy"].isin(("model", "cold_start"))]
    assert sorted(read["decision_id"]) == sorted(set(offers["decision_id"])
                                                  & set(served["decision_id"]))
    assert len(read) > 0.9 * len(served)
    np.testing.assert_allclose(experiment_shares(read, arms),
                               np.tile([shares["model"], shares["random"], shares["holdout"]],
                                       (len(read), 1)))


def test_the_gate_loads_the_versions_that_served_an_experiment(
        client: TestClient, live: dict[str, Any], store: StoreSettings,
        settings: ServeSettings, trained_store) -> None:  # noqa: ANN001
    """After a promotion inside an experiment the gate re-derives the model arm of the earlier
    decisions from the version that served them: the retrain loads it from the registry (here
    v1 served; as if v2 were the champion now), but not the champion itself, nor a version
    whose features the rows no longer carry."""
    from training.data.decision_log import offers_from_log
    from training.data.history import read_history_meta
    from training.evaluation.gate import served_versions
    from training.models import tracking
    from training.retrain import earlier_arm_models, experiment_arms

    _, train, reward, _ = trained_store
    tracking.configure_mlflow(store.tracking_uri, store.artifact_root, train.experiment)
    name = train.reward_model_name
    decisions, items = client.app.state.services.events.decision_log()
    offers = offers_from_log(decisions[decisions["experiment_id"] == live["experiment"]["id"]],
                             items)
    features = reward.data.rows.drop_duplicates("member_id").set_index("member_id")
    members = [c for c in reward.data.service_features if c in features.columns]
    rows = offers.join(features[members], on="member_id", how="inner")
    assert len(rows) > 0.9 * len(offers) and (served_versions(rows, name) == "1").all()
    arms = experiment_arms(store, settings.events(store))
    margin = read_history_meta(store.features_dir).margin
    loaded = earlier_arm_models(store, name, "2", rows, arms, reward.data, margin)
    assert list(loaded) == ["1"]
    catalog = pd.read_parquet(store.features_dir / "reward_features.parquet")
    scores = loaded["1"].scorer(rows.head(50), catalog)
    assert np.isfinite(scores.p_convert).all() and scores.p_convert.shape == (50, len(catalog))
    assert earlier_arm_models(store, name, "1", rows, arms, reward.data, margin) == {}
    older = rows.drop(columns=members[0])  # the rows no longer carry a feature v1 reads
    assert earlier_arm_models(store, name, "2", older, arms, reward.data, margin) == {}


def test_first_exposure_is_kept(client: TestClient, live: dict[str, Any]) -> None:
    svc = client.app.state.services
    exposures = svc.events.exposures(live["experiment"]["id"])
    assert exposures["member_id"].is_unique
    assert set(exposures["arm"]) == {"model", "random", "holdout"}
    assert set(exposures["channel"]) == {"app", "email", "web"}
    # the model's uplift score is logged in every arm, holdout included (for the Qini curve)
    assert exposures.groupby("arm")["uplift_score"].apply(lambda s: s.notna().mean()).min() > 0.9


# --- the report -----------------------------------------------------------------------------------


def test_report_recovers_the_simulators_true_effect(live: dict[str, Any]) -> None:
    report, truth = live["report"], live["truth"]["true_effect_vs"]["holdout"]
    arms = {a["arm"]: a for a in report["arms"]}
    assert sum(a["members"] for a in arms.values()) == live["truth"]["members"]
    assert arms["holdout"]["exposed"] == 0 and arms["holdout"]["redemption_rate"]["value"] == 0
    for outcome in ("purchased", "redeemed"):
        u = next(u for u in report["uplifts"]
                 if u["control"] == "holdout" and u["outcome"] == outcome)
        a = u["absolute"]
        print(f"model vs holdout, {outcome}: {a['value']:.4f} "
              f"[{a['ci_low']:.4f}, {a['ci_high']:.4f}] true {truth[outcome]:.4f}")
        assert a["ci_low"] <= truth[outcome] <= a["ci_high"]
    assert report["qini"]["available"] and report["qini"]["n"] > 1000
    segments = {s["segment"] for s in report["segments"]}
    assert {"tier", "channel", "region"} <= segments
    assert report["budget"]["incremental_cost_per_member"] > 0
    assert report["summary"][0].startswith("Members who got personalized offers redeemed")


def test_html_page(client: TestClient, live: dict[str, Any]) -> None:
    r = client.get(f"/experiments/{live['experiment']['id']}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert live["report"]["summary"][0].replace("'", "&#x27;") in html
    for chart in ("arms-chart", "uplift-chart", "qini-chart", "segment-table"):
        assert f"id='{chart}'" in html or f'id="{chart}"' in html


def test_cli_report_writes_html_pngs_and_logs_mlflow(store: StoreSettings, live: dict[str, Any],
                                                     tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from training.cli.app import app

    exp_id = live["experiment"]["id"]
    result = CliRunner().invoke(app, ["experiments", "report", exp_id, "--out",
                                      str(tmp_path), "--data-dir", str(store.data)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    for name in ("report.html", "report.json", "arms.png", "uplift.png", "qini.png"):
        assert (tmp_path / name).stat().st_size > 1000
    written = json.loads((tmp_path / "report.json").read_text())
    assert {s["segment"] for s in written["segments"]} >= {"tier", "region", "player_type"}
    run = MlflowClient(store.tracking_uri).get_run(out["mlflow_run_id"])
    assert run.data.params["experiment_id"] == exp_id
    assert "uplift.model_vs_holdout.redeemed" in run.data.metrics
    listed = CliRunner().invoke(app, ["experiments", "list", "--data-dir", str(store.data)])
    assert exp_id in listed.stdout
    missing = CliRunner().invoke(app, ["experiments", "report", "nope", "--out", str(tmp_path),
                                       "--data-dir", str(store.data)])
    assert missing.exit_code == 2 and "ID" in missing.output


# --- the page in a real browser ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(store: StoreSettings, settings: ServeSettings, live: dict[str, Any]
           ) -> Iterator[str]:
    """The same app served by a real uvicorn on a free loopback port (same event store)."""
    import uvicorn

    from serving.main import create_app

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(store, settings), host="127.0.0.1",
                                        port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=15)


@pytest.mark.browser
def test_report_page_in_headless_chromium(server: str, live: dict[str, Any],
                                          settings: ServeSettings, make_api_key,  # noqa: ANN001
                                          tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: `make test` installs it (scripts/"
                    "debian-packages.txt via scripts/system_deps.sh)")
    from playwright.sync_api import sync_playwright

    exp_id = live["experiment"]["id"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            # no session yet: the page sends the marketer to the sign-in form
            page.goto(f"{server}/experiments/{exp_id}")
            assert "/login" in page.url
            page.fill("#key", make_api_key(settings.events_url, "experiments:read"))
            with page.expect_navigation():
                page.click("button[type=submit]")
            assert page.url == f"{server}/experiments/{exp_id}", page.url
            # the three arms, by name, in the table and as bars
            for arm in ("model", "random", "holdout"):
                assert page.locator(f"#arms-table tr[data-arm='{arm}']").is_visible()
                assert page.locator(f"#arms-chart rect[data-arm='{arm}']").count() == 1
            # the uplift with its confidence interval, in words
            answer = page.locator("#answer")
            assert answer.is_visible()
            assert "95% CI" in answer.inner_text() and "percentage points" in answer.inner_text()
            # the charts are drawn with a real size
            for chart in ("#arms-chart svg", "#uplift-chart svg", "#qini-chart svg"):
                box = page.locator(chart).bounding_box()
                assert box is not None and box["width"] > 200 and box["height"] > 100, chart
            assert page.locator("#qini-chart polyline.qini").count() == 1
            assert page.locator("#segment-table tr").count() > 5
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(tmp_path / "experiment_report.png"), full_page=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 20_000
    print(f"screenshot: {SCREENSHOT}")


def test_experiment_routes_and_page_need_their_scopes(client: TestClient, settings: ServeSettings,
                                                      live: dict[str, Any],
                                                      make_api_key) -> None:  # noqa: ANN001
    exp_id = live["experiment"]["id"]
    reader = {"Authorization": f"Bearer {make_api_key(settings.events_url, 'experiments:read')}"}
    recommend = {"Authorization": f"Bearer {make_api_key(settings.events_url, 'recommend')}"}
    anonymous = TestClient(client.app, base_url="https://testserver")
    r = anonymous.get("/v1/experiments")
    assert r.status_code == 401 and r.json()["errors"][0]["field"] == "authorization"
    assert client.get("/v1/experiments", headers=recommend).status_code == 403
    assert client.get(f"/v1/experiments/{exp_id}/report", headers=reader).status_code == 200
    r = client.post("/v1/experiments", json=_body(name="Read-only tries"), headers=reader)
    assert r.status_code == 403
    # the page without a session redirects to the sign-in form, keeping where to come back
    r = anonymous.get(f"/experiments/{exp_id}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
