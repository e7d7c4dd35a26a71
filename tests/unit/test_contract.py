"""The HTTP contract: request models and the published OpenAPI document say the same thing.

Every payload below is checked twice, by the server's model and by the JSON Schema the app
publishes (jsonschema-rs, formats on): both must accept it, or both refuse it. Then the parts of
the contract that live in the app: operation ids, ``Allow`` headers, error fields. No store is
opened (the app is built without its lifespan).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, get_args

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from serving.config import ServeSettings, StoreSettings
from serving.contract.events import (
    EVENT_FIELDS, EVENT_MODELS, EventBase, EventType, PurchaseEvent, error_field, parse_event,
    parse_events,
)
from serving.contract.schemas import (
    BatchRecommendationRequest, EventsRequest, MemberProfile, RecommendationRequest,
)

T = "2026-03-02T09:00:00Z"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from serving.main import create_app

    root = tmp_path_factory.mktemp("contract")
    app = create_app(StoreSettings(data_dir=root / "data", models_dir=root / "models"),
                     ServeSettings(events_url=f"sqlite:///{root / 'events.db'}"))
    yield TestClient(app)  # no `with`: no lifespan, so nothing is opened


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()  # type: ignore[no-any-return]


def validator(document: dict[str, Any], name: str) -> Any:
    """The published schema of one component, with the document's $refs resolvable."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema_rs.validator_for(schema, validate_formats=True)


def agree(document: dict[str, Any], name: str, model: Any, body: Any) -> bool:
    """Whether ``body`` is valid, asserting the server's model and the schema agree."""
    published = validator(document, name).is_valid(body)
    try:
        model.model_validate(body)
        served = True
    except ValidationError:
        served = False
    assert published == served, (name, body, "schema" if published else "server")
    return served


def ev(event_type: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": "e-1", "event_type": event_type, "member_id": "M-000172",
            "timestamp": T, **fields}


# One minimal valid event per type, and what each one requires.
MINIMAL: dict[str, dict[str, Any]] = {
    "visit": {}, "purchase": {"amount": 12.5}, "review": {}, "referral": {},
    "points_earned": {"points": 100}, "points_spent": {"points": -40},
    "tier_change": {"tier": "Gold"}, "impression": {"reward_id": "R01"},
    "holdout": {}, "click": {"challenge_id": "C01"}, "redemption": {"reward_id": "R01"},
    "challenge_progress": {"challenge_id": "C01", "value": 3.5},
    "challenge_completed": {"challenge_id": "C01"}, "consent_granted": {},
    "consent_withdrawn": {},
}


def test_every_event_type_has_its_own_published_schema(document: dict[str, Any]) -> None:
    assert set(MINIMAL) == set(EVENT_MODELS) == set(get_args(EventType))
    items = document["components"]["schemas"]["EventsRequest"]["properties"]["events"]["items"]
    assert items["discriminator"]["propertyName"] == "event_type"
    assert set(items["discriminator"]["mapping"]) == set(MINIMAL)
    assert len(items["oneOf"]) == len(MINIMAL)
    # every per-type field is a stored column
    declared = {f for m in EVENT_MODELS.values() for f in m.model_fields} - set(
        EventBase.model_fields)
    assert declared == set(EVENT_FIELDS)


@pytest.mark.parametrize("event_type", sorted(MINIMAL))
def test_each_event_type_requires_exactly_its_fields(document: dict[str, Any],
                                                     event_type: str) -> None:
    minimal = ev(event_type, **MINIMAL[event_type])
    assert agree(document, "EventsRequest", EventsRequest, {"events": [minimal]})
    event = parse_event(minimal)
    assert type(event) is EVENT_MODELS[event_type]
    for name in EVENT_FIELDS:  # what the event store reads from any event
        assert getattr(event, name, None) == MINIMAL[event_type].get(name)
    for required in MINIMAL[event_type]:
        missing = {k: v for k, v in minimal.items() if k != required}
        assert not agree(document, "EventsRequest", EventsRequest, {"events": [missing]})
    # a field of another type is refused, not silently stored
    other = "tier" if event_type != "tier_change" else "amount"
    assert not agree(document, "EventsRequest", EventsRequest,
                     {"events": [{**minimal, other: "x"}]})


