"""Versioned mappings and routes against the real database, and through a running worker:
save/activate/rollback, immutability, pinning across retries, remap on reprocess, preview."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest

from carinho_outbox.mapping import dump_spec, parse_spec
from carinho_outbox.mappings_admin import AdminError, MappingsAdmin, RouteChange
from carinho_outbox.store import Store
from tests.conftest import make_settings
from tests.support.engine import eventually, ingest, running_worker
from tests.support.receiver import Received, Receiver, Reply
from tests.support.samples import PAYLOADS

LEAD = "lead.created"
LEAD_PAYLOAD = {"name": "Maria Souza", "phone": "+5541999998888", "utm_source": "google"}

UPPER_NAME = {
    "mode": "only_listed",
    "fields": [
        {"to": "nome", "from": "name", "format": "upper"},
        {"to": "contato.telefone", "from": "phone", "format": "phone_national"},
        {"to": "evento", "from": "@event.id"},
    ],
}


def crm_env(receiver: Receiver) -> dict[str, str]:
    return {"DEST_CRM_URL": receiver.url("/crm"), "DEST_CRM_SECRET": "secret-crm"}


def active_versions(db: psycopg.Connection, event_type: str, destination: str) -> list[int]:
    return [
        r[0]
        for r in db.execute(
            "select version from event_mappings where event_type = %s and destination = %s "
            "and is_active order by version",
            (event_type, destination),
        )
    ]


def status_of(db: psycopg.Connection, delivery_id: int) -> tuple[str, int | None, int]:
    row = db.execute(
        "select status, mapping_version, attempts from deliveries where id = %s", (delivery_id,)
    ).fetchone()
    assert row is not None
    return row


def crm_delivery(db: psycopg.Connection, event_id: Any) -> int:
    row = db.execute(
        "select id from deliveries where event_id = %s and destination = 'crm'", (event_id,)
    ).fetchone()
    assert row is not None
    return int(row[0])


# --------------------------------------------------------------------------- versions


async def test_save_creates_next_version_and_activates_only_when_asked(
    store: Store, db: psycopg.Connection
) -> None:
    admin = MappingsAdmin(store)
    saved = await admin.save(LEAD, "crm", UPPER_NAME, activate=False, actor="t", note=" first ")
    assert (saved["version"], saved["is_active"], saved["previous_version"]) == (2, False, 1)
    assert active_versions(db, LEAD, "crm") == [1]
    row = db.execute(
        "select spec, created_by, note from event_mappings "
        "where event_type = %s and destination = 'crm' and version = 2",
        (LEAD,),
    ).fetchone()
    # Stored in canonical form (defaults written out), exactly what parse+dump gives.
    assert row == (dump_spec(parse_spec(UPPER_NAME)), "t", "first")

    saved = await admin.save(LEAD, "crm", {"fields": []}, activate=True, actor="ops")
    assert (saved["version"], saved["is_active"], saved["previous_version"]) == (3, True, 1)
    assert active_versions(db, LEAD, "crm") == [3]
    log = db.execute(
        "select version, previous_version, action, activated_by from mapping_activations"
    ).fetchall()
    assert log == [(3, 1, "save", "ops")]
    # Other pairs are untouched.
    assert active_versions(db, LEAD, "marketing") == [1]


async def test_activate_and_rollback_are_single_statements_in_any_row_order(
    store: Store, db: psycopg.Connection
) -> None:
    admin = MappingsAdmin(store)
    for i in range(3):
        await admin.save(
            LEAD, "crm", {"fields": [{"to": f"k{i}", "const": i}]}, activate=False, actor="t"
        )
    # Every order of flips: with a row-by-row unique check some of these would fail depending
    # on where the updated rows landed physically.
    for version in (2, 4, 1, 3, 2, 1, 4, 4, 3):
        row = await admin.activate(LEAD, "crm", version, actor="t")
        assert row["version"] == version
        assert active_versions(db, LEAD, "crm") == [version]
    row = await admin.rollback(LEAD, "crm", actor="t")
    assert (row["version"], row["previous_version"]) == (2, 3)
    assert active_versions(db, LEAD, "crm") == [2]
    await admin.rollback(LEAD, "crm", actor="t")
    assert active_versions(db, LEAD, "crm") == [1]
    with pytest.raises(AdminError) as err:
        await admin.rollback(LEAD, "crm", actor="t")
    assert err.value.kind == "invalid" and "no version below" in err.value.message
    assert active_versions(db, LEAD, "crm") == [1]
    actions = db.execute(
        "select action, count(*) from mapping_activations group by action order by action"
    ).fetchall()
    # Re-activating the active version (4 then 4) is not logged as a change.
    assert actions == [("activate", 8), ("rollback", 2)]


async def test_a_version_never_changes_saving_creates_n_plus_1(
    store: Store, db: psycopg.Connection
) -> None:
    admin = MappingsAdmin(store)
    before = db.execute(
        "select spec, created_at from event_mappings "
        "where event_type = %s and destination = 'crm' and version = 1",
        (LEAD,),
    ).fetchone()
    for _ in range(2):  # the same spec twice is two versions, not an update
        await admin.save(LEAD, "crm", UPPER_NAME, activate=True, actor="t")
    versions = db.execute(
        "select version, spec from event_mappings where event_type = %s and destination = 'crm' "
        "order by version",
        (LEAD,),
    ).fetchall()
    assert [v for v, _ in versions] == [1, 2, 3]
    assert versions[1][1] == versions[2][1]
    assert (
        db.execute(
            "select spec, created_at from event_mappings "
            "where event_type = %s and destination = 'crm' and version = 1",
            (LEAD,),
        ).fetchone()
        == before
    )
    # Not even SQL typed by hand can change or delete a version: only is_active may move.
    with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="immutable"):
        db.execute(
            "update event_mappings set spec = '{}' where event_type = %s and version = 1", (LEAD,)
        )
    with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="immutable"):
        db.execute("update event_mappings set note = 'x' where event_type = %s", (LEAD,))
    with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="cannot be deleted"):
        db.execute("delete from event_mappings where event_type = %s", (LEAD,))
    # Two active versions of one pair are refused by the database itself.
    with pytest.raises(psycopg.errors.ExclusionViolation):
        db.execute(
            "update event_mappings set is_active = true where event_type = %s "
            "and destination = 'crm'",
            (LEAD,),
        )


async def test_concurrent_saves_get_distinct_versions(store: Store, db: psycopg.Connection) -> None:
    admin = MappingsAdmin(store)
    rows = await asyncio.gather(
        *(
            admin.save(
                LEAD, "crm", {"fields": [{"to": "n", "const": i}]}, activate=True, actor=f"op{i}"
            )
            for i in range(3)
        )
    )
    assert sorted(r["version"] for r in rows) == [2, 3, 4]
    assert len(active_versions(db, LEAD, "crm")) == 1


BAD_SPECS: list[tuple[object, str]] = [
    (
        {"fields": [{"to": "a", "from": "x"}, {"to": "b", "from": "y", "format": "shout"}]},
        "fields[1] (to='b'): unknown format 'shout'",
    ),
    (
        {"fields": [{"to": "d", "from": "x", "format": "date"}]},
        "fields[0] (to='d'): format 'date' needs a 'pattern'",
    ),
    (
        {"fields": [{"to": "a", "from": "x", "const": 1}]},
        "fields[0] (to='a'): has both 'from' and 'const'",
    ),
    (
        {"fields": [{"to": "a", "from": "x", "eval": "1+1"}]},
        "fields[0] (to='a'): unknown key 'eval'",
    ),
    ({"fields": [{"to": "a", "from": "@event.secret"}]}, "unknown reference '@event.secret'"),
    ({"mode": "replace_all"}, "mode"),
    (
        {"fields": [{"to": "a.b", "const": 1}, {"to": "a", "const": 2}]},
        "fields[1] (to='a'): collides with fields[0]",
    ),
    (
        {
            "fields": [
                {
                    "to": "t",
                    "from": "d",
                    "format": "date",
                    "pattern": "DD/MM/YYYY",
                    "tz": "America/Sao_Paulo",
                }
            ]
        },
        "bad tz 'America/Sao_Paulo'",
    ),
    ("{not json", "spec is not valid JSON"),
    ([1, 2], "spec must be a JSON object"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS)
async def test_bad_specs_are_rejected_naming_the_rule_and_nothing_is_written(
    store: Store, db: psycopg.Connection, spec: object, message: str
) -> None:
    admin = MappingsAdmin(store)
    with pytest.raises(AdminError) as err:
        await admin.save(LEAD, "crm", spec, activate=True, actor="t")
    assert err.value.kind == "invalid"
    assert err.value.details
    assert any(message in d["message"] for d in err.value.details), err.value.details
    assert message in err.value.message or len(err.value.details) > 1
    assert db.execute(
        "select count(*) from event_mappings where event_type = %s and destination = 'crm'", (LEAD,)
    ).fetchone() == (1,)


async def test_rule_paths_in_details(store: Store) -> None:
    with pytest.raises(AdminError) as err:
        await MappingsAdmin(store).save(
            LEAD,
            "crm",
            {"fields": [{"to": "a", "const": 1}, {"to": "b", "from": "x", "format": "nope"}]},
            activate=False,
            actor="t",
        )
    assert err.value.details is not None
    assert err.value.details[0]["path"] == "spec.fields.1"


async def test_unknown_pair_and_version_are_not_found(store: Store) -> None:
    admin = MappingsAdmin(store)
    for call in (
        admin.save(LEAD, "crmm", {"fields": []}, activate=False, actor="t"),
        admin.show("lead.nope", "crm"),
        admin.activate(LEAD, "crm", 9, actor="t"),
        admin.activate(LEAD, "nope", 1, actor="t"),
        admin.diff(LEAD, "crm", 1, 7),
        admin.preview(LEAD, "crm", payload=LEAD_PAYLOAD, version=5),
    ):
        with pytest.raises(AdminError) as err:
            await call
        assert err.value.kind == "not_found", err.value.message


async def test_diff_names_the_changed_rules(store: Store) -> None:
    admin = MappingsAdmin(store)
    await admin.save(LEAD, "crm", UPPER_NAME, activate=False, actor="t")
    doc = await admin.diff(LEAD, "crm", None, None)  # active (1) -> latest (2)
    assert (doc["from"], doc["to"], doc["identical"]) == (1, 2, False)
    added = [line for line in doc["diff"] if line.startswith("+ ")]
    assert any('"from": "phone"' in line and "phone_national" in line for line in added)
    assert (await admin.diff(LEAD, "crm", 2, 2))["identical"] is True


# --------------------------------------------------------------------------- preview


async def test_preview_of_a_payload_renders_with_the_active_version(store: Store) -> None:
    admin = MappingsAdmin(store)
    await admin.save(LEAD, "crm", UPPER_NAME, activate=True, actor="t")
    # The payload goes through ingress normalisation first (the phone becomes E.164).
    doc = await admin.preview(LEAD, "crm", payload={"name": "Ana", "phone": "(41) 99999-8888"})
    assert (doc["version"], doc["version_source"]) == (2, "active")
    assert doc["envelope"]["data"] == {
        "nome": "ANA",
        "contato": {"telefone": "(41) 99999-8888"},
        "evento": "00000000-0000-0000-0000-000000000000",
    }
    assert doc["envelope"]["source"] == "site"
    assert json.loads(doc["body"]) == doc["envelope"]
    old = await admin.preview(LEAD, "crm", payload={"name": "Ana", "email": "a@b.co"}, version=1)
    assert old["envelope"]["data"] == {"name": "Ana", "email": "a@b.co"}
    strict = {"fields": [{"to": "telefone", "from": "phone", "required": True}]}
    await admin.save(LEAD, "crm", strict, activate=False, actor="t")
    with pytest.raises(AdminError) as err:  # a valid spec that cannot render this payload
        await admin.preview(LEAD, "crm", payload={"name": "Ana", "email": "a@b.co"}, version=3)
    assert err.value.kind == "invalid"
    assert "fields[0] (to='telefone'): required source 'phone'" in err.value.message
    with pytest.raises(AdminError) as err:
        await admin.preview(LEAD, "crm", payload={"phone": "123"})
    assert err.value.kind == "invalid" and err.value.details


# --------------------------------------------------------------------------- engine


async def test_retry_keeps_the_pinned_version_across_a_mapping_change(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    """A 503 makes the delivery wait (Retry-After 2 s); meanwhile a new version is saved and
    activated. The retry still sends v1's body, byte for byte; a new event gets v2."""
    receiver.script = lambda _r, n: (
        Reply(status=503, headers={"Retry-After": "2"}) if n == 1 else Reply()
    )
    admin = MappingsAdmin(store)
    settings = make_settings(**crm_env(receiver))
    await store.set_route(event_type=LEAD, destination="marketing", actor="t", enabled=False)
    first_id, _, _ = await ingest(store, LEAD, LEAD_PAYLOAD, "site")
    first = crm_delivery(db, first_id)
    async with running_worker(settings, store, dsn):
        await asyncio.to_thread(receiver.wait_for, 1)
        await eventually(lambda: status_of(db, first) == ("pending", 1, 1))
        await admin.save(LEAD, "crm", UPPER_NAME, activate=True, actor="t")
        assert status_of(db, first) == ("pending", 1, 1)  # still waiting: the change came first
        await eventually(lambda: status_of(db, first)[0] == "delivered", timeout_s=15)
        second_id, _, _ = await ingest(store, LEAD, LEAD_PAYLOAD, "site")
        second = crm_delivery(db, second_id)
        await eventually(lambda: status_of(db, second)[0] == "delivered")
    tried, retried, new = receiver.requests
    assert retried.at - tried.at >= 1.9
    assert retried.body == tried.body  # same version, same bytes
    assert retried.json["data"] == LEAD_PAYLOAD
    assert status_of(db, first) == ("delivered", 1, 2)
    assert status_of(db, second) == ("delivered", 2, 1)
    assert new.json["data"] == {
        "nome": "MARIA SOUZA",
        "contato": {"telefone": "(41) 99999-8888"},
        "evento": str(second_id),
    }
    # Preview (no version asked) reproduces what each delivery sent, byte for byte.
    for event_id, got in ((first_id, retried), (second_id, new)):
        doc = await admin.preview(LEAD, "crm", event_id=event_id)
        assert doc["version_source"] == "pinned"
        assert doc["body"].encode() == got.body


