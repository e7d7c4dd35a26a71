"""The HTTP API against a real small world: Feast online store, MLflow registry, ONNX models,
SQLite event store. Every route and flag, and a champion swap under traffic."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from serving.config import ServeSettings, StoreSettings
from training.simulate.generate.catalog import TIERS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def app_client(trained_store, tmp_path_factory: pytest.TempPathFactory,  # noqa: ANN001
               make_api_key, with_catalog) -> Iterator[TestClient]:  # noqa: ANN001
    from serving.main import create_app

    store = trained_store[0]
    events = tmp_path_factory.mktemp("events") / "events.db"
    settings = ServeSettings(events_url=with_catalog(f"sqlite:///{events}"), model_poll_seconds=0,
                             seed=3)
    key = make_api_key(settings.events_url, "recommend", "events", "admin")
    with TestClient(create_app(store, settings),
                    headers={"Authorization": f"Bearer {key}"}) as client:
        yield client


@pytest.fixture(scope="module")
def members(trained_store) -> pd.DataFrame:  # noqa: ANN001
    store: StoreSettings = trained_store[0]
    return pd.read_parquet(store.world_dir / "members.parquet")


def services(client: TestClient):  # noqa: ANN201
    return client.app.state.services


def recommend(client: TestClient, **body: object) -> dict:
    r = client.post("/v1/recommendations", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for_decisions(client: TestClient, at_least: int) -> None:
    """Until every decision served so far is committed: an empty write queued behind them
    resolves after their commit (the writer commits in queue order). Counting rows alone could
    be satisfied by an earlier test's decision still in the writer's window."""
    services(client).decision_writer.submit([]).result(timeout=5)
    assert services(client).events.count_decisions() >= at_least


def test_ready_and_healthy(app_client: TestClient) -> None:
    assert app_client.get("/healthz").json() == {"status": "ok"}
    ready = app_client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["models"]["reward"]["version"] == "1"


def mid(value: object) -> str:
    """A member id as the API takes it: a string (the simulator's members are "1", "2"...)."""
    return str(value)


def test_personalized_recommendation(app_client: TestClient, members: pd.DataFrame) -> None:
    m = members[members["consent"]].iloc[0]
    body = recommend(app_client, member_id=mid(m["member_id"]), k_rewards=3, k_challenges=3)
    assert body["member_id"] == mid(m["member_id"])
    assert body["personalized"] and not body["cold_start"] and not body["degraded"]
    assert body["model_versions"] == {"reward": "1", "difficulty": "1"}
    assert 1 <= len(body["rewards"]) <= 3 and 1 <= len(body["challenges"]) <= 3
    catalog = services(app_client).recommender.catalog
    rewards = catalog.rewards.set_index("reward_id")
    tier = TIERS.index(m["tier"])
    for r in body["rewards"]:
        assert TIERS.index(rewards.loc[r["reward_id"], "min_tier"]) <= tier  # eligibility
        assert 0 <= r["propensity"] <= 1 and 0 < r["shown_probability"] <= 1
    categories = [r["category"] for r in body["rewards"]]
    assert len(categories) == len(set(categories))  # diversity: one per category
    allowed = catalog.targets.groupby("challenge_id")["target"].apply(set)
    for c in body["challenges"]:
        assert c["target"] in allowed[c["challenge_id"]]
        assert 0 < c["completion_probability"] < 1


def test_cold_start_member(app_client: TestClient) -> None:
    body = recommend(app_client, member_id="NEW:6f1c2b9e-8a2d-4a47", context={"tier": "Gold"})
    assert body["cold_start"] and not body["personalized"] and not body["degraded"]
    assert body["rewards"] and body["challenges"]


def test_consent_withdrawal_stops_personalization(app_client: TestClient,
                                                  members: pd.DataFrame) -> None:
    member_id = mid(members[members["consent"]].iloc[1]["member_id"])
    assert recommend(app_client, member_id=member_id)["personalized"]
    event = {"event_id": f"consent-{member_id}", "event_type": "consent_withdrawn",
             "member_id": member_id, "timestamp": datetime.now(UTC).isoformat()}
    assert app_client.post("/v1/events", json={"events": [event]}).status_code == 200
    body = recommend(app_client, member_id=member_id)
    assert not body["personalized"] and not body["cold_start"]
    assert all("consent" in r["reason"] for r in body["rewards"])


def test_member_without_consent_in_profile(app_client: TestClient, members: pd.DataFrame) -> None:
    no_consent = members[~members["consent"]]
    body = recommend(app_client, member_id=mid(no_consent.iloc[0]["member_id"]))
    assert not body["personalized"]


def test_online_store_failure_degrades(app_client: TestClient, members: pd.DataFrame) -> None:
    svc = services(app_client)

    class Broken:
        def read(self, member_id: str) -> None:
            raise ConnectionError("online store down")

    reader, svc.reader = svc.reader, Broken()
    try:
        body = recommend(app_client, member_id=mid(members.iloc[2]["member_id"]))
    finally:
        svc.reader = reader
    assert body["degraded"] and not body["cold_start"]
    assert any("online store" in r for r in body["degraded_reasons"])
    assert body["rewards"]


def test_frequency_cap_after_a_decision(app_client: TestClient, members: pd.DataFrame) -> None:
    member_id = mid(members[members["consent"]].iloc[5]["member_id"])
    before = services(app_client).events.count_decisions()
    first = {r["reward_id"] for r in recommend(app_client, member_id=member_id)["rewards"]}
    wait_for_decisions(app_client, before + 1)
    second = {r["reward_id"] for r in recommend(app_client, member_id=member_id)["rewards"]}
    assert first and not first & second  # offered within the cooldown: not again


def test_daily_budget_cap_excludes_a_reward(app_client: TestClient,
                                            members: pd.DataFrame) -> None:
    svc = services(app_client)
    member_id = mid(members[members["consent"]].iloc[7]["member_id"])
    top = recommend(app_client, member_id=member_id, k_rewards=1)["rewards"][0]["reward_id"]
    svc.recommender.rules.budget.reward_daily_caps[top] = 1
    now = datetime.now(UTC).isoformat()
    app_client.post("/v1/events", json={"events": [{
        "event_id": f"cap-{top}", "event_type": "redemption", "member_id": "1", "reward_id": top,
        "timestamp": now, "cost": 5.0}]})
    svc.refresh_budget()
    other = mid(members[members["consent"]].iloc[8]["member_id"])
    offered = {r["reward_id"] for r in recommend(app_client, member_id=other,
                                                 k_rewards=10)["rewards"]}
    assert top not in offered


def test_events_are_idempotent(app_client: TestClient) -> None:
    ev = {"event_id": "imp-1", "event_type": "impression", "member_id": "3", "reward_id": "R01",
          "timestamp": "2026-11-23T10:00:00+00:00"}
    first = app_client.post("/v1/events", json={"events": [ev]}).json()
    again = app_client.post("/v1/events", json={"events": [ev, {**ev, "event_id": "imp-2"}]})
    assert first["accepted"] == 1
    assert again.json()["accepted"] == 1 and again.json()["duplicates"] == 1
    stored = services(app_client).events.member_events("3")
    assert sorted(e["event_id"] for e in stored if e["event_id"].startswith("imp-")) == [
        "imp-1", "imp-2"]


def test_an_event_store_that_cannot_commit_is_a_503_and_the_retry_is_stored(
        app_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing acknowledged is lost: a batch the store could not commit is refused whole with a
    503 the client retries on (not an unexplained 500), and the retry is stored once."""
    import sqlite3

    writer = services(app_client).event_writer
    ev = {"event_id": "imp-503", "event_type": "impression", "member_id": "3",
          "reward_id": "R01", "timestamp": "2026-11-23T10:00:00+00:00"}

    async def down(items: list) -> list:  # noqa: ARG001
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as m:
        m.setattr(writer, "write", down)
        r = app_client.post("/v1/events", json={"events": [ev]})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert "nothing of this batch was acknowledged" in r.json()["errors"][0]["reason"]
    assert not [e for e in services(app_client).events.member_events("3")
                if e["event_id"] == "imp-503"]
    again = app_client.post("/v1/events", json={"events": [ev]})
    assert again.status_code == 200 and again.json()["accepted"] == 1


def test_every_event_type_is_taken_and_stored(app_client: TestClient) -> None:
    """One event of each type, for a member named as a real program names them: each is
    stored with its own columns, and a replay of the batch adds nothing."""
    member = "M-000172"
    fields = {
        "visit": {}, "purchase": {"amount": 42.5, "category": "home", "quantity": 2,
                                  "points": 42, "reward_id": "R01"},
        "review": {"points": 5}, "referral": {"points": 50},
        "points_earned": {"points": 100}, "points_spent": {"points": -80},
        "tier_change": {"tier": "Gold"},
        "impression": {"challenge_id": "C01", "target": 3.0, "propensity": 0.25},
        "holdout": {"reward_id": "R02", "propensity": 0.1}, "click": {"reward_id": "R02"},
        "redemption": {"reward_id": "R01", "cost": 4.0, "points": -20},
        "challenge_progress": {"challenge_id": "C01", "value": 1.5},
        "challenge_completed": {"challenge_id": "C01", "points": 30},
        "consent_granted": {}, "consent_withdrawn": {},
    }
    events = [{"event_id": f"all-{i}", "event_type": kind, "member_id": member,
               "timestamp": f"1997-03-{i + 1:02d}T09:00:00+01:00", **extra}
              for i, (kind, extra) in enumerate(fields.items())]
    r = app_client.post("/v1/events", json={"events": events})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len(events) == 15
    again = app_client.post("/v1/events", json={"events": events}).json()
    assert again["accepted"] == 0 and again["duplicates"] == len(events)
    stored = {e["event_id"]: e for e in services(app_client).events.member_events(member)}
    for event in events:
        row = stored[event["event_id"]]
        assert row["event_type"] == event["event_type"] and row["member_id"] == member
        for name, value in event.items():
            if name not in ("event_id", "event_type", "member_id", "timestamp"):
                assert row[name] == value, (event["event_type"], name, row)
    first = stored["all-0"]["timestamp"]
    assert pd.Timestamp(first) == pd.Timestamp("1997-03-01T08:00:00Z")  # an old history, UTC


def test_a_schema_violating_event_is_refused_whole_batch(app_client: TestClient) -> None:
    """A purchase without its amount is a 422 naming the field, and nothing of the batch is
    stored (the published schema says the same: see tests/unit/test_contract.py)."""
    good = {"event_id": "batch-ok", "event_type": "visit", "member_id": "M-9",
            "timestamp": "2026-11-23T10:00:00Z"}
    bad = {**good, "event_id": "batch-bad", "event_type": "purchase"}
    r = app_client.post("/v1/events", json={"events": [good, bad]})
    assert r.status_code == 422
    assert r.json()["errors"] == [{"field": "body.events.1.amount", "reason": "Field required"}]
    assert services(app_client).events.member_events("M-9") == []


def test_member_profile_upsert(app_client: TestClient) -> None:
    svc = services(app_client)
    if not hasattr(svc.events, "upsert_member"):
        pytest.skip("the event store has no upsert_member yet (issue #20, event store part)")
    profile = {"joined_at": "1997-05-01", "tier": "Gold", "region": "north", "consent": True,
               "attributes": {"birth_year": 1980, "store": "Lyon 2", "newsletter": False}}
    first = app_client.put("/v1/members/M-profile-1", json=profile)
    assert first.status_code == 201, first.text
    assert first.json() == {"member_id": "M-profile-1", "status": "created"}
    second = app_client.put("/v1/members/M-profile-1", json={**profile, "tier": "Platinum"})
    assert second.status_code == 200 and second.json()["status"] == "updated"
    bad = app_client.put("/v1/members/M-profile-1", json={**profile, "consent": "yes"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "body.consent"
    bad = app_client.put("/v1/members/..", json=profile)
    assert bad.status_code in (404, 422)  # ".." is a path step, never a member
    assert app_client.options("/v1/members/M-profile-1").headers["allow"] == (
        "PUT, DELETE, OPTIONS")


@pytest.mark.parametrize(("body", "field"), [
    ({"member_id": "1", "unexpected": True}, "body.unexpected"),
    ({"member_id": 1}, "body.member_id"),  # ids are JSON strings
    ({"member_id": ".."}, "body.member_id"),
    ({"member_id": "1", "k_rewards": 99}, "body.k_rewards"),
    ({"member_id": "1", "k_challenges": False}, "body.k_challenges"),  # not 0
    ({"member_id": "1", "k_rewards": "2"}, "body.k_rewards"),
    ({"member_id": "1", "exclude": ["../etc"]}, "body.exclude.0"),
    ({"member_id": "1", "context": {"tier": "Gold!"}}, "body.context.tier"),
])
def test_bad_input_names_the_field(app_client: TestClient, body: dict, field: str) -> None:
    r = app_client.post("/v1/recommendations", json=body)
    assert r.status_code == 422
    assert field in [e["field"] for e in r.json()["errors"]]


def test_oversized_and_malformed_requests(app_client: TestClient) -> None:
    r = app_client.post("/v1/recommendations/batch",
                        json={"member_ids": [str(i) for i in range(1, 1002)]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.member_ids"
    r = app_client.post("/v1/recommendations", content=b"{not json",
                        headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = app_client.post("/v1/events", content=b"x" * (3 * 1024 * 1024),
                        headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["errors"][0]["field"] == "body"


def test_batch_recommendations(app_client: TestClient, members: pd.DataFrame) -> None:
    ids = [mid(i) for i in members["member_id"].iloc[20:30]]
    r = app_client.post("/v1/recommendations/batch", json={"member_ids": ids, "k_rewards": 2})
    assert r.status_code == 200
    assert [x["member_id"] for x in r.json()["results"]] == ids


def test_metrics_exposed(app_client: TestClient) -> None:
    text = app_client.get("/metrics").text
    assert 'rewards_request_seconds_bucket{le="0.005",route="/v1/recommendations"' in text
    assert "rewards_decisions_total" in text and 'rewards_fallbacks_total{kind="cold_start"}' in text


def _sample(text: str, name: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith(name + " ")))


def test_served_feature_age_is_measured(app_client: TestClient, members: pd.DataFrame) -> None:
    """Each decision observes how old its member's online feature row is: what an operator
    watches to know whether features are refreshed (BENCHMARKS.md, learning loop)."""
    svc = services(app_client)
    member = str(members["member_id"].iloc[7])
    row = svc.reader.read(member)
    assert row is not None and row.event_timestamp is not None
    at = row.event_timestamp + pd.Timedelta(days=3, hours=5)
    before = app_client.get("/metrics").text
    clock = svc.clock
    svc.clock = lambda: at
    try:
        recommend(app_client, member_id=member, k_rewards=1, k_challenges=1)
    finally:
        svc.clock = clock
    after = app_client.get("/metrics").text
    count, total = "rewards_feature_age_seconds_count", "rewards_feature_age_seconds_sum"
    assert _sample(after, count) == _sample(before, count) + 1
    assert _sample(after, total) - _sample(before, total) == pytest.approx(3 * 86_400 + 5 * 3_600)
    three_days = 'rewards_feature_age_seconds_bucket{le="259200.0"}'
    seven_days = 'rewards_feature_age_seconds_bucket{le="604800.0"}'
    assert _sample(after, three_days) == _sample(before, three_days)  # older than 3 days
    assert _sample(after, seven_days) == _sample(before, seven_days) + 1


def test_training_and_serving_build_identical_rows(app_client: TestClient, trained_store,  # noqa: ANN001
                                                   members: pd.DataFrame) -> None:
    """Same member, same instant: the training path (Feast historical retrieval + candidate
    builder) and the serving path (online store + the Recommender's row builders) give
    bit-identical model rows, for both models."""
    from serving.decisioning.candidates import difficulty_matrix, reward_matrix
    from serving.decisioning.candidates import difficulty_inputs, reward_inputs
    from training.data.feast_ops import historical_features

    store = trained_store[0]
    svc = services(app_client)
    catalog = svc.recommender.catalog
    member_id = mid(members.iloc[11]["member_id"])
    meta = pd.read_json(store.world_dir / "world.json", typ="series")
    instant = pd.Timestamp(meta["start"], tz="UTC") + pd.Timedelta(days=int(meta["days"]),
                                                                    hours=1)
    online = svc.reader.read(member_id).values

    names = svc.models.get("reward").meta.service_features
    reward_id = catalog.rewards["reward_id"].iloc[4]
    hist = historical_features(store, pd.DataFrame({
        "member_id": [member_id], "reward_id": [reward_id], "event_timestamp": [instant]}),
        "propensity_v1")
    train_row = reward_matrix({c: hist[c].to_numpy() for c in names}, np.ones(1), names,
                              catalog.vocabulary)
    serve_rows = reward_inputs(online, catalog.rewards, names, catalog.vocabulary)
    np.testing.assert_array_equal(train_row[0], serve_rows[4])

    names = svc.models.get("difficulty").meta.service_features
    option = catalog.targets.iloc[[7]]
    hist = historical_features(store, pd.DataFrame({
        "member_id": [member_id], "challenge_id": option["challenge_id"].to_list(),
        "event_timestamp": [instant]}), "difficulty_v1")
    train_row = difficulty_matrix({c: hist[c].to_numpy() for c in names},
                                  option["target"].to_numpy(), names, catalog.vocabulary)
    serve_rows = difficulty_inputs(online, catalog.targets, names, catalog.vocabulary)
    np.testing.assert_array_equal(train_row[0], serve_rows[7])
    assert not np.isnan(serve_rows).any()


def test_champion_swap_under_traffic(app_client: TestClient, trained_store,  # noqa: ANN001
                                     members: pd.DataFrame, request_traffic) -> None:  # noqa: ANN001
    """A new champion is promoted and reloaded while requests flow: none fails."""
    from training.models import tracking
    from training.pipeline import train_reward

    store, settings = trained_store[0], trained_store[1]
    new = train_reward(store, settings)  # v2, registered as challenger
    ids = [mid(i) for i in members["member_id"].iloc[:50]]
    failures: list[int] = []
    seen: set[str] = set()

    def one_request(i: int) -> None:
        r = app_client.post("/v1/recommendations", json={"member_id": ids[i % len(ids)]})
        if r.status_code != 200:
            failures.append(r.status_code)
        else:
            seen.add(r.json()["model_versions"].get("reward", "-"))

    try:
        with request_traffic(one_request):
            time.sleep(0.5)
            tracking.configure_mlflow(store.tracking_uri, store.artifact_root,
                                      settings.experiment)
            tracking.promote("reward", {}, force=True, reason="swap-under-traffic test")
            reload = app_client.post("/v1/admin/reload").json()
            time.sleep(0.5)
    finally:
        tracking.rollback("reward", reason="restore v1 after the swap test")
        app_client.post("/v1/admin/reload")
    assert reload["outcomes"]["reward"] == f"loaded v{new.version}"
    assert not failures
    assert {"1", new.version} <= seen
    # rolled back: the gauge says which version is loaded now, not every one loaded since start
    metrics = app_client.get("/metrics").text
    assert 'rewards_model_loaded{model="reward",version="1"} 1.0' in metrics
    assert f'rewards_model_loaded{{model="reward",version="{new.version}"}} 0.0' in metrics


def test_fast_path_answers_like_the_route(app_client: TestClient, members: pd.DataFrame,
                                          monkeypatch: pytest.MonkeyPatch,
                                          make_api_key) -> None:  # noqa: ANN001
    """Well-formed requests are answered by serving/api/fast_path.py with exactly the route's
    answer; anything else (bad body, bad key, another content type) goes to the route."""
    svc = services(app_client)
    state = app_client.app.state.fast_path
    # the answers must not depend on the order they were asked in: no frequency caps/novelty
    monkeypatch.setattr(svc.events, "member_context",
                        lambda member_id, since: ({}, svc.events.consent(member_id)))
    ids = [mid(m) for m in members["member_id"].iloc[:12]]
    bodies: list[dict] = [{"member_id": m} for m in ids] + [
        {"member_id": ids[0], "channel": "email", "k_rewards": 1, "k_challenges": 5,
         "exclude": ["C01", "R02"], "context": {"tier": "Gold"}},
        {"member_id": "M-unknown-1", "context": {"tier": "Silver"}},  # cold start
    ]

    def ask(enabled: bool) -> list[tuple[int, str, dict]]:
        state.enabled = enabled
        svc.recommender.rng = np.random.default_rng(11)  # same exploration draws
        out = []
        for body in bodies:
            r = app_client.post("/v1/recommendations", json=body)
            answer = r.json()
            assert answer.pop("decision_id")
            out.append((r.status_code, r.headers["content-type"], answer))
        return out

    def served_count() -> float:
        line = next((ln for ln in app_client.get("/metrics").text.splitlines() if ln.startswith(
            'rewards_request_seconds_count{route="/v1/recommendations",status="200"}')), "x 0")
        return float(line.split()[-1])

    try:
        answered, counted = state.answered, served_count()
        fast = ask(True)
        assert state.answered == answered + len(bodies)
        # the latency histogram labels fast answers with the route's path, as the router does
        assert served_count() == counted + len(bodies)
        slow = ask(False)
        assert state.answered == answered + len(bodies)  # the route answered these
        assert fast == slow
        assert {code for code, _, _ in fast} == {200}

        # invalid bodies and other content types go to the route: errors have one source
        state.enabled = True
        answered, refused = state.answered, state.refused
        post = app_client.post
        to_route = [
            post("/v1/recommendations", json={"member_id": 0}),
            post("/v1/recommendations", json={"member_id": "5", "surprise": 1}),
            post("/v1/recommendations", json={"member_id": "5", "k_rewards": True}),
            post("/v1/recommendations", content=b"{not json",
                 headers={"content-type": "application/json"}),
            post("/v1/recommendations", content=b"[" * 5000,  # RecursionError in json.loads
                 headers={"content-type": "application/json"}),
            post("/v1/recommendations", content=b'{"member_id": "5"}',
                 headers={"content-type": "text/plain"}),
        ]
        assert (state.answered, state.refused) == (answered, refused)
        assert [r.status_code for r in to_route] == [422] * 6
        assert to_route[0].json()["errors"][0]["field"] == "body.member_id"

        # auth errors on a valid body are rendered here exactly as the route renders them
        limited = make_api_key(svc.settings.events_url, "recommend", rate_limit=0.01)
        no_scope = make_api_key(svc.settings.events_url, "events")
        cases = [("Bearer rr_nope.nope", 401), (f"Bearer {no_scope}", 403),
                 (f"Bearer {limited}", 200), (f"Bearer {limited}", 429)]
        for enabled in (True, False):
            state.enabled = enabled
            if not enabled:  # a fresh key for the route's run: the first one is spent
                limited = make_api_key(svc.settings.events_url, "recommend", rate_limit=0.01)
                cases[2:] = [(f"Bearer {limited}", 200), (f"Bearer {limited}", 429)]
            seen = []
            for header, code in cases:
                r = post("/v1/recommendations", json={"member_id": ids[1]},
                         headers={"Authorization": header})
                assert r.status_code == code, r.text
                if code != 200:
                    seen.append((r.json(), {k: r.headers.get(k) for k in (
                        "content-type", "www-authenticate", "retry-after")}))
            if enabled:
                fast_errors = seen
                assert state.refused == refused + 3
        assert fast_errors == seen
    finally:
        state.enabled = True


def test_fastapi_opentelemetry_is_off_unless_asked(trained_store, monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
                                                   tmp_path) -> None:  # noqa: ANN001
    """FastAPI's native telemetry asks OpenTelemetry's global providers on every request; the
    service reports through Prometheus, so by default no request pays for that check."""
    import opentelemetry.trace

    from serving.main import create_app

    calls = []
    real = opentelemetry.trace.get_tracer_provider
    monkeypatch.setattr(opentelemetry.trace, "get_tracer_provider",
                        lambda: calls.append(1) or real())
    for enabled, expect_calls in ((False, False), (True, True)):
        calls.clear()
        settings = ServeSettings(events_url=f"sqlite:///{tmp_path / 'events.db'}",
                                 opentelemetry=enabled)
        client = TestClient(create_app(trained_store[0], settings))  # no lifespan: /healthz only
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
        assert bool(calls) is expect_calls


def test_request_ids_are_echoed_or_new(app_client: TestClient) -> None:
    first, second = app_client.get("/healthz"), app_client.get("/healthz")
    ids = [r.headers["x-request-id"] for r in (first, second)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and ids[0] != ids[1]
    given = app_client.get("/healthz", headers={"X-Request-ID": "crm-run-7-0042"})
    assert given.headers["x-request-id"] == "crm-run-7-0042"
    odd = app_client.get("/healthz", headers={"X-Request-ID": "no spaces; please"})
    assert odd.headers["x-request-id"] != "no spaces; please"  # not echoed: a new one
