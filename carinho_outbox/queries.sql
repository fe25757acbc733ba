-- Every runtime SQL statement of carinho_outbox, each under a name, read by store.py alone.
-- Parameters are always bound (%(name)s); nothing here is ever formatted into a string.

-- name: ingest_event
-- One statement is one transaction in autocommit: the event, its deliveries (one per enabled
-- route, each pinned to the mapping version active right now) and the wake-up NOTIFY either all
-- happen or none does. On a repeated idempotency key the event CTE returns nothing, so no
-- delivery is written and the caller looks the first event up.
with ev as (
    insert into events (type, source, payload, idempotency_key, occurred_at, request_id, client)
    values (%(type)s, %(source)s, %(payload)s, %(idempotency_key)s,
            coalesce(%(occurred_at)s, now()), %(request_id)s, %(client)s)
    on conflict (source, idempotency_key) do nothing
    returning id, type
), dl as (
    insert into deliveries (event_id, destination, queue, priority, available_at, mapping_version,
                            ordering_key)
    select ev.id, r.destination, r.queue, r.priority,
           now() + make_interval(secs => r.delay_s + coalesce(%(extra_delay_s)s, 0)),
           m.version, %(ordering_key)s
    from ev
    join routes r on r.event_type = ev.type and r.enabled
    left join event_mappings m
           on m.event_type = r.event_type and m.destination = r.destination and m.is_active
    returning destination, queue
)
select (select id from ev) as event_id,
       coalesce((select array_agg(destination order by destination) from dl), '{}') as destinations,
       (select count(*) from (select pg_notify('carinho_outbox', queue)
                                from (select distinct queue from dl) q) n) as notified;

-- name: listen
-- Ingress sends pg_notify('carinho_outbox', <queue>) in the same transaction as the rows.
listen carinho_outbox;

-- name: find_event_by_idempotency
select e.id as event_id,
       coalesce(array_agg(d.destination order by d.destination)
                filter (where d.destination is not null), '{}') as destinations
from events e
left join deliveries d on d.event_id = e.id
where e.source = %(source)s and e.idempotency_key = %(idempotency_key)s
group by e.id;

-- name: claim_deliveries
-- Claim short: pick due rows by priority with SKIP LOCKED (no waiting on other workers, no
-- advisory locks), take a lease and bump the attempt counter in the same statement, and bring
-- the event along so dispatch needs no further query. The attempt number is the fence every
-- outcome write is guarded by. Rows of destinations not in the list (unconfigured, paused)
-- are never touched, so they keep their attempts.
with picked as (
    select id
    from deliveries
    where status = 'pending'
      and available_at <= now()
      and destination = any(%(destinations)s)
      and queue = any(%(queues)s)
    order by priority, available_at, id
    limit %(limit)s
    for update skip locked
), claimed as (
    update deliveries d
    set status = 'running',
        attempts = d.attempts + 1,
        locked_by = %(worker)s,
        locked_until = now() + make_interval(secs => %(lease_s)s),
        updated_at = now()
    from picked, events e
    where d.id = picked.id and e.id = d.event_id
    returning d.id, d.event_id, d.destination, d.attempts, d.max_attempts, d.mapping_version,
              d.queue, d.priority, d.available_at, e.type, e.source, e.payload, e.occurred_at,
              e.received_at
)
-- UPDATE … RETURNING has no order; hand the batch over in claim order.
select * from claimed order by priority, available_at, id;

-- name: record_outcomes
-- Finish guarded: one statement records a whole batch of outcomes. A row is only updated while
-- it is still running under this worker's lease at the same attempt number, so a late finisher
-- that lost its lease can never overwrite a newer attempt; its attempt row is still written,
-- marked lease_lost, because the request did happen.
with u as (
    select *
    from unnest(%(ids)s::bigint[], %(attempts)s::int[], %(statuses)s::text[],
                %(delays_s)s::float8[], %(errors)s::text[], %(http_statuses)s::int[],
                %(responses)s::text[], %(durations_ms)s::float8[], %(requests)s::text[],
                %(destinations)s::text[], %(external_ids)s::text[])
         as u(id, attempt, status, delay_s, error, http_status, response, duration_ms, request,
              destination, external_id)
), upd as (
    update deliveries d
    set status = u.status,
        available_at = case when u.status = 'pending'
                            then now() + make_interval(secs => u.delay_s)
                            else d.available_at end,
        locked_by = null,
        locked_until = null,
        last_error = u.error,
        last_status = u.http_status,
        last_response = u.response,
        external_id = coalesce(u.external_id, d.external_id),
        finished_at = case when u.status in ('delivered', 'dead') then now() end,
        dead_at = case when u.status = 'dead' then now() end,
        updated_at = now()
    from u
    where d.id = u.id and d.status = 'running' and d.locked_by = %(worker)s
      and d.attempts = u.attempt
    returning d.id
), ins as (
    insert into webhook_deliveries (delivery_id, attempt, destination, outcome, response_status,
                                    duration_ms, error, request_summary, response_body, worker,
                                    lease_lost)
    select u.id, u.attempt, u.destination,
           case u.status when 'pending' then 'retry' else u.status end,
           u.http_status, u.duration_ms, u.error, u.request, u.response, %(worker)s,
           u.id not in (select id from upd)
    from u
)
select id from upd;