def _wants_telefone(req: Received, _n: int) -> Reply:
    if "telefone" in req.json["data"]:
        return Reply()
    return Reply(status=400, body='{"error":"telefone is required"}')


async def test_reprocess_with_remap_replays_dead_deliveries_with_the_fixed_mapping(
    dsn: str, store: Store, db: psycopg.Connection, receiver: Receiver
) -> None:
    receiver.script = _wants_telefone
    admin = MappingsAdmin(store)
    settings = make_settings(**crm_env(receiver))
    broken = {"mode": "only_listed", "fields": [{"to": "nome", "from": "name"}]}
    await admin.save(LEAD, "crm", broken, activate=True, actor="t", note="forgot telefone")
    event_id, _, _ = await ingest(store, LEAD, LEAD_PAYLOAD, "site")
    delivery = crm_delivery(db, event_id)
    async with running_worker(settings, store, dsn):
        await eventually(lambda: status_of(db, delivery) == ("dead", 2, 1))
        fixed = {
            "mode": "only_listed",
            "fields": [
                {"to": "nome", "from": "name"},
                {"to": "telefone", "from": "phone", "format": "phone_national"},
            ],
        }
        await admin.save(LEAD, "crm", fixed, activate=True, actor="t", note="fix")
        # Without remap the replay keeps its pinned (broken) version and dies again.
        assert [r["mapping_version"] for r in await store.reprocess_dead(ids=[delivery])] == [2]
        await asyncio.to_thread(receiver.wait_for, 2)
        await eventually(lambda: status_of(db, delivery) == ("dead", 2, 1))
        rows = await store.reprocess_dead(ids=[delivery], remap=True)
        assert [r["mapping_version"] for r in rows] == [3]
        await eventually(lambda: status_of(db, delivery) == ("delivered", 3, 1))
    statuses = [r.json["data"] for r in receiver.requests]
    assert statuses == [
        {"nome": "Maria Souza"},
        {"nome": "Maria Souza"},
        {"nome": "Maria Souza", "telefone": "(41) 99999-8888"},
    ]
    doc = await admin.preview(LEAD, "crm", event_id=event_id)
    assert (doc["version"], doc["version_source"]) == (3, "pinned")
    assert doc["body"].encode() == receiver.requests[-1].body
    # The broken version's output is still reproducible on request.
    old = await admin.preview(LEAD, "crm", event_id=event_id, version=2)
    assert old["body"].encode() == receiver.requests[0].body