@pytest.mark.parametrize(("body", "valid"), [
    (ev("purchase"), False),  # the amount is required (it used to pass the published schema)
    (ev("purchase", amount=5, category="home", quantity=2, points=50, reward_id="R1"), True),
    (ev("purchase", amount=5, quantity=0), False),
    (ev("purchase", amount=5, quantity=2.0), True),  # JSON Schema: 2.0 is an integer
    (ev("purchase", amount=5, quantity=2.5), False),
    (ev("purchase", amount=True), False),  # a boolean is not a number
    (ev("purchase", amount="5"), False),  # nor is a numeric string
    (ev("purchase", amount=-1), False),
    (ev("purchase", amount=2e7), False),
    (ev("purchase", amount=5, category=""), False),
    (ev("purchase", amount=5, category="c" * 33), False),
    (ev("purchase", amount=5, category="tab\there"), False),
    (ev("points_earned", points=0), False),
    (ev("points_earned", points=-5), False),
    (ev("points_spent", points=5), False),
    (ev("points_earned", points=False), False),
    (ev("tier_change", tier="T" * 17), False),
    (ev("impression"), False),  # exactly one of reward_id / challenge_id
    (ev("impression", reward_id="R1", challenge_id="C1"), False),
    (ev("impression", reward_id="R1", challenge_id="C1", target=0.0), False),  # found by fuzzing
    (ev("impression", reward_id="R1", challenge_id=None), True),
    (ev("impression", challenge_id="C1", target=12.0, propensity=0.25), True),
    (ev("impression", reward_id="R1", target=12.0), False),  # a target is a challenge's
    (ev("impression", reward_id="R1", propensity=0), False),
    (ev("impression", reward_id="R1", propensity=1), True),
    (ev("click"), False),
    (ev("click", reward_id="R1", challenge_id="C1"), False),
    (ev("click", reward_id=None, challenge_id="C1"), True),
    (ev("click", reward_id="R1", cost=2), False),
    (ev("redemption"), False),  # reward_id or challenge_id, or both
    (ev("redemption", challenge_id="C1", cost=3, points=-20), True),
    (ev("redemption", reward_id="R1", challenge_id="C1"), True),
    (ev("redemption", reward_id=None, challenge_id=None), False),
    (ev("holdout", reward_id="R1", propensity=0.5), True),
    (ev("holdout", challenge_id="C1"), False),
    (ev("challenge_progress", challenge_id="C1"), False),
    (ev("challenge_progress", challenge_id="C1", value=float("inf")), False),
    (ev("consent_granted", amount=1), False),
    (ev("visit", properties={"store": "north", "items": 3, "vip": True, "ratio": 0.5}), True),
    (ev("visit", properties={"n": 2**53 - 1}), True),
    (ev("visit", properties={"n": 2**53}), False),  # would lose digits in JSON clients
    (ev("visit", properties={"n": 1e300}), False),
    (ev("visit", properties={"nested": {"a": 1}}), False),
    (ev("visit", properties={"": 1}), False),
    (ev("visit", properties={f"k{i}": i for i in range(21)}), False),
    (ev("nope"), False),
    ({k: v for k, v in ev("visit").items() if k != "event_type"}, False),
    (ev("visit", surprise=1), False),
])
def test_server_and_schema_agree_on_events(document: dict[str, Any], body: dict[str, Any],
                                           valid: bool) -> None:
    assert agree(document, "EventsRequest", EventsRequest, {"events": [body]}) is valid


@pytest.mark.parametrize(("member_id", "valid"), [
    ("M-000172", True), ("42", True), ("6f1c2b9e-8a2d-4a47-9d4e-1b2c3d4e5f60", True),
    ("a:b.c_d-e", True), ("...", True), (".x", True), ("m" * 64, True),
    (42, False), (True, False), ("", False), ("m" * 65, False), ("has space", False),
    ("x/y", False), ("é", False), (".", False), ("..", False), ("abc\n", False), (None, False),
])
def test_member_ids_are_strings_of_the_id_alphabet(document: dict[str, Any], member_id: Any,
                                                   valid: bool) -> None:
    assert agree(document, "EventsRequest", EventsRequest,
                 {"events": [ev("visit", member_id=member_id)]}) is valid
    assert agree(document, "RecommendationRequest", RecommendationRequest,
                 {"member_id": member_id}) is valid
    assert agree(document, "BatchRecommendationRequest", BatchRecommendationRequest,
                 {"member_ids": [member_id]}) is valid


