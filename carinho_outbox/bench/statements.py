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

# --- /status under load (bench/status.py) ---------------------------------------------------

# The last hour of a busy hub: events spread evenly over the past `span_s` seconds (the newest
# ones in the current minute), each delivered to every destination half a second later; one
# delivery in 20 needed a second attempt (a failure in the throughput figures).
FILL_RECENT = """
with ev as (
    insert into events (type, source, payload, received_at, occurred_at)
    select %(type)s, %(source)s, jsonb_build_object('client_id', 'r' || g, 'amount_cents', 100),
           now() - make_interval(secs => g::float8 * %(span_s)s / %(events)s),
           now() - make_interval(secs => g::float8 * %(span_s)s / %(events)s)
    from generate_series(1, %(events)s) g
    returning id, type, received_at
)
insert into deliveries (event_id, destination, queue, priority, status, attempts, finished_at,
                        created_at, updated_at, available_at, last_status)
select ev.id, d.destination, 'default', 100, 'delivered',
       case when random() < 0.05 then 2 else 1 end,
       least(now(), ev.received_at + interval '0.5 seconds'), ev.received_at, ev.received_at,
       ev.received_at, 200
from ev
cross join unnest(%(destinations)s::text[]) as d(destination)
"""

FILL_RECENT_ATTEMPTS = """
insert into webhook_deliveries (delivery_id, attempt, destination, outcome, response_status,
                                duration_ms, error, request_summary, worker, created_at)
select d.id, a.n, d.destination, case when a.n = d.attempts then 'delivered' else 'retry' end,
       case when a.n = d.attempts then 200 else 503 end, 3.0,
       case when a.n = d.attempts then null else 'HTTP 503' end,
       'POST http://127.0.0.1/hook 600B', 'recent',
       d.finished_at - make_interval(secs => d.attempts - a.n)
from deliveries d
cross join lateral generate_series(1, d.attempts) as a(n)
where d.status = 'delivered' and d.finished_at >= now() - interval '1 hour'
"""

# Dead letters over the past week (a few in the last hour), three attempts each, with errors
# drawn from a dozen kinds, some of which carry a per-request detail (many distinct texts).
FILL_DEAD = """
with ev as (
    insert into events (type, source, payload, received_at, occurred_at)
    select (array['payment.received', 'lead.created', 'service.scheduled'])[1 + g %% 3],
           'financeiro', jsonb_build_object('client_id', 'd' || g),
           now() - make_interval(secs => 60 + (g * 29) %% (7 * 86400)),
           now() - make_interval(secs => 60 + (g * 29) %% (7 * 86400))
    from generate_series(1, %(dead)s) g
    returning id, type, received_at
), dl as (
    insert into deliveries (event_id, destination, queue, priority, status, attempts,
                            finished_at, dead_at, created_at, updated_at, available_at,
                            last_status, last_error)
    select ev.id,
           (array['crm', 'operacao', 'cuidadores', 'financeiro'])[1 + (hashtext(ev.id::text) & 3)],
           'default', 100, 'dead', 3, ev.received_at + interval '30 seconds',
           ev.received_at + interval '30 seconds', ev.received_at, ev.received_at,
           ev.received_at, 400,
           case (hashtext(ev.id::text) >> 4) & 15
               when 0 then 'HTTP 400: invalid field phone'
               when 1 then 'HTTP 400: invalid field email'
               when 2 then 'HTTP 404: not found'
               when 3 then 'HTTP 410: gone'
               when 4 then 'HTTP 422: unprocessable entity (request ' || ev.id || ')'
               when 5 then 'timeout: ReadTimeout after 10.0 s'
               when 6 then 'connect: ConnectError [Errno 111] Connection refused'
               when 7 then 'HTTP 401: unauthorized'
               when 8 then 'mapping: missing field payload.client_id (event ' || ev.id || ')'
               else 'HTTP 400: ' || repeat('x', 300)
           end
    from ev
    returning id, destination, dead_at
)
insert into webhook_deliveries (delivery_id, attempt, destination, outcome, response_status,
                                duration_ms, error, worker, created_at)
select dl.id, a.n, dl.destination, case a.n when 3 then 'dead' else 'retry' end,
       case a.n when 3 then 400 else 503 end, 5.0, 'HTTP 503', 'dead',
       dl.dead_at - make_interval(secs => 3 - a.n)
from dl cross join generate_series(1, 3) as a(n)
"""

# One pending delivery in ten is a retry waiting out its backoff.
MAKE_RETRYING = """
update deliveries
set attempts = 1 + id %% 3, available_at = now() + interval '5 minutes', due = false,
    last_error = 'HTTP 503'
where status = 'pending' and id %% 10 = 0
"""