# --------------------------------------------------------------------------- routes


def history(db: psycopg.Connection, event_type: str, destination: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "select op, changed_by, old_row->>'priority', new_row->>'priority', "
        "new_row->>'enabled' from routes_history where event_type = %s and destination = %s "
        "order by id",
        (event_type, destination),
    ).fetchall()


async def test_route_changes_are_validated_recorded_and_used_by_ingress(
    store: Store, db: psycopg.Connection
) -> None:
    admin = MappingsAdmin(store, queues=["critical", "default", "low"])
    assert history(db, LEAD, "marketing") == [("baseline", "migration", None, "200", "true")]
    row = await admin.set_route(LEAD, "marketing", RouteChange(enabled=False), actor="cli:ana")
    assert (row["enabled"], row["priority"], row["created"], row["warnings"]) == (
        False,
        200,
        False,
        [],
    )
    _, destinations, _ = await ingest(store, LEAD, PAYLOADS[LEAD], "site")
    # The route is data the ingress reads on every event: marketing is gone.
    assert destinations == ["crm", "whatsapp"]

    # The same values again are not a change.
    await admin.set_route(LEAD, "marketing", RouteChange(enabled=False), actor="cli:ana")
    await admin.set_route(LEAD, "marketing", RouteChange(priority=10, enabled=True), actor="k:b")
    db_user = db.execute("select session_user").fetchone()[0]  # type: ignore[index]
    db.execute(
        "update routes set priority = 11 where event_type = %s and destination = 'marketing'",
        (LEAD,),
    )
    assert history(db, LEAD, "marketing") == [
        ("baseline", "migration", None, "200", "true"),
        ("update", "cli:ana", "200", "200", "false"),
        ("update", "k:b", "200", "10", "true"),
        ("update", f"db:{db_user}", "10", "11", "true"),
    ]
    event_id, destinations, _ = await ingest(store, LEAD, PAYLOADS[LEAD], "site")
    assert destinations == ["crm", "marketing", "whatsapp"]
    assert db.execute(
        "select priority from deliveries where event_id = %s and destination = 'marketing'",
        (event_id,),
    ).fetchone() == (11,)

    created = await admin.set_route(
        "invoice.created", "financeiro", RouteChange(queue="billing", delay_s=60), actor="t"
    )
    assert (created["created"], created["queue"], created["delay_s"], created["enabled"]) == (
        True,
        "billing",
        60,
        True,
    )
    assert "billing" in created["warnings"][0]  # no worker listens there
    assert history(db, "invoice.created", "financeiro") == [("insert", "t", None, "100", "true")]
    assert len(await admin.route_history("invoice.created", "financeiro")) == 1


