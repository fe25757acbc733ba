"""What every fault test needs: the real web process, a bounded stream of POST /events, the
reconciliation of what was accepted against what the destinations received, the leak scan of
the captured logs, and the figures written to test-artifacts/faults.jsonl."""

from __future__ import annotations

import collections
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.support.procs import ROOT, Proc, proc_env, start_worker, wait_until
from tests.support.receiver import Receiver
from tests.support.samples import EXPECTED_DESTINATIONS

ARTIFACTS = ROOT / "test-artifacts" / "faults.jsonl"
# Settled = nothing left to do for that delivery.
FINAL = ("delivered", "dead")
# The destinations the load reaches (client.registered); each test points them somewhere.
LOAD_DESTINATIONS = ("crm", "financeiro", "marketing")
DEST_SECRET = "whsec_ZmF1bHRzLWRlc3Qtc2VjcmV0"
DEST_TOKEN = "dest-token-faults-9d1c3b7e"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dest_env(urls: dict[str, str], **extra: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, url in urls.items():
        env[f"DEST_{name.upper()}_URL"] = url
        env[f"DEST_{name.upper()}_SECRET"] = DEST_SECRET
        env[f"DEST_{name.upper()}_TOKEN"] = DEST_TOKEN
    env.update(extra)
    return env


def receiver_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return dest_env({n: receiver.url(f"/{n}") for n in LOAD_DESTINATIONS}, **extra)


# --- processes ----------------------------------------------------------------------------------


class Web:
    """`python -m carinho_outbox.web.serve` on a free loopback port."""

    def __init__(self, dsn: str, log: Path, **env: str) -> None:
        self.log = log
        self.port = free_port()
        self.proc = Proc(
            "carinho_outbox.web.serve", proc_env(dsn, PORT=str(self.port), **env), log=log
        )

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self, timeout_s: float = 30.0) -> Web:
        def ready() -> bool:
            if self.proc.popen.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise AssertionError(f"web exited with {self.proc.popen.returncode}: {tail}")
            try:
                return httpx.get(self.url("/health"), timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout_s=timeout_s, interval_s=0.1)
        return self