-- name: rescue_expired_leases
-- A lease that ran out means its worker died or stalled. The attempt it spent counts (a
-- delivery that kills workers must not loop forever); the row becomes claimable at once.
with expired as (
    select id
    from deliveries
    where status = 'running' and locked_until < now()
    order by locked_until
    limit %(limit)s
    for update skip locked
), upd as (
    update deliveries d
    set status = case when d.attempts >= coalesce(d.max_attempts, %(default_max_attempts)s)
                      then 'dead' else 'pending' end,
        last_error = 'lease expired: worker ' || d.locked_by || ' stopped answering',
        available_at = now(),
        finished_at = case when d.attempts >= coalesce(d.max_attempts, %(default_max_attempts)s)
                           then now() end,
        dead_at = case when d.attempts >= coalesce(d.max_attempts, %(default_max_attempts)s)
                       then now() end,
        locked_by = null,
        locked_until = null,
        updated_at = now()
    from expired
    where d.id = expired.id
    returning d.id, d.attempts, d.destination, d.status, d.last_error
), ins as (
    insert into webhook_deliveries (delivery_id, attempt, destination, outcome, error, worker)
    select id, attempts, destination, 'lease_expired', last_error, %(worker)s from upd
)
select id, status from upd;

-- name: extend_leases
update deliveries
set locked_until = now() + make_interval(secs => %(lease_s)s)
where status = 'running' and locked_by = %(worker)s;

-- name: release_leases
-- Graceful stop: hand back what this worker still holds, and refund the attempt it never made.
with upd as (
    update deliveries
    set status = 'pending', attempts = greatest(attempts - 1, 0), locked_by = null,
        locked_until = null, available_at = now(), updated_at = now()
    where status = 'running' and locked_by = %(worker)s
    returning id, attempts, destination
), ins as (
    insert into webhook_deliveries (delivery_id, attempt, destination, outcome, error, worker)
    select id, attempts + 1, destination, 'released', 'worker stopping', %(worker)s from upd
)
select count(*) as released from upd;

-- name: register_worker
insert into workers (id, host, pid, queues, concurrency)
values (%(id)s, %(host)s, %(pid)s, %(queues)s, %(concurrency)s)
on conflict (id) do update set last_seen_at = now(), stopping = false;

-- name: heartbeat_worker
update workers
set last_seen_at = now(), in_flight = %(in_flight)s, processed = %(processed)s,
    stopping = %(stopping)s
where id = %(id)s;

-- name: deregister_worker
delete from workers where id = %(id)s;

-- name: prune_dead_workers
delete from workers where last_seen_at < now() - make_interval(secs => %(older_than_s)s);

-- name: list_workers
select id, host, pid, queues, concurrency, started_at, last_seen_at, in_flight, processed,
       stopping, last_seen_at >= now() - make_interval(secs => %(alive_within_s)s) as alive
from workers
order by started_at;

-- name: list_event_types
select type, sources from event_types order by type;

-- name: list_routes
select event_type, destination, queue, priority, delay_s, enabled
from routes
order by event_type, destination;

-- name: get_mapping_spec
select spec from event_mappings
where event_type = %(event_type)s and destination = %(destination)s and version = %(version)s;

-- name: auth_key
-- Looked up by hash (unique index); the key itself is never stored.
update api_keys set last_used_at = now()
where key_hash = %(key_hash)s
returning name, sources, is_admin, rate_per_s, burst, expires_at, revoked_at;