@pytest.mark.parametrize(
    ("event_type", "destination", "change", "path"),
    [
        (LEAD, "crm", RouteChange(), "route"),
        (LEAD, "crm", RouteChange(queue="Bad Queue!"), "queue"),
        (LEAD, "crm", RouteChange(priority=-1), "priority"),
        (LEAD, "crm", RouteChange(priority=40000), "priority"),
        (LEAD, "crm", RouteChange(delay_s=-5), "delay_s"),
        (LEAD, "crm", RouteChange(delay_s=10**9), "delay_s"),
        ("lead.nope", "crm", RouteChange(priority=1), "event_type"),
        (LEAD, "crmm", RouteChange(priority=1), "destination"),
    ],
)
async def test_invalid_route_changes_write_nothing(
    store: Store,
    db: psycopg.Connection,
    event_type: str,
    destination: str,
    change: RouteChange,
    path: str,
) -> None:
    before = db.execute("select * from routes order by 1, 2").fetchall()
    with pytest.raises(AdminError) as err:
        await MappingsAdmin(store).set_route(event_type, destination, change, actor="t")
    assert err.value.kind == "invalid"
    assert err.value.details and err.value.details[0]["path"] == path
    assert db.execute("select * from routes order by 1, 2").fetchall() == before
    assert db.execute("select count(*) from routes_history where op <> 'baseline'").fetchone() == (
        0,
    )
