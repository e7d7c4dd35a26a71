"""Contract fuzzing of the HTTP API from its own OpenAPI document (schemathesis, every check).

Schemathesis runs as ``st run`` would (its engine, in-process, on the ASGI app): the examples,
coverage, fuzzing and stateful phases, positive and negative data, with every built-in check:
no 5xx; statuses, content types, headers and bodies as documented; schema-valid requests
accepted (``positive_data_acceptance``) and schema-violating ones refused
(``negative_data_rejection``); 401 without a key (``ignored_auth``, ``missing_required_header``);
405 with a correct ``Allow`` for undocumented methods (``unsupported_method``,
``allow_header_conformance``); and answers within 10 s (``max_response_time``).

Documented exceptions: these operations may answer 422 to a schema-valid body, because their
rules cannot be written in a static JSON Schema (the server checks them and names the field):

- ``create_experiment``: arm shares summing to 1, a ``model`` arm, unique arm names, end after
  start (cross-field);
- ``upsert_reward``, ``upsert_challenge``: types, categories, tiers and kinds must be in the
  catalog's vocabularies, which are data that change at run time; a template's ``max_target``
  is at least its ``min_target`` (cross-field);
- ``append_vocabulary``: a tier is at most 16 characters, other values 32 (the limit depends
  on the path's ``kind``).

Schema-violating requests must still be refused by every operation, without exception.

The app runs on a copy of the small world (real Feast online store, MLflow registry, ONNX
models, SQLite event store), so fuzzed erasures and profile writes touch nothing shared.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from schemathesis.engine.statistic import Statistic

from serving.config import ServeSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# Per operation, phase and mode: about three minutes on two shared cores. Deeper runs:
# REWARDS_FUZZ_EXAMPLES=200 REWARDS_FUZZ_SEED=7 pytest tests/integration/test_fuzz.py -s
MAX_EXAMPLES = int(os.environ.get("REWARDS_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("REWARDS_FUZZ_SEED", "1"))
#: Operations whose rules a static JSON Schema cannot state (see the module docstring).
RULES_BEYOND_JSON_SCHEMA = ("create_experiment", "upsert_reward", "upsert_challenge",
                            "append_vocabulary")


def fuzz_config(key: str, max_examples: int = MAX_EXAMPLES, seed: int = SEED
                ) -> SchemathesisConfig:
    """Every phase and check of ``st run``, positive and negative data, reproducible."""
    return SchemathesisConfig.from_dict({
        "seed": seed,
        "suppress-health-check": ["all"],
        "headers": {"Authorization": f"Bearer {key}"},
        "generation": {"mode": "all", "max-examples": max_examples, "database": "none",
                       "deterministic": True},
        "phases": {name: {"enabled": True}
                   for name in ("examples", "coverage", "fuzzing", "stateful")},
        "checks": {"enabled": True, "max_response_time": 10.0},
        "operations": [{
            "include-operation-id": operation,
            "checks": {"positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]}},
        } for operation in RULES_BEYOND_JSON_SCHEMA],
    })


def run(app: Any, config: SchemathesisConfig) -> tuple[Statistic, list[str], int]:
    """The engine's statistics, every error (a crash in a phase, not a failed check), and how
    many operations the document has."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    operations = sum(1 for _ in schema.get_all_operations())
    statistic = Statistic()
    errors: list[str] = []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished) and event.is_test_scenario:
            statistic.on_scenario_finished(event.recorder)
        elif isinstance(event, events.NonFatalError):
            errors.append(f"{event.label}: {event.info.title}: {event.info.message}"[:2000])
        elif isinstance(event, events.FatalError):
            raise event.exception
    return statistic, errors, operations


def failures(statistic: Statistic) -> list[str]:
    """Each failure with the request that reproduces it and the answer it got."""
    out = []
    for label, grouped in statistic.failures.items():
        for group in grouped.values():
            answer = group.response
            got = (f"{answer.status_code} {answer.content[:400]!r}" if answer is not None
                   else "-")
            for failure in group.failures:
                out.append(f"{label}: {failure.title}\n{failure.message}\n"
                           f"request: {group.code_sample}\nresponse: {got}"[:3000])
    return out


@pytest.fixture(scope="module")
def fuzz_app(copy_store, tmp_path_factory: pytest.TempPathFactory,  # noqa: ANN001
             make_api_key, with_catalog) -> Iterator[tuple[Any, str]]:  # noqa: ANN001
    from serving.main import create_app

    root = tmp_path_factory.mktemp("fuzz")
    store = copy_store(root)
    url = with_catalog(f"sqlite:///{root / 'events.db'}")
    key = make_api_key(url)  # every scope: the fuzzer should reach each route's own validation
    app = create_app(store, ServeSettings(events_url=url, model_poll_seconds=0, seed=1))
    with TestClient(app):  # runs the lifespan: stores and models stay open for the fuzzer
        yield app, key


def test_api_conforms_to_its_schema(fuzz_app: tuple[Any, str]) -> None:
    app, key = fuzz_app
    statistic, errors, operations = run(app, fuzz_config(key))
    found = failures(statistic)
    print(f"\nschemathesis {schemathesis.__version__}: {statistic.total_cases} test cases, "
          f"{statistic.cases_with_failures} with failures ({len(found)} unique), "
          f"{len(errors)} errors; operations tested: {len(statistic.tested_operations)} of "
          f"{operations}")
    assert len(statistic.tested_operations) == operations >= 21  # every one was reached
    assert statistic.total_cases > 1_000
    assert not errors and not found, "\n\n".join(errors + found)
