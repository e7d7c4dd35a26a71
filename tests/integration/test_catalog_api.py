"""The catalog as data through the HTTP API, on a private copy of the trained small world:
rewards and templates written while the server runs are served within seconds without a
restart (whether the write came through the admin routes or another process, as
`rewards catalog import` is), retired ones stop being served, new rewards are explored with
their logged probability, and invalid items are 422s naming the field."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from serving.config import ServeSettings
from serving.decisioning.catalog import ChallengeIn, RewardIn
from serving.stores.catalog import CatalogStore, open_catalog_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REFRESH_SECONDS = 0.2
NEW_REWARD_EPSILON = 0.5


@pytest.fixture(scope="module")
def api(copy_store, tmp_path_factory: pytest.TempPathFactory,  # noqa: ANN001
        make_api_key) -> Iterator[tuple[TestClient, ServeSettings, dict[str, str]]]:  # noqa: ANN001
    from serving.main import create_app

    store = copy_store(tmp_path_factory.mktemp("catalog_api"))
    settings = ServeSettings(events_url=f"sqlite:///{store.data / 'events.db'}",
                             model_poll_seconds=0, seed=3)
    keys = {"admin": make_api_key(settings.events_url, "recommend", "admin"),
            "recommend": make_api_key(settings.events_url, "recommend")}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REWARDS_CATALOG_REFRESH_SECONDS", str(REFRESH_SECONDS))
        env.setenv("REWARDS_NEW_REWARD_EPSILON", str(NEW_REWARD_EPSILON))
        app = create_app(store, settings)
        with TestClient(app, headers={"Authorization": f"Bearer {keys['admin']}"}) as client:
            yield client, settings, keys


@pytest.fixture
def other_process(api) -> Iterator[CatalogStore]:  # noqa: ANN001
    """The catalog tables opened apart from the server, as `rewards catalog ...` does."""
    store = open_catalog_store(api[1].events_url)
    yield store
    store.close()


def client_of(api) -> TestClient:  # noqa: ANN001
    return api[0]


def catalog(api):  # noqa: ANN001, ANN201
    return client_of(api).app.state.services.recommender.catalog


def recommend(api, member: str, *, only: str | None = None, **body: object) -> dict:  # noqa: ANN001
    """A recommendation; ``only``: exclude every other reward (and template) of the catalog
    the server serves, so that the one left is what the answer can show."""
    if only is not None:
        current = catalog(api)
        others = [i for i in [*current.rewards["reward_id"], *current.template_ids] if i != only]
        body["exclude"] = others
    r = client_of(api).post("/v1/recommendations",
                            json={"member_id": member, "context": {"tier": "Gold"}, **body})
    assert r.status_code == 200, r.text
    return r.json()


def wait_until(check, seconds: float = 5.0) -> float:  # noqa: ANN001
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, "not served in time"
        time.sleep(0.05)
    return time.monotonic() - start


def a_reward(api, **fields: object) -> dict[str, object]:  # noqa: ANN001
    vocab = catalog(api).vocabulary
    return {"name": "Coffee on us", "reward_type": vocab.reward_types[0],
            "category": vocab.categories[0], "cost": 1.0, "min_tier": vocab.tiers[0], **fields}


def test_a_reward_written_by_another_process_is_served_within_seconds(api, other_process
                                                                       ) -> None:  # noqa: ANN001
    assert catalog(api).version >= 1 and len(catalog(api).rewards) > 0  # seeded or imported
    other_process.upsert("rewards", [RewardIn(reward_id="NEW-1", **a_reward(api))])

    def served() -> bool:
        return [r["reward_id"] for r in recommend(api, "m-poll", only="NEW-1", k_rewards=3,
                                                  k_challenges=0)["rewards"]] == ["NEW-1"]

    assert wait_until(served) < 5.0
    shown = recommend(api, "m-poll-2", only="NEW-1", k_rewards=3, k_challenges=0)["rewards"][0]
    assert shown["shown_probability"] == 1.0  # the only eligible reward, explored or not
    other_process.retire("rewards", "NEW-1")
    assert wait_until(lambda: not recommend(api, "m-poll-3", only="NEW-1")["rewards"]) < 5.0


def test_a_reward_put_through_the_api_is_served_at_once_and_explored(api) -> None:  # noqa: ANN001
    client = client_of(api)
    # a category the usual slate leaves free (one reward per category), and expensive: the
    # new reward would not win a slot on its value
    shown = {r["category"] for r in recommend(api, "m-before", k_rewards=3)["rewards"]}
    free = next(c for c in catalog(api).vocabulary.categories if c not in shown)
    body = a_reward(api, cost=30.0, category=free)
    created = client.put("/v1/catalog/rewards/NEW-2", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "active" and created.json()["reward_id"] == "NEW-2"
    assert client.put("/v1/catalog/rewards/NEW-2", json=body).status_code == 200  # replaced
    version = catalog(api).version
    assert "NEW-2" in set(catalog(api).rewards["reward_id"])  # this worker: no wait at all
    explored = []
    for i in range(60):
        rewards = recommend(api, f"m-explore-{i}", k_rewards=3, k_challenges=0)["rewards"]
        assert rewards and all(0 < r["shown_probability"] <= 1 for r in rewards)
        flagged = [j for j, r in enumerate(rewards) if "new to the model" in r["reason"]]
        assert flagged in ([], [len(rewards) - 1])  # only ever the last slot
        explored += [rewards[j] for j in flagged]
    # epsilon 0.5 per slate: about half the slates end with the one new reward
    assert 15 <= len(explored) <= 45 and {r["reward_id"] for r in explored} == {"NEW-2"}
    # logged: (1 - 0.5) x P(ordinary rule shows it) + 0.5 / 1 new reward, at least 0.5
    assert all(r["shown_probability"] >= NEW_REWARD_EPSILON for r in explored)
    listed = client.get("/v1/catalog/rewards").json()
    assert listed["catalog_version"] == version
    assert "NEW-2" in [r["reward_id"] for r in listed["rewards"]]

    retired = client.post("/v1/catalog/rewards/NEW-2/retire")
    assert retired.status_code == 200 and retired.json()["status"] == "retired"
    assert not recommend(api, "m-retired", only="NEW-2")["rewards"]  # gone at once
    active = [r["reward_id"] for r in client.get("/v1/catalog/rewards").json()["rewards"]]
    everything = client.get("/v1/catalog/rewards", params={"include_retired": True}).json()
    assert "NEW-2" not in active and "NEW-2" in [r["reward_id"] for r in everything["rewards"]]
    missing = client.post("/v1/catalog/rewards/NOPE/retire")
    assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == \
        "path.reward_id"


@pytest.mark.parametrize(("change", "field"), [
    ({"category": "not-a-category"}, "body.category"),
    ({"reward_type": "cashback"}, "body.reward_type"),
    ({"min_tier": "Diamond"}, "body.min_tier"),
    ({"cost": -1.0}, "body.cost"),
    ({"cost": True}, "body.cost"),
    ({"colour": "red"}, "body.colour"),
])
def test_invalid_rewards_are_422_naming_the_field(api, change: dict[str, object],  # noqa: ANN001
                                                  field: str) -> None:
    client = client_of(api)
    r = client.put("/v1/catalog/rewards/BAD-1", json={**a_reward(api), **change})
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]
    assert "BAD-1" not in [x["reward_id"] for x in client.get(
        "/v1/catalog/rewards", params={"include_retired": True}).json()["rewards"]]


def test_ids_and_keys_are_checked(api) -> None:  # noqa: ANN001
    client = client_of(api)
    bad_id = client.put("/v1/catalog/rewards/a%20b", json=a_reward(api))
    assert bad_id.status_code == 422 and bad_id.json()["errors"][0]["field"] == "path.reward_id"
    recommend_only = {"Authorization": f"Bearer {api[2]['recommend']}"}
    assert client.get("/v1/catalog/rewards", headers=recommend_only).status_code == 403
    assert client.put("/v1/catalog/rewards/X", json=a_reward(api),
                      headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_new_category_is_appended_then_used(api) -> None:  # noqa: ANN001
    client = client_of(api)
    before = client.get("/v1/catalog/vocabularies").json()["vocabularies"]["category"]
    appended = client.put("/v1/catalog/vocabularies/category", json={"values": ["pets"]})
    assert appended.status_code == 200, appended.text
    assert appended.json()["values"] == [*before, "pets"] and appended.json()["added"] == ["pets"]
    again = client.put("/v1/catalog/vocabularies/category", json={"values": ["pets"]}).json()
    assert again["added"] == [] and again["values"] == [*before, "pets"]  # codes never move
    assert client.put("/v1/catalog/rewards/PETS-1", json=a_reward(api, category="pets")
                      ).status_code == 201
    assert catalog(api).vocabulary.code("category", "pets") == len(before)
    rewards = recommend(api, "m-pets", only="PETS-1", k_rewards=3, k_challenges=0)["rewards"]
    assert [r["reward_id"] for r in rewards] == ["PETS-1"]  # no member feature yet: scored
    for body, path, field in (({"values": ["any"]}, "category", "body.values.0"),
                              ({"values": ["Platinum-Plus-Elite"]}, "tier", "body.values.0"),
                              ({"values": ["red"]}, "colour", "path.kind")):
        r = client.put(f"/v1/catalog/vocabularies/{path}", json=body)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == field, r.text


def test_challenge_templates(api, other_process) -> None:  # noqa: ANN001
    client = client_of(api)
    kind = catalog(api).vocabulary.challenge_kinds[0]
    body = {"name": "Weekend visits", "kind": kind, "unit": "visits", "duration_days": 3,
            "min_target": 1.0, "max_target": 3.0, "target_step": 1.0, "points": 50}
    for change, field in (({"kind": "quiz"}, "body.kind"),
                          ({"min_target": 5.0}, "body.max_target"),
                          ({"duration_days": 2.5}, "body.duration_days")):
        r = client.put("/v1/catalog/challenges/NEW-C", json={**body, **change})
        assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == [field]
    assert client.put("/v1/catalog/challenges/NEW-C", json=body).status_code == 201
    answer = recommend(api, "m-challenge", only="NEW-C", k_rewards=0, k_challenges=3)
    assert [c["challenge_id"] for c in answer["challenges"]] == ["NEW-C"]
    assert answer["challenges"][0]["target"] in (1.0, 2.0, 3.0)
    listed = client.get("/v1/catalog/challenges").json()["challenges"]
    assert "NEW-C" in [c["challenge_id"] for c in listed]
    assert client.post("/v1/catalog/challenges/NEW-C/retire").json()["status"] == "retired"
    assert not recommend(api, "m-challenge-2", only="NEW-C", k_rewards=0)["challenges"]
    # and one imported elsewhere, picked up by the poll
    other_process.upsert("challenges", [ChallengeIn(challenge_id="NEW-D", **body)])
    assert wait_until(lambda: bool(recommend(api, "m-challenge-3", only="NEW-D", k_rewards=0
                                             )["challenges"])) < 5.0


def test_operation_ids_are_the_function_names(api) -> None:  # noqa: ANN001
    paths = client_of(api).get("/openapi.json").json()["paths"]
    ids = {op["operationId"] for path, ops in paths.items() if path.startswith("/v1/catalog")
           for op in ops.values()}
    assert ids == {"list_rewards", "upsert_reward", "retire_reward", "list_challenges",
                   "upsert_challenge", "retire_challenge", "list_vocabularies",
                   "append_vocabulary"}


def test_a_program_without_a_catalog_is_told_in_every_answer_until_it_has_one(
        copy_store, tmp_path, make_api_key) -> None:  # noqa: ANN001
    """A service started on an empty event store (a new program, before its catalog import)
    answers, and every answer says what the catalog lacks; /readyz lists the problem. Once the
    program writes its vocabulary, a reward and a template through the admin routes, answers
    are whole and the problem is gone; retiring them all brings both back."""
    from serving.contract.vocabulary import VOCABULARY_KINDS
    from serving.decisioning.recommend import NO_CHALLENGES_REASON, NO_REWARDS_REASON
    from serving.main import create_app

    store = copy_store(tmp_path)
    source = open_catalog_store(f"sqlite:///{store.data / 'events.db'}")
    vocabulary = source.vocabulary()
    source.close()
    settings = ServeSettings(events_url=f"sqlite:///{tmp_path / 'new_program.db'}",
                             model_poll_seconds=0, seed=3)
    key = make_api_key(settings.events_url, "recommend", "admin")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("REWARDS_CATALOG_REFRESH_SECONDS", str(REFRESH_SECONDS))
        app = create_app(store, settings)
        with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
            asked = iter(range(1_000))

            def answer() -> dict:  # a new member each time: no cooldown from an earlier offer
                r = client.post("/v1/recommendations",
                                json={"member_id": f"m-new-{next(asked)}",
                                      "context": {"tier": vocabulary.tiers[-1]}})
                assert r.status_code == 200, r.text
                return r.json()

            def lacks() -> list[str]:
                return [r for r in answer()["degraded_reasons"] if r.startswith("catalog:")]

            first = answer()
            assert first["rewards"] == [] and first["challenges"] == [] and first["degraded"]
            assert lacks() == [NO_REWARDS_REASON, NO_CHALLENGES_REASON]
            assert "catalog" in client.get("/readyz").json()["problems"]

            for kind in VOCABULARY_KINDS:
                values = list(vocabulary.values(kind))
                if values:
                    r = client.put(f"/v1/catalog/vocabularies/{kind}", json={"values": values})
                    assert r.status_code == 200, r.text
            reward = {"name": "Coffee on us", "reward_type": vocabulary.reward_types[0],
                      "category": vocabulary.categories[0], "cost": 1.0,
                      "min_tier": vocabulary.tiers[0]}
            assert client.put("/v1/catalog/rewards/R-1", json=reward).status_code == 201
            assert lacks() == [NO_CHALLENGES_REASON]  # a reward to offer, no template yet
            template = {"name": "Three visits", "kind": vocabulary.challenge_kinds[0],
                        "unit": "visits", "duration_days": 7, "min_target": 1.0,
                        "max_target": 5.0, "target_step": 1.0, "points": 50}
            assert client.put("/v1/catalog/challenges/C-1", json=template).status_code == 201
            whole = answer()
            assert [r["reward_id"] for r in whole["rewards"]] == ["R-1"], whole
            assert [c["challenge_id"] for c in whole["challenges"]] == ["C-1"]
            assert lacks() == []
            assert "catalog" not in client.get("/readyz").json()["problems"]

            assert client.post("/v1/catalog/rewards/R-1/retire").status_code == 200
            assert client.post("/v1/catalog/challenges/C-1/retire").status_code == 200
            assert lacks() == [NO_REWARDS_REASON, NO_CHALLENGES_REASON]
            assert "catalog" in client.get("/readyz").json()["problems"]