@pytest.mark.parametrize(("timestamp", "valid"), [
    ("1997-06-30T23:59:59Z", True),  # an old history imports
    ("1970-01-01T00:00:00Z", True), ("2099-12-31T23:59:59.999999-05:00", True),
    ("2024-02-29T12:00:00+01:00", True), ("2000-02-29T00:00:00Z", True),
    ("1969-12-31T23:59:59Z", False), ("2100-01-01T00:00:00Z", False),
    ("2023-02-29T12:00:00Z", False), ("2026-04-31T00:00:00Z", False),
    ("2026-03-02T09:00:00", False),  # naive
    ("2026-03-02 09:00:00Z", False), ("2026-03-02T09:00Z", False),
    ("2026-03-02T24:00:00Z", False), ("2026-03-02T09:00:00.1234567Z", False),
    ("2026-03-02", False), (1772442000, False), (None, False),
])
def test_timestamps(document: dict[str, Any], timestamp: Any, valid: bool) -> None:
    assert agree(document, "EventsRequest", EventsRequest,
                 {"events": [ev("visit", timestamp=timestamp)]}) is valid


def test_timestamps_are_stored_in_utc_and_python_callers_may_pass_datetimes() -> None:
    event = parse_event(ev("visit", timestamp="1997-03-02T10:00:00+01:00"))
    assert event.timestamp == datetime(1997, 3, 2, 9, tzinfo=UTC)
    assert event.timestamp.utcoffset() == timedelta(0)
    # the bulk import builds events from parsed datetimes: the same rules apply
    aware = datetime(1998, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5)))
    made = PurchaseEvent(event_id="i-1", event_type="purchase", member_id="M-1",
                         timestamp=aware, amount=3)
    assert made.timestamp == datetime(1998, 1, 1, 17, tzinfo=UTC)
    for bad in (datetime(1998, 1, 1), datetime(1960, 1, 1, tzinfo=UTC)):
        with pytest.raises(ValidationError) as info:
            parse_event(ev("visit", timestamp=bad))
        assert info.value.errors()[0]["loc"][-1] == "timestamp"


@pytest.mark.parametrize(("body", "valid"), [
    ({"member_id": "M-1"}, True),
    ({"member_id": "M-1", "k_rewards": 0, "k_challenges": 20, "channel": "email",
      "context": {"tier": "Gold", "region": "north"}, "exclude": ["R01", "C-02"]}, True),
    ({"member_id": "M-1", "k_challenges": False}, False),  # was accepted as 0
    ({"member_id": "M-1", "k_rewards": "3"}, False),
    ({"member_id": "M-1", "k_rewards": 3.0}, True),
    ({"member_id": "M-1", "k_rewards": 21}, False),
    ({"member_id": "M-1", "context": {"tier": "Gold!"}}, False),
    ({"member_id": "M-1", "exclude": ["../etc"]}, False),
    ({"member_id": "M-1", "surprise": 1}, False),
])
def test_recommendation_requests_are_strict(document: dict[str, Any], body: dict[str, Any],
                                            valid: bool) -> None:
    assert agree(document, "RecommendationRequest", RecommendationRequest, body) is valid


@pytest.mark.parametrize(("body", "valid"), [
    ({"joined_at": "2019-05-01", "tier": "Gold"}, True),
    ({"joined_at": "1997-05-01T08:30:00-04:00", "tier": "Gold", "region": "north",
      "consent": True, "attributes": {"birth_year": 1980, "newsletter": False,
                                      "store": "Lyon 2"}}, True),
    ({"joined_at": "2019-05-01"}, False),
    ({"tier": "Gold"}, False),
    ({"joined_at": "2019-02-30", "tier": "Gold"}, False),
    ({"joined_at": "20190501", "tier": "Gold"}, False),  # the CSV import reads YYYYMMDD, JSON not
    ({"joined_at": "2019-05-01", "tier": "Gold", "consent": "yes"}, False),
    ({"joined_at": "2019-05-01", "tier": "Gold", "consent": 1}, False),
    ({"joined_at": "2019-05-01", "tier": "Gold", "attributes": {"a": [1]}}, False),
    ({"joined_at": "2019-05-01", "tier": "Gold", "member_id": "M-1"}, False),
])
def test_member_profiles(document: dict[str, Any], body: dict[str, Any], valid: bool) -> None:
    assert agree(document, "MemberProfile", MemberProfile, body) is valid


