"""API keys, token buckets and session cookies on plain values and a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from serving.api.auth import ApiError, Authenticator, TokenBuckets, safe_next
from serving.stores.keys import KeyStore, hash_key, open_key_store, parse_key_id


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    store = open_key_store(f"sqlite:///{tmp_path / 'events.db'}")
    yield store
    store.close()


def auth_for(keys: KeyStore, ttl: float = 60.0) -> Authenticator:
    return Authenticator(keys, disabled=False, cache_ttl=ttl, default_rate_limit=10.0,
                         session_secret=b"s" * 32, session_ttl=60, cookie_secure=True)


def test_only_the_hash_is_stored(keys: KeyStore, tmp_path: Path) -> None:
    record, raw = keys.create("crm", ["recommend", "events"], rate_limit=5)
    assert raw.startswith(f"rk_{record.key_id}_") and len(raw) > 50
    assert parse_key_id(raw) == record.key_id
    rows = sqlite3.connect(tmp_path / "events.db").execute("SELECT * FROM api_keys").fetchall()
    flat = " ".join(str(v) for row in rows for v in row)
    assert raw not in flat and raw.split("_", 2)[2] not in flat
    assert hash_key(raw) in flat
    assert keys.get(record.key_id).scopes == {"recommend", "events"}


def test_create_refuses_bad_input(keys: KeyStore) -> None:
    with pytest.raises(ValueError, match="unknown scope"):
        keys.create("x", ["root"])
    with pytest.raises(ValueError, match="at least one scope"):
        keys.create("x", [])
    with pytest.raises(ValueError, match="rate-limit"):
        keys.create("x", ["admin"], rate_limit=0)


def test_revoke_and_list(keys: KeyStore) -> None:
    a, _ = keys.create("a", ["recommend"])
    b, _ = keys.create("b", ["admin"])
    assert keys.revoke(a.key_id) and not keys.revoke(a.key_id) and not keys.revoke("nope")
    listed = {k.key_id: k for k in keys.list_keys()}
    assert not listed[a.key_id].active and listed[b.key_id].active
    assert "key_sha256" not in listed[a.key_id].public()


@pytest.mark.parametrize("raw", ["", "rk_", "rk_short_x", "Bearer x", "rk_" + "a" * 10,
                                 "rk_ABCDEFGHJK_secret", "x" * 500])
def test_malformed_keys_have_no_id(raw: str) -> None:
    assert parse_key_id(raw) is None


def test_authenticate_checks_the_secret_and_revocation(keys: KeyStore,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import serving.api.auth

    from types import SimpleNamespace

    clock = [1_000.0]  # the cache's clock, moved by hand: the machine's load cannot expire it
    monkeypatch.setattr(serving.api.auth, "time",
                        SimpleNamespace(monotonic=lambda: clock[0], time=time.time))
    record, raw = keys.create("crm", ["recommend"])
    auth = auth_for(keys, ttl=0.2)
    principal = asyncio.run(auth.authenticate(raw))
    assert principal.key_id == record.key_id and principal.scopes == {"recommend"}
    forged = raw[:-4] + ("AAAA" if not raw.endswith("AAAA") else "BBBB")
    for bad in (None, "", forged, "rk_nothere22_abc"):
        with pytest.raises(ApiError) as err:
            asyncio.run(auth.authenticate(bad))
        assert err.value.status == 401 and "WWW-Authenticate" in err.value.headers
    with pytest.raises(ApiError) as err:
        auth.authorize(principal, "admin")
    assert err.value.status == 403
    keys.revoke(record.key_id)
    clock[0] += 0.15
    asyncio.run(auth.authenticate(raw))  # still cached: revocation waits for the TTL
    clock[0] += 0.1
    with pytest.raises(ApiError):
        asyncio.run(auth.authenticate(raw))


def test_token_bucket() -> None:
    buckets = TokenBuckets()
    assert [buckets.take("k", 2.0, now=0.0) for _ in range(2)] == [0.0, 0.0]  # burst = 2
    assert buckets.take("k", 2.0, now=0.0) == pytest.approx(0.5)
    assert buckets.take("k", 2.0, now=0.5) == 0.0  # refilled one token
    assert buckets.take("other", 2.0, now=0.5) == 0.0  # per key
    assert buckets.take("slow", 0.1, now=0.0) == 0.0
    assert buckets.take("slow", 0.1, now=0.0) == pytest.approx(10.0)


def test_session_cookie_is_signed_and_expires(keys: KeyStore) -> None:
    record, _ = keys.create("marketer", ["experiments:read"])
    auth = auth_for(keys)
    cookie = auth.session_cookie(record.key_id)
    assert asyncio.run(auth.session_principal(cookie)).key_id == record.key_id
    key_id, expires, sig = cookie.split(".")
    for bad in (f"{key_id}.{int(expires) + 999}.{sig}", f"{key_id}.{expires}.{'0' * 64}",
                "garbage", "", auth.session_cookie(record.key_id, now=time.time() - 3600)):
        assert asyncio.run(auth.session_principal(bad)) is None
    other = Authenticator(keys, disabled=False, cache_ttl=1, default_rate_limit=1,
                          session_secret=b"t" * 32, session_ttl=60, cookie_secure=True)
    assert asyncio.run(other.session_principal(cookie)) is None  # another server secret
    keys.revoke(record.key_id)
    assert asyncio.run(auth_for(keys).session_principal(cookie)) is None


def test_server_secret_is_shared_and_stable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    first, second = open_key_store(url), open_key_store(url)
    try:
        assert first.server_secret("s") == second.server_secret("s") != first.server_secret("t")
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(("given", "expected"), [
    ("/experiments/1?x=2", "/experiments/1?x=2"), ("//evil.example", "/login"),
    ("https://evil.example", "/login"), ("/\\evil", "/login"), (None, "/login")])
def test_no_open_redirect_after_login(given: str | None, expected: str) -> None:
    assert safe_next(given) == expected


def test_keys_cli(tmp_path: Path) -> None:
    import json

    from training.cli.app import app

    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--name", "crm", "--scope", "recommend",
                                  "--scope", "events", "--rate-limit", "20",
                                  "--data-dir", str(tmp_path)])
    assert created.exit_code == 0, created.output
    info = json.loads(created.stdout.splitlines()[0])
    assert info["key"].startswith("rk_") and info["scopes"] == ["events", "recommend"]
    listed = runner.invoke(app, ["keys", "list", "--json", "--data-dir", str(tmp_path)])
    assert info["key"] not in listed.stdout
    assert json.loads(listed.stdout)[0]["key_id"] == info["key_id"]
    assert runner.invoke(app, ["keys", "revoke", info["key_id"],
                               "--data-dir", str(tmp_path)]).exit_code == 0
    again = runner.invoke(app, ["keys", "revoke", info["key_id"], "--data-dir", str(tmp_path)])
    assert again.exit_code == 2 and "no active key" in again.output
    bad = runner.invoke(app, ["keys", "create", "--name", "x", "--scope", "root",
                              "--data-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown scope" in bad.output
