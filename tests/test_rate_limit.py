"""Rate limits: token buckets in Postgres, shared by every web process, one statement each."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from carinho_outbox import signing
from carinho_outbox import store as store_module
from carinho_outbox.store import Store
from carinho_outbox.web.auth import Principal
from carinho_outbox.web.ratelimit import Quota, key_quota, rate_headers
from tests.conftest import make_settings
from tests.support.samples import PAYLOADS
from tests.support.web import bearer, client, make_key

GOOD = {"type": "client.updated", "payload": PAYLOADS["client.updated"]}


def events(db: psycopg.Connection) -> int:
    row = db.execute("select count(*) from events").fetchone()
    assert row is not None
    return int(row[0])


def test_headers_follow_the_bucket() -> None:
    quota = Quota(rate_per_s=2.0, burst=10)
    assert rate_headers(quota, True, 7.5) == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "7",
        "RateLimit-Reset": "2",  # 2.5 tokens to refill at 2/s, rounded up
        "RateLimit-Policy": "10;w=5",
    }
    refused = rate_headers(quota, False, 0.2)
    assert refused["RateLimit-Remaining"] == "0"
    assert refused["Retry-After"] == "1"  # 0.8 token at 2/s = 0.4 s, never less than 1
    assert rate_headers(Quota(0.1, 5), False, 0.0)["Retry-After"] == "10"


def test_a_keys_own_quota_wins_and_zero_disables() -> None:
    settings = make_settings(RATE_LIMIT_PER_S="5", RATE_LIMIT_BURST="7")
    default = Principal("a", ("crm",), False)
    assert key_quota(default, settings) == Quota(5.0, 7)
    own = Principal("b", ("crm",), False, rate_per_s=1.5, burst=3)
    assert key_quota(own, settings) == Quota(1.5, 3)
    assert not key_quota(Principal("c", ("crm",), False, rate_per_s=0), settings).enabled
    assert not Quota(5.0, 0).enabled


async def test_bucket_refuses_when_empty_and_refills_with_time(store: Store) -> None:
    took = [await store.take_token(bucket="t", rate_per_s=20, burst=3) for _ in range(4)]
    assert [allowed for allowed, _ in took] == [True, True, True, False]
    assert [round(level) for _, level in took[:3]] == [2, 1, 0]
    await asyncio.sleep(0.12)  # 2.4 tokens back at 20/s
    allowed, level = await store.take_token(bucket="t", rate_per_s=20, burst=3)
    assert allowed and 1.0 <= level <= 2.0
    # A refused request takes nothing: the refill is not reset by hammering.
    other = [await store.take_token(bucket="u", rate_per_s=10, burst=1) for _ in range(20)]
    assert [a for a, _ in other].count(True) == 1
    await asyncio.sleep(0.11)
    assert (await store.take_token(bucket="u", rate_per_s=10, burst=1))[0] is True


async def test_prune_removes_only_buckets_that_are_full_again(
    store: Store, db: psycopg.Connection
) -> None:
    await store.take_token(bucket="fast", rate_per_s=100, burst=1)
    await store.take_token(bucket="slow", rate_per_s=0.001, burst=1)
    await asyncio.sleep(0.05)
    assert await store.prune_rate_limits() == 1
    assert db.execute("select bucket from rate_limits").fetchall() == [("slow",)]


def test_limit_is_shared_by_two_app_instances_and_429_carries_the_headers(
    dsn: str, db: psycopg.Connection
) -> None:
    key = make_key(dsn, "crm-system", ["crm"], rate_per_s=0.01, burst=3)
    settings = make_settings()
    with client(settings, dsn) as one, client(settings, dsn) as two:
        answers = [
            (one if i % 2 == 0 else two).post("/events", headers=bearer(key), json=GOOD)
            for i in range(5)
        ]
    assert [r.status_code for r in answers] == [202, 202, 202, 429, 429]
    assert [r.headers["RateLimit-Remaining"] for r in answers] == ["2", "1", "0", "0", "0"]
    refused = answers[3]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.headers["RateLimit-Limit"] == "3"
    assert 90 <= int(refused.headers["Retry-After"]) <= 100  # one token at 0.01/s
    assert 290 <= int(refused.headers["RateLimit-Reset"]) <= 300
    assert events(db) == 3  # the refused requests wrote nothing


def test_concurrent_requests_never_get_more_than_the_burst(
    dsn: str, db: psycopg.Connection
) -> None:
    key = make_key(dsn, "busy", ["crm"], rate_per_s=0.01, burst=5)
    with client(make_settings(), dsn) as c, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(
            lambda _: c.post("/events", headers=bearer(key), json=GOOD).status_code, range(20)
        ))
    assert sorted(codes) == [202] * 5 + [429] * 15
    assert events(db) == 5


def test_default_quota_applies_to_keys_without_their_own_and_zero_disables(
    dsn: str, db: psycopg.Connection
) -> None:
    plain = make_key(dsn, "plain", ["crm"])
    unlimited = make_key(dsn, "unlimited", ["crm"], rate_per_s=0)
    settings = make_settings(RATE_LIMIT_PER_S="0.01", RATE_LIMIT_BURST="2")
    with client(settings, dsn) as c:
        plain_codes = [c.post("/events", headers=bearer(plain), json=GOOD).status_code
                       for _ in range(3)]
        free = [c.post("/events", headers=bearer(unlimited), json=GOOD) for _ in range(5)]
    assert plain_codes == [202, 202, 429]
    assert [r.status_code for r in free] == [202] * 5
    assert "RateLimit-Limit" not in free[0].headers
    with client(make_settings(RATE_LIMIT_PER_S="0"), dsn) as c:
        off = c.post("/events", headers=bearer(plain), json=GOOD)
    assert off.status_code == 202 and "RateLimit-Limit" not in off.headers
    assert db.execute("select bucket from rate_limits").fetchall() == [("key:plain",)]


def test_public_webhooks_are_limited_per_address_before_authentication(
    dsn: str, db: psycopg.Connection
) -> None:
    settings = make_settings(
        SITE_WEBHOOK_SECRET="s", ZAPI_WEBHOOK_TOKEN="t" * 32,
        RATE_LIMIT_IP_PER_S="0.01", RATE_LIMIT_IP_BURST="2",
        RATE_LIMIT_WHATSAPP_IP_PER_S="0.01", RATE_LIMIT_WHATSAPP_IP_BURST="3",
    )
    form = json.dumps({"name": "A", "phone": "11987654321"}).encode()
    with client(settings, dsn) as c:
        site = [c.post("/webhooks/site/lead", content=form,
                       headers={"content-type": "application/json"}) for _ in range(3)]
        wa = [c.post("/webhooks/whatsapp/wrong", json={}) for _ in range(4)]
        # The buckets are per webhook and per address: a signed lead is refused too now.
        signed = c.post("/webhooks/site/lead", content=form, headers={
            **signing.headers("s", "m1", form), "content-type": "application/json"})
    assert [r.status_code for r in site] == [401, 401, 429]
    assert [r.status_code for r in wa] == [401, 401, 401, 429]
    assert signed.status_code == 429 and int(signed.headers["Retry-After"]) >= 1
    assert events(db) == 0
    assert sorted(b for (b,) in db.execute("select bucket from rate_limits")) == [
        "ip:site:testclient", "ip:whatsapp:testclient",
    ]


def test_the_limiter_costs_exactly_one_statement_per_request(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every statement goes through store.q(name): count them for a limited and an unlimited
    key. (Measured latency is in the README; timings are too noisy to assert.) Every ingest
    notifies by itself here, so no trailing NOTIFY (wakeups.py) lands between the counts."""
    on = make_key(dsn, "on", ["crm"], rate_per_s=1000, burst=1000)
    off = make_key(dsn, "off", ["crm"], rate_per_s=0)
    names: list[str] = []

    def counting_q(name: str) -> Any:
        names.append(name)
        return real_q(name)

    real_q = store_module.q
    monkeypatch.setattr(store_module, "q", counting_q)
    with client(make_settings(AUTH_CACHE_S="60", NOTIFY_WINDOW_MS="0"), dsn) as c:
        for key in (on, off):  # warm the catalog and the key caches
            assert c.post("/events", headers=bearer(key), json=GOOD).status_code == 202
        names.clear()
        assert c.post("/events", headers=bearer(off), json=GOOD).status_code == 202
        unlimited = list(names)
        names.clear()
        assert c.post("/events", headers=bearer(on), json=GOOD).status_code == 202
        limited = list(names)
    assert limited == ["take_token", *unlimited]
    assert "take_token" not in unlimited