class Stack:
    """Every process a test starts, with its log file; all stopped at teardown."""

    def __init__(self, dsn: str, logs: Path, base_env: dict[str, str]) -> None:
        self.dsn = dsn
        self.logs = logs
        self.base_env = base_env
        self.procs: list[Proc] = []
        self._n = 0

    def _log(self, kind: str) -> Path:
        self._n += 1
        return self.logs / f"{self._n:02d}-{kind}.log"

    def web(self, dsn: str | None = None, **env: str) -> Web:
        web = Web(dsn or self.dsn, self._log("web"), **{**self.base_env, **env})
        self.procs.append(web.proc)
        return web.wait_ready()

    def worker(self, dsn: str | None = None, **env: str) -> Proc:
        proc = start_worker(dsn or self.dsn, self._log("worker"), **{**self.base_env, **env})
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(timeout=10)

    def log_text(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log"))
        )

    def log_lines(self, action: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for line in self.log_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if action is None or doc.get("action") == action:
                out.append(doc)
        return out


def wait_for_worker(db: psycopg.Connection, proc: Proc, timeout_s: float = 30.0) -> str:
    """The worker id of `proc` once it has registered (it is then claiming)."""

    def registered() -> str | None:
        if proc.popen.poll() is not None:
            raise AssertionError(f"worker exited with {proc.popen.returncode}")
        row = db.execute(
            "select id from workers where pid = %s and not stopping", (proc.pid,)
        ).fetchone()
        return row[0] if row else None

    return wait_until(registered, timeout_s=timeout_s, interval_s=0.05)


# --- load ---------------------------------------------------------------------------------------


def client_registered(prefix: str, i: int) -> dict[str, Any]:
    """A client.registered event carrying personal data that must never reach a log."""
    return {
        "type": "client.registered",
        "idempotency_key": f"{prefix}-{i}",
        "payload": {
            "client_id": f"{prefix}-c{i}",
            "name": "Cliente Falha",
            "email": email_for(prefix, i),
            "phone": phone_for(i),
        },
    }


def email_for(prefix: str, i: int) -> str:
    return f"cliente{i}.{prefix}@example.com"


def phone_for(i: int) -> str:
    return f"+55419{9_000_0000 + i:08d}"


@dataclass
class Try:
    index: int
    started: float  # monotonic
    latency_s: float
    status: int | None
    error: str | None = None


@dataclass
class Load:
    """A bounded stream of POST /events: `n` events paced at `rate_per_s` by `threads` clients.

    An event answered 503 or not answered at all is sent again with the same idempotency key
    (what a well-behaved client does) until `retry_for_s` has passed since its first try; every
    try is recorded."""

    url: str
    api_key: str
    n: int
    prefix: str
    rate_per_s: float = 50.0
    threads: int = 4
    retry_for_s: float = 0.0
    timeout_s: float = 15.0
    body: Callable[[str, int], dict[str, Any]] = client_registered
    tries: list[Try] = field(default_factory=list)
    event_ids: dict[int, str] = field(default_factory=dict)
    started_at: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._workers: list[threading.Thread] = []

    def start(self) -> Load:
        self.started_at = time.monotonic()
        self._workers = [
            threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)
        ]
        for t in self._workers:
            t.start()
        return self

    def wait(self, timeout_s: float = 120.0) -> Load:
        deadline = time.monotonic() + timeout_s
        for t in self._workers:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._workers), "load did not finish in time"
        return self

    @property
    def done(self) -> int:
        with self._lock:
            return len({t.index for t in self.tries})

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.n:
                return None
            i, self._next = self._next, self._next + 1
            return i

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        with httpx.Client(timeout=self.timeout_s, headers=headers) as http:
            while (i := self._take()) is not None:
                slot = self.started_at + i / self.rate_per_s
                time.sleep(max(0.0, slot - time.monotonic()))
                self._send(http, i)

    def _send(self, http: httpx.Client, i: int) -> None:
        body = self.body(self.prefix, i)
        first = time.monotonic()
        for _ in range(1000):  # bounded by retry_for_s, this is only a backstop
            started = time.monotonic()
            status: int | None = None
            error: str | None = None
            try:
                r = http.post(self.url, json=body)
                status = r.status_code
                if status in (200, 202):
                    with self._lock:
                        self.event_ids[i] = r.json()["event_id"]
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            with self._lock:
                self.tries.append(Try(i, started, time.monotonic() - started, status, error))
            retryable = status is None or status == 503
            if not retryable or time.monotonic() - first > self.retry_for_s:
                return
            time.sleep(0.2)

    # figures ---------------------------------------------------------------------------------

    def statuses(self) -> dict[str, int]:
        c = collections.Counter(str(t.status or t.error) for t in self.tries)
        return dict(sorted(c.items()))

    def final_status(self) -> dict[int, int | None]:
        last: dict[int, int | None] = {}
        for t in sorted(self.tries, key=lambda t: t.started):
            last[t.index] = t.status
        return last

    def keys(self) -> list[str]:
        return [self.body(self.prefix, i)["idempotency_key"] for i in range(self.n)]


# --- reconciliation -----------------------------------------------------------------------------


def settled(db: psycopg.Connection, event_ids: Iterable[str]) -> bool:
    row = db.execute(
        "select count(*) filter (where status not in ('delivered', 'dead')) "
        "from deliveries where event_id = any(%s::uuid[])",
        (list(event_ids),),
    ).fetchone()
    return row is not None and row[0] == 0


def persisted_events(db: psycopg.Connection, load: Load) -> dict[str, tuple[str, str]]:
    """idempotency key → (event id, type) of every event of this load in the database."""
    rows = db.execute(
        "select idempotency_key, id::text, type from events "
        "where source = 'crm' and idempotency_key = any(%s)",
        (load.keys(),),
    ).fetchall()
    return {k: (i, t) for k, i, t in rows}


def wait_settled(db: psycopg.Connection, load: Load, timeout_s: float) -> float:
    """Seconds until every persisted event of the load has all its deliveries settled."""
    start = time.monotonic()
    try:
        wait_until(
            lambda: settled(db, [i for i, _ in persisted_events(db, load).values()]),
            timeout_s=timeout_s,
            interval_s=0.2,
        )
    except AssertionError:
        stuck = db.execute(
            "select status, due, locked_by, attempts, "
            "round(extract(epoch from locked_until - now())::numeric, 1) as lease_left_s, "
            "round(extract(epoch from available_at - now())::numeric, 1) as available_in_s, "
            "count(*) from deliveries where status not in ('delivered', 'dead') "
            "group by 1, 2, 3, 4, 5, 6 order by 7 desc limit 20"
        ).fetchall()
        raise AssertionError(f"not settled after {timeout_s}s; unsettled: {stuck}") from None
    return time.monotonic() - start


