"""The benchmark's own SQL, each statement under a name (the product's live in queries.sql).

These are measurement fixtures and ceilings, deliberately bypassing the store: the ceilings are
what bare psycopg can do on the same tables, and the fills put rows in place faster than any
client could. Every value is a bound parameter.
"""

from __future__ import annotations

# A distinct client per row, like real traffic: per-key ordering (by client_id) must not
# collapse the benchmark onto one key.
_ROW_PAYLOAD = """
jsonb_set(jsonb_set(%(payload)s::jsonb,
                    '{client_id}', to_jsonb('cli-' || lpad(g::text, 8, '0'))),
          '{payment_id}', to_jsonb('pay-' || lpad(g::text, 8, '0')))
"""

# Events plus one delivery per routed destination (the ingress's shape: route queue and
# priority, the active mapping version, the ordering key), all due now. Used for backlogs.
FILL_PENDING = f"""
with ev as (
    insert into events (type, source, payload)
    select %(type)s, %(source)s, {_ROW_PAYLOAD}
    from generate_series(%(first)s::bigint, %(first)s::bigint + %(events)s - 1) g
    returning id, type, payload ->> 'client_id' as client_id
)
insert into deliveries (event_id, destination, queue, priority, mapping_version, ordering_key)
select ev.id, r.destination, r.queue, r.priority, m.version, 'client_id:' || ev.client_id
from ev
join routes r on r.event_type = ev.type and r.enabled and r.destination = any(%(destinations)s)
left join event_mappings m
       on m.event_type = r.event_type and m.destination = r.destination and m.is_active
"""

# History: finished deliveries (and their one attempt row) spread over the past weeks. The
# events carry a small payload: nothing on the claim's path reads old payloads, and the time
# budget of `make bench` goes further.
FILL_HISTORY_EVENTS = """
insert into events (type, source, payload, received_at, occurred_at)
select %(type)s, %(source)s, jsonb_build_object('client_id', 'h' || g, 'amount_cents', 100),
       now() - make_interval(secs => 86400 + (g %% 2000000)),
       now() - make_interval(secs => 86400 + (g %% 2000000))
from generate_series(1, %(events)s) g
"""

FILL_HISTORY_DELIVERIES = """
insert into deliveries (event_id, destination, queue, priority, status, attempts, finished_at,
                        created_at, updated_at, available_at, last_status)
select e.id, d.destination, 'default', 100, 'delivered', 1, e.received_at + interval '1 second',
       e.received_at, e.received_at, e.received_at, 200
from events e
cross join unnest(%(destinations)s::text[]) as d(destination)
where e.received_at < now() - interval '1 hour'
"""

FILL_HISTORY_ATTEMPTS = """
insert into webhook_deliveries (delivery_id, attempt, destination, outcome, response_status,
                                duration_ms, request_summary, worker, created_at)
select id, 1, destination, 'delivered', 200, 3.0, 'POST http://127.0.0.1/hook 600B', 'history',
       finished_at
from deliveries
where status = 'delivered' and finished_at < now() - interval '1 hour'
"""

TRUNCATE_OUTBOX = "truncate events, deliveries, webhook_deliveries, workers"

NOTIFY_ALL = "select pg_notify('carinho_outbox', q) from unnest(%(queues)s::text[]) q"

COUNT_DELIVERED_SINCE = """
select count(*) from deliveries where status = 'delivered' and finished_at >= %(since)s
"""

COUNT_PENDING = "select count(*) from deliveries where status = 'pending'"

COUNT_WORKERS = "select count(*) from workers"

COUNT_EVENTS = "select count(*) from events"

LATENCY_SOURCE = """
select d.id, extract(epoch from e.received_at)::float8
from deliveries d join events e on e.id = d.event_id
where d.id = any(%(ids)s)
"""

# --- ceilings -------------------------------------------------------------------------------

INSERT_ONE = """
insert into events (type, source, payload) values (%(type)s, %(source)s, %(payload)s::jsonb)
"""

# The same with the ingress's wake-up: pg_notify in the inserting transaction. NOTIFY takes a
# database-wide lock at commit to order the notification queue, so concurrent notifying
# commits serialise; the gap between this and INSERT_ONE at the same connection count is that
# lock's price. The channel has no listener here, as in a busy system where workers claim
# continuously and notifications mostly wake nobody.
INSERT_ONE_NOTIFY = """
with ins as (
    insert into events (type, source, payload) values (%(type)s, %(source)s, %(payload)s::jsonb)
    returning 1
)
select pg_notify('carinho_bench', 'default') from ins
"""

INSERT_MANY = """
insert into events (type, source, payload)
select %(type)s, %(source)s, p from unnest(%(payloads)s::jsonb[]) as p
"""

# The bare claim: the same shape as the engine's (due rows by priority, SKIP LOCKED, a lease),
# and the bare finish: one UPDATE for the batch. No event join, no attempt rows.
BARE_CLAIM = """
with picked as (
    select id from deliveries
    where status = 'pending' and available_at <= now()
    order by priority, available_at, id
    limit %(limit)s
    for update skip locked
)
update deliveries d
set status = 'running', attempts = d.attempts + 1, locked_by = %(worker)s,
    locked_until = now() + interval '60 seconds'
from picked where d.id = picked.id
returning d.id
"""

# Once deliveries has a `due` column, the claim index is partial on it: the bare claim must
# say `due` too, or it would not use the same index as the engine.
BARE_CLAIM_DUE = BARE_CLAIM.replace(
    "where status = 'pending' and available_at", "where status = 'pending' and due and available_at"
)

HAS_DUE_COLUMN = """
select exists (select 1 from information_schema.columns
               where table_name = 'deliveries' and column_name = 'due')
"""

BARE_FINISH = """
update deliveries
set status = 'delivered', locked_by = null, locked_until = null, finished_at = now()
where id = any(%(ids)s) and status = 'running' and locked_by = %(worker)s
"""

# --- sizes (soak) ---------------------------------------------------------------------------

TABLE_SIZES = """
select c.relname, pg_relation_size(c.oid) as heap, pg_indexes_size(c.oid) as indexes,
       coalesce(s.n_live_tup, 0) as live, coalesce(s.n_dead_tup, 0) as dead
from pg_class c left join pg_stat_user_tables s on s.relid = c.oid
where c.relname = any(%(tables)s) and c.relkind = 'r'
order by c.relname
"""

INDEX_SIZE = "select pg_relation_size(%(name)s::regclass)"
