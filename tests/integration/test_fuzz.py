"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis).

Every operation gets generated valid and invalid requests with an admin key; the properties are:
no 5xx, every response (status, content type, headers, body) conforms to the schema, and no
route answers without a key (`ignored_auth`). Bounded: a fixed number of examples per operation.
The app runs on a copy of the small world's data, so fuzzed erasures touch nothing shared.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from serving.config import ServeSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MAX_EXAMPLES = 30  # per operation and mode: ~20 s in all on two shared cores
CHECKS = [checks.not_a_server_error, checks.response_schema_conformance,
          checks.status_code_conformance, checks.content_type_conformance,
          checks.response_headers_conformance, checks.ignored_auth]


@pytest.fixture(scope="module")
def fuzz_app(copy_store, tmp_path_factory: pytest.TempPathFactory,  # noqa: ANN001
             make_api_key) -> Iterator[tuple[object, str]]:  # noqa: ANN001
    from serving.main import create_app

    root = tmp_path_factory.mktemp("fuzz")
    store = copy_store(root)
    url = f"sqlite:///{root / 'events.db'}"
    key = make_api_key(url)  # every scope: the fuzzer should reach each route's own validation
    app = create_app(store, ServeSettings(events_url=url, model_poll_seconds=0, seed=1))
    with TestClient(app):  # runs the lifespan: stores and models stay open for the fuzzer
        yield app, key


def test_api_conforms_to_its_schema(fuzz_app) -> None:  # noqa: ANN001
    """Each operation in turn, so one failing route does not hide the others."""
    app, key = fuzz_app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: dict[str, str] = {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(mode))
            @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                      database=None, suppress_health_check=list(HealthCheck))
            def fuzz(case) -> None:  # noqa: ANN001
                case.call_and_validate(headers={"Authorization": f"Bearer {key}"},
                                       checks=CHECKS)

            t0 = time.perf_counter()
            try:
                fuzz()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # no input to break: nothing to negate
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - report all routes
                failures[f"{operation.label} ({mode.value})"] = f"{type(exc).__name__}: {exc}"[:3000]
            print(f"{operation.label} ({mode.value}): {time.perf_counter() - t0:.1f} s")
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