def test_a_date_alone_is_midnight_utc() -> None:
    profile = MemberProfile.model_validate({"joined_at": "2019-05-01", "tier": "Gold"})
    assert profile.joined_at == datetime(2019, 5, 1, tzinfo=UTC)
    assert MemberProfile(joined_at=date(2019, 5, 1), tier="Gold").joined_at == profile.joined_at


def test_errors_name_the_field_as_the_client_wrote_it() -> None:
    with pytest.raises(ValidationError) as info:
        parse_events([ev("visit"), ev("purchase", amount=True), {"event_type": "nope"}])
    fields = {error_field(e["loc"], e["type"]) for e in info.value.errors()}
    assert fields == {"1.amount", "2.event_type"}
    with pytest.raises(ValidationError) as info:
        parse_event(ev("click"))
    [error] = info.value.errors()
    assert error_field(error["loc"]) == "challenge_id" and "exactly one" in error["msg"]
    # a properties key that happens to be an event type is kept
    assert error_field(("body", "events", 0, "visit", "properties", "visit")) == (
        "body.events.0.properties.visit")


def test_published_examples_are_valid(document: dict[str, Any]) -> None:
    """The request examples in /docs pass both the schema and the server's model (the fuzzer
    also sends them first)."""
    from serving.experiments.definition import ExperimentCreate

    models = {"RecommendationRequest": RecommendationRequest, "MemberProfile": MemberProfile,
              "BatchRecommendationRequest": BatchRecommendationRequest,
              "EventsRequest": EventsRequest, "ExperimentCreate": ExperimentCreate}
    seen = 0
    for methods in document["paths"].values():
        for operation in methods.values():
            content = operation.get("requestBody", {}).get("content", {}).get(
                "application/json")
            if content is None:
                continue
            name = content["schema"]["$ref"].rsplit("/", 1)[-1]
            if name in models:  # the bodies of this module's routes all have examples
                assert content["examples"], name
            for example in content.get("examples", {}).values():
                model = models.get(name)
                if model is None:  # another route's body: the schema must still take it
                    assert validator(document, name).is_valid(example["value"]), example
                else:
                    assert agree(document, name, model, example["value"]), example
                seen += 1
    assert seen >= len(models)
    types = {e["event_type"] for methods in document["paths"].values()
             for op in methods.values()
             for ex in op.get("requestBody", {}).get("content", {}).get(
                 "application/json", {}).get("examples", {}).values()
             for e in ex["value"].get("events", [])}
    assert len(types) >= 8


def test_operation_ids_are_the_route_names(document: dict[str, Any]) -> None:
    ids = {(method.upper(), path): op["operationId"]
           for path, methods in document["paths"].items() for method, op in methods.items()}
    assert ids[("POST", "/v1/recommendations")] == "recommend"
    assert ids[("POST", "/v1/recommendations/batch")] == "recommend_batch"
    assert ids[("POST", "/v1/events")] == "post_events"
    assert ids[("PUT", "/v1/members/{member_id}")] == "upsert_member"
    assert ids[("DELETE", "/v1/members/{member_id}")] == "erase_member"
    assert ids[("GET", "/v1/experiments")] == "list_experiments"
    assert len(set(ids.values())) == len(ids)
    assert all("_v1_" not in name and not name.endswith(("_get", "_post")) for name in ids.values())


def test_operation_ids_must_be_unique() -> None:
    from fastapi import FastAPI

    from serving.main import check_operation_ids, operation_id

    app = FastAPI(generate_unique_id_function=operation_id)

    @app.get("/a")
    async def same() -> None: ...

    check_operation_ids(app)
    app.get("/b")(same)
    with pytest.raises(RuntimeError, match="same"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FastAPI's own warning about the duplicate
        check_operation_ids(app)


def test_options_and_405_list_every_method_of_the_path(client: TestClient,
                                                       document: dict[str, Any]) -> None:
    for path, methods in document["paths"].items():
        url = re.sub(r"\{[a-z_]+\}", "x-1", path)  # any id: routing does not look at it
        declared = {m.upper() for m in methods}
        r = client.options(url)
        assert r.status_code == 204, (path, r.text)
        assert set(r.headers["allow"].split(", ")) == declared | {"OPTIONS"}, path
        for method in {"GET", "POST", "PUT", "DELETE", "PATCH"} - declared:
            r = client.request(method, url)
            assert r.status_code == 405, (method, path)
            assert set(r.headers["allow"].split(", ")) == declared | {"OPTIONS"}
            assert r.json()["errors"][0]["field"] == "method"
    assert client.options("/nowhere").status_code == 404