-- name: create_key
insert into api_keys (name, key_hash, key_prefix, sources, is_admin, rate_per_s, burst,
                      expires_at)
values (%(name)s, %(key_hash)s, %(key_prefix)s, %(sources)s, %(is_admin)s, %(rate_per_s)s,
        %(burst)s, %(expires_at)s)
returning id;

-- name: list_keys
select name, key_prefix, sources, is_admin, rate_per_s, burst, created_at, expires_at,
       revoked_at, last_used_at
from api_keys
order by name;

-- name: revoke_key
update api_keys set revoked_at = now() where name = %(name)s and revoked_at is null
returning name;

-- name: get_event
select id, type, source, payload, idempotency_key, occurred_at, received_at, request_id, client
from events where id = %(id)s;

-- name: get_event_deliveries
select id, destination, status, queue, priority, available_at, attempts, max_attempts,
       mapping_version, last_error, last_status, external_id, created_at, finished_at, dead_at,
       archived_at, reprocessed
from deliveries where event_id = %(event_id)s
order by destination;

-- name: get_event_attempts
select w.delivery_id, w.attempt, w.destination, w.outcome, w.response_status, w.duration_ms,
       w.error, w.request_summary, w.response_body, w.worker, w.lease_lost, w.created_at
from webhook_deliveries w
join deliveries d on d.id = w.delivery_id
where d.event_id = %(event_id)s
order by w.delivery_id, w.id;

-- name: ping
select 1 as ok;

-- name: retention_delivered
-- Small batches, each its own short transaction, so retention never holds long locks; the
-- attempts go with their delivery (on delete cascade).
delete from deliveries
where id in (
    select id from deliveries
    where status = 'delivered' and finished_at < now() - make_interval(secs => %(older_than_s)s)
    limit %(batch)s
);

-- name: retention_archived
delete from deliveries
where id in (
    select id from deliveries
    where status = 'archived' and archived_at < now() - make_interval(secs => %(older_than_s)s)
    limit %(batch)s
);

-- name: retention_events
-- An event goes only when it is old and none of its deliveries is left (dead letters stay
-- until archived and past their own retention).
delete from events
where id in (
    select e.id from events e
    where e.received_at < now() - make_interval(secs => %(older_than_s)s)
      and not exists (select 1 from deliveries d where d.event_id = e.id)
    limit %(batch)s
);

-- name: dlq_reprocess
-- dead → pending, one statement for one id or a whole filter. Attempts restart from zero (the
-- destination gets its full retry budget again) and the history stays in webhook_deliveries.
-- With remap, the delivery is re-pinned to the mapping version active now, so a broken mapping
-- can be fixed and its dead letters replayed.
with target as (
    select d.id
    from deliveries d
    join events e on e.id = d.event_id
    where d.status = 'dead'
      and (%(ids)s::bigint[] is null or d.id = any(%(ids)s::bigint[]))
      and (%(event_type)s::text is null or e.type = %(event_type)s::text)
      and (%(destination)s::text is null or d.destination = %(destination)s::text)
      and (%(since)s::timestamptz is null or d.dead_at >= %(since)s::timestamptz)
      and (%(until)s::timestamptz is null or d.dead_at < %(until)s::timestamptz)
      and (%(error)s::text is null or d.last_error ilike '%%' || %(error)s::text || '%%')
    order by d.id
    limit %(limit)s
    for update of d skip locked
)
update deliveries d
set status = 'pending',
    attempts = 0,
    available_at = now(),
    finished_at = null,
    dead_at = null,
    reprocessed = d.reprocessed + 1,
    mapping_version = case when %(remap)s then coalesce(
        (select m.version from event_mappings m join events e on e.id = d.event_id
          where m.event_type = e.type and m.destination = d.destination and m.is_active),
        d.mapping_version) else d.mapping_version end,
    updated_at = now()
from target
where d.id = target.id
returning d.id, d.destination, d.queue, d.mapping_version;

-- name: dlq_archive
-- dead → archived: kept for the record, out of the DLQ counts, removed by retention later.
update deliveries
set status = 'archived', archived_at = now(), updated_at = now()
where status = 'dead'
  and (%(ids)s::bigint[] is null or id = any(%(ids)s::bigint[]))
returning id;

-- name: notify_queues
select pg_notify('carinho_outbox', q) from unnest(%(queues)s::text[]) as q;
