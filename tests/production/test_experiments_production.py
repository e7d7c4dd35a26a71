"""Uplift experiments on the production profile: the experiment and exposure tables in
PostgreSQL, members from Redis, the champion from the MLflow server. The API tests of
tests/integration/test_experiments.py run here unchanged; the CLI and browser tests (which read
the local default store and need a listening server) stay local-only."""

from __future__ import annotations

import pytest
from _reuse import reuse

from serving.config import ServeSettings, StoreSettings

globals().update(reuse("integration/test_experiments.py", exclude=(
    "test_cli_report_writes_html_pngs_and_logs_mlflow", "test_report_page_in_headless_chromium",
    "server")))
pytestmark = [pytest.mark.integration, pytest.mark.production, pytest.mark.slow]


@pytest.fixture(scope="module")
def settings(store: StoreSettings, servers, with_catalog) -> ServeSettings:  # noqa: ANN001
    return ServeSettings(events_url=with_catalog(servers.database("experiments"), members=True),
                         model_poll_seconds=0,
                         seed=3, online_timeout_ms=5_000)


def test_exposures_land_in_postgres(client, live, settings: ServeSettings) -> None:  # noqa: ANN001
    """Read back with a separate PostgreSQL connection, not through the service."""
    import psycopg

    with psycopg.connect(settings.events_url) as conn:
        [(experiments,)] = conn.execute("SELECT COUNT(*) FROM experiments").fetchall()
        [(exposed,)] = conn.execute("SELECT COUNT(DISTINCT member_id) FROM experiment_exposures"
                                    ).fetchall()
    assert experiments >= 1 and exposed > 0