# The statements /status ran before sql/0011 (as of that commit), in its order: the same-run
# baseline of the status scenario. Comments dropped; the SQL is verbatim.
LEGACY_STATUS: dict[str, str] = {
    "ops_status_counts": """
select s.status, e.type as event_type, s.destination, count(*) as count
from (
    select 'pending' as status, event_id, destination from deliveries
     where status = 'pending' and attempts = 0
    union all
    select 'retrying', event_id, destination from deliveries
     where status = 'pending' and attempts > 0
    union all
    select 'running', event_id, destination from deliveries where status = 'running'
    union all
    select 'dead', event_id, destination from deliveries where status = 'dead'
) s
join events e on e.id = s.event_id
group by 1, 2, 3
order by 1, 2, 3
""",
    "ops_delivered_by_destination": """
select dest.destination,
       (select count(*) from deliveries d
         where d.status = 'delivered' and d.destination = dest.destination
           and d.finished_at >= now() - interval '1 hour') as count
from (select distinct destination from routes) dest
order by 1
""",
    "ops_throughput": """
select r.*, dl.*, f.*
from (
    select count(*) filter (where received_at >= now() - interval '1 minute') as received_1m,
           count(*) filter (where received_at >= now() - interval '5 minutes') as received_5m,
           count(*) filter (where received_at >= now() - interval '15 minutes') as received_15m,
           count(*) as received_60m
    from events where received_at >= now() - interval '60 minutes'
) r, (
    select count(*) filter (where finished_at >= now() - interval '1 minute') as delivered_1m,
           count(*) filter (where finished_at >= now() - interval '5 minutes') as delivered_5m,
           count(*) filter (where finished_at >= now() - interval '15 minutes') as delivered_15m,
           count(*) as delivered_60m
    from deliveries where status = 'delivered' and finished_at >= now() - interval '60 minutes'
) dl, (
    select count(*) filter (where created_at >= now() - interval '1 minute') as failed_1m,
           count(*) filter (where created_at >= now() - interval '5 minutes') as failed_5m,
           count(*) filter (where created_at >= now() - interval '15 minutes') as failed_15m,
           count(*) as failed_60m
    from webhook_deliveries
    where outcome in ('retry', 'dead') and created_at >= now() - interval '60 minutes'
) f
""",
    "ops_retry_figures": """
select destination, attempts, count(*) as count
from deliveries
where status = 'pending' and attempts > 0
group by destination, attempts
order by destination, attempts
""",
    "ops_dead_range": """
select min(dead_at) as oldest_dead_at, max(dead_at) as newest_dead_at
from deliveries
where status = 'dead';

""",
    "dlq_top_errors": """
select coalesce(left(last_error, 200), '(no error text)') as error, count(*) as count
from deliveries
where status = 'dead'
  and dead_at >= %(since)s::timestamptz and dead_at < %(until)s::timestamptz
group by 1
order by 2 desc, 1
limit %(limit)s
""",
    "ops_lag": """
select count(*) as samples,
       percentile_cont(0.5) within group (order by lag_s) as p50_s,
       percentile_cont(0.95) within group (order by lag_s) as p95_s
from (
    select extract(epoch from finished_at - created_at)::float8 as lag_s
    from deliveries
    where status = 'delivered' and finished_at >= now() - make_interval(secs => %(window_s)s)
    order by finished_at desc
    limit %(sample)s
) s
""",
    "ops_destinations": """
with dest as (
    select unnest(%(destinations)s::text[]) as destination
    union
    select destination from routes
)
select dest.destination,
       (select count(*) from deliveries d
         where d.status = 'pending' and d.destination = dest.destination) as pending,
       (select d.available_at from deliveries d
         where d.status = 'pending' and d.destination = dest.destination
           and d.available_at <= now()
         order by d.available_at limit 1) as oldest_due,
       (select d.finished_at from deliveries d
         where d.status = 'delivered' and d.destination = dest.destination
         order by d.finished_at desc limit 1) as last_success,
       (select count(*) from deliveries d
         where d.status = 'dead' and d.destination = dest.destination) as dead
from dest
order by dest.destination
""",
    "list_workers": """
select id, host, pid, queues, concurrency, started_at, last_seen_at, in_flight, processed,
       stopping, last_seen_at >= now() - make_interval(secs => %(alive_within_s)s) as alive
from workers
order by started_at
""",
    "ops_queue_depth": """
select queue, count(*) as pending, count(*) filter (where available_at <= now()) as due
from deliveries
where status = 'pending'
group by queue
order by queue
""",
    "ops_circuits": """
select destination, state from destination_state
""",
}