def reconcile(
    db: psycopg.Connection,
    load: Load,
    requests: Iterable[Any],
    *,
    destinations: Iterable[str] = LOAD_DESTINATIONS,
) -> dict[str, Any]:
    """Every accepted event is in the database with one delivery per routed destination, each
    delivered (the destination saw it) or dead-lettered with a reason; nothing the load did not
    send is there; every request a destination saw is accounted for by an attempt row, so a
    duplicate exists only where an attempt ended without a recorded success (a crash, a lost
    lease, a timeout, a reset after the request was read). Returns the figures; `duplicated`
    counts the extra 2xx answers a destination gave for one delivery."""
    events = persisted_events(db, load)
    by_id = {eid: (key, etype) for key, (eid, etype) in events.items()}
    acknowledged = {i: eid for i, eid in load.event_ids.items()}
    keys = load.keys()
    for i, eid in acknowledged.items():
        assert keys[i] in events, f"event {i} was acknowledged ({eid}) but is not stored"
        assert events[keys[i]][0] == eid, f"event {i}: acknowledged {eid}, stored another"
    rows = db.execute(
        "select id, event_id::text, destination, status, last_error from deliveries "
        "where event_id = any(%s::uuid[])",
        (list(by_id),),
    ).fetchall()
    per_event: dict[str, set[str]] = collections.defaultdict(set)
    for _id, eid, dest, _status, _err in rows:
        per_event[eid].add(dest)
    wanted = set(destinations)
    for eid, (_key, etype) in by_id.items():
        expected = EXPECTED_DESTINATIONS[etype] & wanted
        assert per_event[eid] == expected, f"event {eid}: deliveries {per_event[eid]}"
    status = collections.Counter(r[3] for r in rows)
    assert set(status) <= set(FINAL), f"unsettled deliveries: {dict(status)}"
    no_reason = [r[0] for r in rows if r[3] == "dead" and not r[4]]
    assert no_reason == [], f"dead letters without a reason: {no_reason}"

    requests = list(requests)
    seen = collections.Counter(r.headers.get("webhook-id") for r in requests)
    # Taken = answered 2xx: the destination did the work. Taken twice is a duplicate; a retry
    # after a 500 or a 429 is not (the destination refused the first one).
    taken = collections.Counter(
        r.headers.get("webhook-id") for r in requests
        if r.answered is not None and 200 <= r.answered < 300
    )
    attempts = {
        d: (n, ok)
        for d, n, ok in db.execute(
            "select delivery_id, count(*), "
            "count(*) filter (where outcome = 'delivered' and not lease_lost) "
            "from webhook_deliveries where delivery_id = any(%s) group by delivery_id",
            ([r[0] for r in rows],),
        ).fetchall()
    }
    duplicated = 0
    duplicated_deliveries = 0
    for did, _eid, _dest, st, _err in rows:
        got = seen.get(f"dlv_{did}", 0)
        took = taken.get(f"dlv_{did}", 0)
        tries, ok = attempts.get(did, (0, 0))
        if st == "delivered":
            assert took >= 1, f"delivery {did} marked delivered but never taken"
            assert ok == 1, f"delivery {did} has {ok} recorded successes"
        assert got <= tries, f"delivery {did}: received {got} times, {tries} attempts recorded"
        if took > 1:
            duplicated += took - 1
            duplicated_deliveries += 1
    return {
        "events_sent": load.n,
        "accepted": len(acknowledged),
        "stored": len(events),
        "stored_unacknowledged": len(events) - len(acknowledged),
        "deliveries": len(rows),
        "delivered": status.get("delivered", 0),
        "dead_lettered": status.get("dead", 0),
        "duplicated": duplicated,
        "duplicated_deliveries": duplicated_deliveries,
        "http": load.statuses(),
    }


def record(test: str, fault: str, figures: dict[str, Any]) -> None:
    """One JSON line per test run, for the README table (docs_drafts/faults.md)."""
    ARTIFACTS.parent.mkdir(exist_ok=True)
    line = {"test": test, "fault": fault, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **figures}
    with ARTIFACTS.open("a") as f:
        f.write(json.dumps(line, sort_keys=False) + "\n")
    print(json.dumps(line))


def secrets_in(text: str, load: Load, *extra: str) -> list[str]:
    """Which of the API key, destination secrets and personal data of the load appear."""
    needles = [load.api_key, DEST_SECRET, DEST_TOKEN, *extra]
    for i in range(load.n):
        phone = phone_for(i)
        needles += [phone, phone[1:], phone[3:], email_for(load.prefix, i)]
    return sorted({n for n in needles if n and n in text})
