"""The catalog as data (admin): rewards, challenge templates and vocabularies.

Writes go to the catalog store (serving.stores.catalog) in one transaction each and are served
by this process from its next request; other workers and replicas pick the new catalog up
within REWARDS_CATALOG_REFRESH_SECONDS (they poll the store's version). Values outside the
catalog's vocabularies are refused (422 naming the field): append them to the vocabulary first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from serving.api.auth import ApiError, require_scope
from serving.api.deps import AdminKey, ServicesDep
from serving.contract.schemas import AUTH_ERRORS, error_responses
from serving.contract.vocabulary import VALUE_PATTERN, VocabularyKind, value_error
from serving.contract.events import ID_DESCRIPTION, ID_PATTERN
from serving.decisioning.catalog import (
    ChallengeFields, ChallengeIn, ChallengeRecord, ItemKind, RewardFields, RewardIn,
    RewardRecord,
)
from serving.services import Services
from serving.stores.catalog import CatalogRejected, CatalogStore

router = APIRouter(prefix="/v1/catalog", tags=["catalog"], responses=AUTH_ERRORS,
                   dependencies=[Depends(require_scope("admin"))])
log = logging.getLogger("rewards.audit")

RewardId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN,
                               description=ID_DESCRIPTION)]
ChallengeId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN,
                                  description=ID_DESCRIPTION)]
IncludeRetired = Annotated[bool, Query(description="list retired items too")]
_UNAVAILABLE = error_responses(503)


class RewardList(BaseModel):
    catalog_version: int
    rewards: list[RewardRecord]


class ChallengeList(BaseModel):
    catalog_version: int
    challenges: list[ChallengeRecord]


class VocabularyList(BaseModel):
    catalog_version: int
    vocabularies: dict[str, list[str]] = Field(
        description="kind -> values in code order (a value's code is its position)")


class VocabularyAppend(BaseModel):
    """Values to append to one vocabulary; values it already holds are left where they are."""

    model_config = ConfigDict(extra="forbid")

    values: list[Annotated[str, StringConstraints(pattern=VALUE_PATTERN)]] = Field(
        min_length=1, max_length=1_000,
        description="categories, reward types and challenge kinds: 1-32 of [A-Za-z0-9_-] (they "
                    "name features); tiers (at most 16) and regions: printable text")


class VocabularyAppended(BaseModel):
    kind: str
    values: list[str] = Field(description="the whole vocabulary after the append, code order")
    added: list[str]
    catalog_version: int


def _store(services: Services) -> CatalogStore:
    if services.catalog_store is None:
        raise ApiError(503, "catalog store unavailable", {"Retry-After": "5"}, field=None)
    return services.catalog_store


def _errors(status: int, errors: list[tuple[str, str]]) -> JSONResponse:
    return JSONResponse(status_code=status, content={"errors": [
        {"field": f, "reason": r} for f, r in errors]})


async def _serve_now(services: Services) -> None:
    """This process serves the write from its next request; a failure here leaves it to the
    background poll (the write itself has committed)."""
    try:
        await asyncio.to_thread(services.refresh_catalog)
    except Exception:  # noqa: BLE001
        log.exception("catalog reload after a write failed; the poller will retry")


async def _upsert(services: Services, kind: ItemKind, item: RewardIn | ChallengeIn,
                  response: Response, key_id: str) -> RewardRecord | ChallengeRecord | JSONResponse:
    store = _store(services)
    try:
        result = await asyncio.to_thread(store.upsert, kind, [item])
    except CatalogRejected as exc:
        return _errors(422, [(f"body.{e.field}", e.reason) for e in exc.errors])
    item_id = item.reward_id if isinstance(item, RewardIn) else item.challenge_id
    log.info("catalog item written", extra={"key_id": key_id, "kind": kind, "item_id": item_id,
                                            "version": result.version})
    if result.created:
        response.status_code = 201
    await _serve_now(services)
    record = await asyncio.to_thread(store.get, kind, item_id)
    assert record is not None  # just written; items are never deleted
    return record


async def _retire(services: Services, kind: ItemKind, item_id: str, key_id: str
                  ) -> RewardRecord | ChallengeRecord | JSONResponse:
    record = await asyncio.to_thread(_store(services).retire, kind, item_id)
    if record is None:
        field = "reward_id" if kind == "rewards" else "challenge_id"
        return _errors(404, [(f"path.{field}", f"no {kind[:-1]} {item_id!r}")])
    log.info("catalog item retired", extra={"key_id": key_id, "kind": kind, "item_id": item_id})
    await _serve_now(services)
    return record


# -- rewards ------------------------------------------------------------------------------------

@router.get("/rewards", response_model=RewardList, operation_id="list_rewards",
            responses=_UNAVAILABLE)
async def list_rewards(services: ServicesDep, include_retired: IncludeRetired = False
                       ) -> RewardList:
    """Every active reward (and the retired ones with include_retired), by id."""
    store = _store(services)
    version = await asyncio.to_thread(store.version)
    records = await asyncio.to_thread(store.records, "rewards", include_retired)
    return RewardList(catalog_version=version, rewards=records)  # type: ignore[arg-type]


@router.put("/rewards/{reward_id}", response_model=RewardRecord, operation_id="upsert_reward",
            responses={201: {"model": RewardRecord, "description": "created"}, **_UNAVAILABLE})
async def upsert_reward(reward_id: RewardId, body: RewardFields, services: ServicesDep,
                        principal: AdminKey, response: Response
                        ) -> RewardRecord | JSONResponse:
    """Create (201) or replace (200) a reward. Its reward_type, category (or "any") and
    min_tier must be in the catalog's vocabularies, else 422 naming the field. Served within
    REWARDS_CATALOG_REFRESH_SECONDS everywhere; explored while it is new to the reward model."""
    item = RewardIn.model_validate({**body.model_dump(), "reward_id": reward_id})
    return await _upsert(services, "rewards", item, response, principal.key_id)  # type: ignore[return-value]


@router.post("/rewards/{reward_id}/retire", response_model=RewardRecord,
             operation_id="retire_reward", responses=error_responses(404, 503))
async def retire_reward(reward_id: RewardId, services: ServicesDep, principal: AdminKey
                        ) -> RewardRecord | JSONResponse:
    """Stop serving a reward (kept for history and reports; PUT it as active to restore)."""
    return await _retire(services, "rewards", reward_id, principal.key_id)  # type: ignore[return-value]


# -- challenge templates ------------------------------------------------------------------------

@router.get("/challenges", response_model=ChallengeList, operation_id="list_challenges",
            responses=_UNAVAILABLE)
async def list_challenges(services: ServicesDep, include_retired: IncludeRetired = False
                          ) -> ChallengeList:
    """Every active challenge template (and the retired ones with include_retired), by id."""
    store = _store(services)
    version = await asyncio.to_thread(store.version)
    records = await asyncio.to_thread(store.records, "challenges", include_retired)
    return ChallengeList(catalog_version=version, challenges=records)  # type: ignore[arg-type]


@router.put("/challenges/{challenge_id}", response_model=ChallengeRecord,
            operation_id="upsert_challenge",
            responses={201: {"model": ChallengeRecord, "description": "created"},
                       **_UNAVAILABLE})
async def upsert_challenge(challenge_id: ChallengeId, body: ChallengeFields,
                           services: ServicesDep, principal: AdminKey, response: Response
                           ) -> ChallengeRecord | JSONResponse:
    """Create (201) or replace (200) a challenge template; its kind must be in the catalog's
    challenge_kind vocabulary, and min_target <= max_target."""
    item = ChallengeIn.model_validate({**body.model_dump(), "challenge_id": challenge_id})
    return await _upsert(services, "challenges", item, response, principal.key_id)  # type: ignore[return-value]


@router.post("/challenges/{challenge_id}/retire", response_model=ChallengeRecord,
             operation_id="retire_challenge", responses=error_responses(404, 503))
async def retire_challenge(challenge_id: ChallengeId, services: ServicesDep,
                           principal: AdminKey) -> ChallengeRecord | JSONResponse:
    """Stop serving a challenge template (kept for history and reports)."""
    return await _retire(services, "challenges", challenge_id, principal.key_id)  # type: ignore[return-value]


# -- vocabularies -------------------------------------------------------------------------------

@router.get("/vocabularies", response_model=VocabularyList, operation_id="list_vocabularies",
            responses=_UNAVAILABLE)
async def list_vocabularies(services: ServicesDep) -> VocabularyList:
    """Tiers (lowest first), regions, categories, reward types and challenge kinds."""
    store = _store(services)
    version = await asyncio.to_thread(store.version)
    vocabulary = await asyncio.to_thread(store.vocabulary)
    return VocabularyList(catalog_version=version, vocabularies=vocabulary.as_dict())


@router.put("/vocabularies/{kind}", response_model=VocabularyAppended,
            operation_id="append_vocabulary", responses=_UNAVAILABLE)
async def append_vocabulary(kind: VocabularyKind, body: VocabularyAppend,
                            services: ServicesDep, principal: AdminKey
                            ) -> VocabularyAppended | JSONResponse:
    """Append values to a vocabulary (idempotent: values already there keep their code).
    Codes are positions and feed the models, so values are never removed or reordered."""
    problems = [(f"body.values.{i}", p) for i, v in enumerate(body.values)
                if (p := value_error(kind, v))]
    if problems:
        return _errors(422, problems)
    store = _store(services)
    added = await asyncio.to_thread(store.append_vocabulary, [(kind, v) for v in body.values])
    if added:
        log.info("vocabulary appended", extra={"key_id": principal.key_id, "kind": kind,
                                               "values": [v for _, v in added]})
        await _serve_now(services)
    vocabulary = await asyncio.to_thread(store.vocabulary)
    return VocabularyAppended(kind=kind, values=list(vocabulary.values(kind)),
                              added=[v for _, v in added],
                              catalog_version=await asyncio.to_thread(store.version))
