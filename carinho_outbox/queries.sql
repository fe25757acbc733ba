-- Every runtime SQL statement of carinho_outbox, each under a name, read by store.py alone.
-- Parameters are always bound (%(name)s); nothing here is ever formatted into a string.

-- name: ingest_event
-- One statement is one transaction in autocommit: the event, its deliveries (one per enabled
-- route, each pinned to the mapping version active right now) and the wake-up NOTIFY either all
-- happen or none does. On a repeated idempotency key the event CTE returns nothing, so no
-- delivery is written and the caller looks the first event up. %(notify)s false leaves the
-- wake-up to the caller's trailing NOTIFY (wakeups.py: only the leading edge of a burst pays
-- the notify lock here); `queues` tells it which queues to wake.
with ev as (
    insert into events (type, source, payload, idempotency_key, occurred_at, request_id, client)
    values (%(type)s, %(source)s, %(payload)s, %(idempotency_key)s,
            coalesce(%(occurred_at)s, now()), %(request_id)s, %(client)s)
    on conflict (source, idempotency_key) do nothing
    returning id, type
), dl as (
    insert into deliveries (event_id, event_type, destination, queue, priority, available_at,
                            mapping_version, ordering_key, due)
    select ev.id, ev.type, r.destination, r.queue, r.priority,
           now() + make_interval(secs => r.delay_s + coalesce(%(extra_delay_s)s, 0)),
           m.version, %(ordering_key)s,
           -- Due now unless delayed or queued behind an unfinished delivery with the same key.
           r.delay_s + coalesce(%(extra_delay_s)s, 0) <= 0
           and (%(ordering_key)s::text is null or not exists (
                select 1 from deliveries p
                where p.destination = r.destination and p.ordering_key = %(ordering_key)s::text
                  and p.status in ('pending', 'running')))
    from ev
    join routes r on r.event_type = ev.type and r.enabled
    left join event_mappings m
           on m.event_type = r.event_type and m.destination = r.destination and m.is_active
    returning destination, queue
)
select (select id from ev) as event_id,
       coalesce((select array_agg(destination order by destination) from dl), '{}') as destinations,
       coalesce((select array_agg(distinct queue) from dl), '{}') as queues,
       (select count(*) from (select pg_notify('carinho_outbox', queue)
                                from (select distinct queue from dl) q
                               where %(notify)s::boolean) n) as notified;

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

-- name: ingest_batch
-- POST /events/batch and grouped single events (coalesce.py): ingest_event for many events in
-- one statement (one transaction). Arrays are parallel, item n (from 1) in request order. A
-- key repeated in the batch is written by its first item (first_n); a key already stored comes
-- back with a null event_id, for the caller to look up. Ordering keys: only the batch's first delivery per (destination, key) can
-- be due. Keep it under 4 KB: psycopg re-parses longer statements on every call.
with item as materialized (
    select n, i.type, i.source, p.payload, i.idempotency_key, i.occurred_at, i.ordering_key,
           i.request_id, i.client,
           gen_random_uuid() as id,  -- drawn here: maps events back to items without a key
           case when i.idempotency_key is null then n
                else min(n) over (partition by i.source, i.idempotency_key) end as first_n
    from unnest(%(types)s::text[], %(sources)s::text[], %(idempotency_keys)s::text[],
                %(occurred_ats)s::timestamptz[], %(ordering_keys)s::text[],
                %(request_ids)s::text[], %(clients)s::text[])
         with ordinality as i(type, source, idempotency_key, occurred_at, ordering_key,
                              request_id, client, n)
    join jsonb_array_elements(%(payloads)s::jsonb) with ordinality as p(payload, n) using (n)
), ev as (
    insert into events (id, type, source, payload, idempotency_key, occurred_at, request_id,
                        client)
    select it.id, it.type, it.source, it.payload, it.idempotency_key,
           coalesce(it.occurred_at, now()), it.request_id, it.client
    from item it
    where it.n = it.first_n
    order by it.source, it.idempotency_key, it.n  -- one global key order: no deadlock
    on conflict (source, idempotency_key) do nothing
    returning id, type
), fan as (
    select ev.id, ev.type, it.n, it.ordering_key, r.destination, r.queue, r.priority, r.delay_s,
           m.version,
           row_number() over (partition by r.destination, it.ordering_key order by it.n) as key_rank
    from ev
    join item it on it.id = ev.id
    join routes r on r.event_type = ev.type and r.enabled
    left join event_mappings m
           on m.event_type = r.event_type and m.destination = r.destination and m.is_active
), dl as (
    insert into deliveries (event_id, event_type, destination, queue, priority, available_at,
                            mapping_version, ordering_key, due)
    select f.id, f.type, f.destination, f.queue, f.priority,
           now() + make_interval(secs => f.delay_s), f.version, f.ordering_key,
           f.delay_s <= 0
           and (f.ordering_key is null or (f.key_rank = 1 and not exists (
                select 1 from deliveries p
                where p.destination = f.destination and p.ordering_key = f.ordering_key
                  and p.status in ('pending', 'running'))))
    from fan f
    order by f.n, f.destination  -- ids in batch order: the claim's per-key check compares them
    returning event_id, destination, queue
), dests as (
    -- What dl wrote per event (its type's enabled routes, same snapshot), without a regroup
    -- of dl that the planner would loop over once per event.
    select r.event_type, array_agg(r.destination order by r.destination) as destinations
    from routes r
    where r.enabled and r.event_type = any(%(types)s::text[])
    group by r.event_type
), queues as (
    select coalesce(array_agg(distinct queue), '{}') as queues from dl
), notified as (
    select count(*) as notified
    from (select pg_notify('carinho_outbox', q)
          from queues, unnest(queues.queues) as q
          where %(notify)s::boolean) n
)
select it.n, it.first_n, ev.id as event_id,
       case when ev.id is null then '{}' else coalesce(d.destinations, '{}') end as destinations,
       queues.queues, notified.notified
from item it
left join ev on ev.id = it.id
left join dests d on d.event_type = it.type
cross join queues
cross join notified
order by it.n;

-- name: find_events_by_idempotency
-- The first events of a batch's duplicate items: one row per (source, key) that exists.
select e.source, e.idempotency_key, e.id as event_id,
       coalesce(array_agg(d.destination order by d.destination)
                filter (where d.destination is not null), '{}') as destinations
from events e
left join deliveries d on d.event_id = e.id
where (e.source, e.idempotency_key) in (
    select s, k from unnest(%(sources)s::text[], %(idempotency_keys)s::text[]) as u(s, k))
group by e.id;

-- name: claim_deliveries
-- Claim short: due rows by priority with SKIP LOCKED (no waiting on other workers, no
-- advisory locks), plus a few rows that waited longer than max_wait_s whatever their priority
-- (no starvation). The same statement takes the lease, bumps the attempt counter (the fence
-- every outcome write is guarded by) and brings the event along, so dispatch needs no further
-- query. Only due rows are in the index, so waiting retries, paused destinations and blocked
-- keys are never scanned. Destinations not in the list (unconfigured, paused, capped) are not
-- touched and keep their attempts. The NOT EXISTS closes the race of two deliveries of one key
-- both committed as due.
with aged as (
    select d.id
    from deliveries d
    where d.status = 'pending' and d.due
      and d.available_at <= now() - make_interval(secs => %(max_wait_s)s)
      and d.destination = any(%(destinations)s)
      and d.queue = any(%(queues)s)
      and (d.ordering_key is null or not exists (
           select 1 from deliveries p
           where p.destination = d.destination and p.ordering_key = d.ordering_key
             and p.id < d.id and p.status in ('pending', 'running')))
    order by d.available_at, d.id
    limit %(aged_limit)s
    for update skip locked
), ranked as (
    select d.id
    from deliveries d
    where d.status = 'pending' and d.due
      and d.available_at <= now()
      and d.destination = any(%(destinations)s)
      and d.queue = any(%(queues)s)
      and (d.ordering_key is null or not exists (
           select 1 from deliveries p
           where p.destination = d.destination and p.ordering_key = d.ordering_key
             and p.id < d.id and p.status in ('pending', 'running')))
    order by d.priority, d.available_at, d.id
    limit %(limit)s
    for update skip locked
), picked as (
    select id from (
        select id, 0 as pass from aged
        union all
        select id, 1 from ranked where id not in (select id from aged)
    ) both_passes
    order by pass
    limit %(limit)s
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
              d.queue, d.priority, d.available_at, d.ordering_key, e.type, e.source, e.payload,
              e.occurred_at, e.received_at
)
-- UPDATE … RETURNING has no order; hand the batch over in claim order (the ordering columns
-- stay here: parsing them per row is worker CPU for nothing).
select id, event_id, destination, attempts, max_attempts, mapping_version, queue, ordering_key,
       type, source, payload, occurred_at, received_at
from claimed order by priority, available_at, id;

-- name: claim_destination
-- The guarded path for one destination (a concurrency cap, a rate limit, or a circuit probe):
-- run inside a transaction that holds the destination_state row lock, so concurrent workers
-- see each other's claims. A probe may take a row that is not due (its circuit deferred it).
with picked as (
    select d.id
    from deliveries d
    where d.status = 'pending' and d.destination = %(destination)s
      and (d.due or %(probe)s)
      and d.available_at <= case when %(probe)s then 'infinity'::timestamptz else now() end
      and d.queue = any(%(queues)s)
      and (d.ordering_key is null or not exists (
           select 1 from deliveries p
           where p.destination = d.destination and p.ordering_key = d.ordering_key
             and p.id < d.id and p.status in ('pending', 'running')))
    order by d.priority, d.available_at, d.id
    limit %(limit)s
    for update skip locked
), claimed as (
    update deliveries d
    set status = 'running',
        due = true,
        attempts = d.attempts + 1,
        locked_by = %(worker)s,
        locked_until = now() + make_interval(secs => %(lease_s)s),
        updated_at = now()
    from picked, events e
    where d.id = picked.id and e.id = d.event_id
    returning d.id, d.event_id, d.destination, d.attempts, d.max_attempts, d.mapping_version,
              d.queue, d.priority, d.available_at, d.ordering_key, e.type, e.source, e.payload,
              e.occurred_at, e.received_at
)
select * from claimed order by priority, available_at, id;

-- name: lock_destination
select destination, state, tokens, extract(epoch from now() - tokens_at) as tokens_age_s
from destination_state
where destination = %(destination)s
for update;

-- name: count_running_destination
-- A separate statement after the row lock: under READ COMMITTED it gets a fresh snapshot that
-- sees the claims other workers committed while we waited (a subquery of the locking
-- statement would not).
select count(*) as running from deliveries
where destination = %(destination)s and status = 'running';

-- name: save_destination_tokens
update destination_state set tokens = %(tokens)s, tokens_at = now()
where destination = %(destination)s;

-- name: ensure_destination_states
insert into destination_state (destination)
select unnest(%(destinations)s::text[])
on conflict (destination) do nothing;

-- name: destination_states
select destination, state, consecutive_failures, paused_until, opened_at, probe_until,
       last_success_at, last_failure_at, last_error,
       coalesce(paused_until <= now(), true) as pause_over
from destination_state
order by destination;

-- name: take_probe
-- One worker wins the half-open probe of a destination whose pause is over.
update destination_state
set state = 'half_open', probe_until = now() + make_interval(secs => %(lease_s)s),
    updated_at = now()
where destination = %(destination)s
  and ((state = 'open' and paused_until <= now())
       or (state = 'half_open' and probe_until < now()))
returning destination;

-- name: record_breakers
-- After a batch: any success closes a destination's circuit; only transient failures (timeouts,
-- connection errors, 5xx, 429…) count towards opening it; a failed probe re-opens it.
with u as (
    select *
    from unnest(%(destinations)s::text[], %(oks)s::int[], %(fails)s::int[], %(errors)s::text[])
         as u(destination, ok, fail, error)
), prev as (
    select s.destination, s.state
    from destination_state s join u using (destination)
    for update of s
), upd as (
    update destination_state s
    set consecutive_failures = case when u.ok > 0 then 0 else s.consecutive_failures + u.fail end,
        last_success_at = case when u.ok > 0 then now() else s.last_success_at end,
        last_failure_at = case when u.fail > 0 then now() else s.last_failure_at end,
        last_error = case when u.fail > 0 then u.error else s.last_error end,
        state = case
            when u.ok > 0 then 'closed'
            when u.fail > 0 and (s.state = 'half_open'
                                 or s.consecutive_failures + u.fail >= %(threshold)s) then 'open'
            else s.state end,
        paused_until = case
            when u.ok > 0 then null
            when u.fail > 0 and (s.state = 'half_open'
                                 or (s.state = 'closed'
                                     and s.consecutive_failures + u.fail >= %(threshold)s))
                then now() + make_interval(secs => %(pause_s)s)
            else s.paused_until end,
        opened_at = case
            when u.ok > 0 then null
            when s.state = 'closed' and u.fail > 0
                 and s.consecutive_failures + u.fail >= %(threshold)s then now()
            else s.opened_at end,
        probe_until = case when u.ok > 0 or u.fail > 0 then null else s.probe_until end,
        updated_at = now()
    from u
    where s.destination = u.destination
    returning s.destination, s.state, s.paused_until
)
select upd.destination, prev.state as before, upd.state as after, upd.paused_until
from upd join prev using (destination)
where prev.state is distinct from upd.state;

-- name: defer_paused
-- Take a paused destination's due rows out of the claim index until its pause is over.
with target as (
    select d.id, s.paused_until
    from deliveries d
    join destination_state s on s.destination = d.destination
    where s.state <> 'closed' and d.status = 'pending' and d.due
      and d.destination = any(%(destinations)s)
    limit %(limit)s
    for update of d skip locked
)
update deliveries d
set due = false, available_at = greatest(d.available_at, coalesce(target.paused_until, now()))
from target
where d.id = target.id;

-- name: promote_due
-- Waiting rows whose time has come, whose key has no unfinished predecessor, and whose
-- destination's circuit is closed become due (claimable).
with target as (
    select d.id
    from deliveries d
    where d.status = 'pending' and not d.due and d.available_at <= now()
      and (d.ordering_key is null or not exists (
           select 1 from deliveries p
           where p.destination = d.destination and p.ordering_key = d.ordering_key
             and p.id < d.id and p.status in ('pending', 'running')))
      and not exists (
           select 1 from destination_state s
           where s.destination = d.destination and s.state <> 'closed')
    order by d.available_at, d.id
    limit %(limit)s
    for update skip locked
)
update deliveries d
set due = true
from target
where d.id = target.id
returning d.queue;

-- name: record_outcomes
-- Finish guarded: one statement records a whole batch of outcomes. A row is only updated while
-- it is still running under this worker's lease at the same attempt number, so a late finisher
-- that lost its lease can never overwrite a newer attempt; its attempt row is still written,
-- marked lease_lost, because the request did happen. The batch comes as one JSON array of
-- positional rows (one C-encoded parameter instead of eleven arrays dumped element by element
-- in Python). `unblocks`: the row finished and a delivery of its ordering key waits behind it,
-- so the worker runs the promoter now instead of after every batch.
with u as (
    select (e ->> 0)::bigint as id, (e ->> 1)::int as attempt, e ->> 2 as status,
           (e ->> 3)::float8 as delay_s, e ->> 4 as error, (e ->> 5)::int as http_status,
           e ->> 6 as response, (e ->> 7)::float8 as duration_ms, e ->> 8 as request,
           e ->> 9 as destination, e ->> 10 as external_id
    from jsonb_array_elements(%(rows)s::jsonb) e
), upd as (
    update deliveries d
    set status = u.status,
        available_at = case when u.status = 'pending'
                            then now() + make_interval(secs => u.delay_s)
                            else d.available_at end,
        -- A retry waits out its backoff off the claim index; the promoter brings it back.
        due = u.status <> 'pending' or u.delay_s <= 0,
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
    returning d.id, d.destination, d.ordering_key, d.status
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
select upd.id,
       upd.ordering_key is not null and upd.status <> 'pending' and exists (
           select 1 from deliveries w
           where w.destination = upd.destination and w.ordering_key = upd.ordering_key
             and w.status = 'pending' and not w.due) as unblocks
from upd;

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
        due = true,
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
-- Only the rows this worker really holds: a claim whose reply was lost left rows under our
-- name that we never received; they must run out and be rescued, not be kept alive.
update deliveries
set locked_until = now() + make_interval(secs => %(lease_s)s)
where status = 'running' and locked_by = %(worker)s and id = any(%(ids)s::bigint[]);

-- name: release_leases
-- Graceful stop: hand back what this worker still holds, and refund the attempt it never made.
with upd as (
    update deliveries
    set status = 'pending', attempts = greatest(attempts - 1, 0), locked_by = null,
        locked_until = null, available_at = now(), due = true, updated_at = now()
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
select type, sources, ordering_paths from event_types order by type;

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
-- Small batches, each its own short transaction, so retention never holds long locks. The
-- attempts go with their delivery in the same statement: webhook_deliveries has no foreign key
-- (sql/0012), so nothing cascades. The row count is the deliveries'.
with doomed as materialized (
    select id from deliveries
    where status = 'delivered' and finished_at < now() - make_interval(secs => %(older_than_s)s)
    limit %(batch)s
), attempts as (
    delete from webhook_deliveries
    where delivery_id = any (array(select id from doomed))
)
delete from deliveries
where id in (select id from doomed);

-- name: retention_archived
with doomed as materialized (
    select id from deliveries
    where status = 'archived' and archived_at < now() - make_interval(secs => %(older_than_s)s)
    limit %(batch)s
), attempts as (
    delete from webhook_deliveries
    where delivery_id = any (array(select id from doomed))
)
delete from deliveries
where id in (select id from doomed);

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
    due = true,
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

-- ============================================================================== mappings
-- Versioned mappings and the editable routing table (issue 4). Versions are immutable (a
-- trigger from 0007 refuses changes to anything but is_active, and deletes); "one active
-- version per pair" is a constraint checked at the end of each statement, so switching the
-- active version is a single UPDATE over the pair's rows.

-- name: mapping_pairs
-- Every pair that has a mapping or a route (a routed pair without a mapping is sent as is).
with m as (
    select event_type, destination,
           max(version) filter (where is_active) as active_version,
           max(version) as latest_version,
           count(*) as versions,
           max(created_at) as last_saved_at
    from event_mappings
    group by event_type, destination
)
select coalesce(m.event_type, r.event_type) as event_type,
       coalesce(m.destination, r.destination) as destination,
       m.active_version, m.latest_version, coalesce(m.versions, 0) as versions,
       m.last_saved_at, r.enabled as route_enabled
from m
full join routes r on r.event_type = m.event_type and r.destination = m.destination
where %(event_type)s::text is null or coalesce(m.event_type, r.event_type) = %(event_type)s::text
order by 1, 2;

-- name: mapping_pair_known
select exists (select 1 from routes
               where event_type = %(event_type)s and destination = %(destination)s)
    or exists (select 1 from event_mappings
               where event_type = %(event_type)s and destination = %(destination)s) as known;

-- name: mapping_versions
select version, is_active, spec, created_at, created_by, note
from event_mappings
where event_type = %(event_type)s and destination = %(destination)s
order by version;

-- name: mapping_version
select version, is_active, spec, created_at, created_by, note
from event_mappings
where event_type = %(event_type)s and destination = %(destination)s and version = %(version)s;

-- name: mapping_activation_log
select version, previous_version, action, activated_by, activated_at
from mapping_activations
where event_type = %(event_type)s and destination = %(destination)s
order by id desc
limit %(limit)s;

-- name: mapping_save
-- Version = max + 1, computed in the statement: two concurrent saves for one pair collide on
-- the primary key and the store retries the loser with a fresh max. With activate, the old
-- active version is switched off in the same statement (the one-active constraint is checked
-- at its end, so the order in which the two rows change does not matter).
with cur as (
    select coalesce(max(version), 0) + 1 as version,
           max(version) filter (where is_active) as active_version
    from event_mappings
    where event_type = %(event_type)s and destination = %(destination)s
), switched_off as (
    update event_mappings m
    set is_active = false
    where %(activate)s and m.is_active
      and m.event_type = %(event_type)s and m.destination = %(destination)s
    returning m.version
), ins as (
    insert into event_mappings (event_type, destination, version, spec, is_active, created_by,
                                note)
    select %(event_type)s, %(destination)s, cur.version, %(spec)s, %(activate)s, %(actor)s,
           %(note)s
    from cur
    returning version, is_active, created_at
), logged as (
    insert into mapping_activations (event_type, destination, version, previous_version, action,
                                     activated_by)
    select %(event_type)s, %(destination)s, ins.version, cur.active_version, 'save', %(actor)s
    from ins, cur
    where %(activate)s
)
select ins.version, ins.is_active, ins.created_at, cur.active_version as previous_version
from ins, cur;

-- name: mapping_activate
-- Activate a version, or roll back (version null: the highest version below the active one),
-- and log it: one statement. Only rows whose flag changes are written.
with active as (
    select max(version) filter (where is_active) as version
    from event_mappings
    where event_type = %(event_type)s and destination = %(destination)s
), target as (
    select m.version
    from event_mappings m, active
    where m.event_type = %(event_type)s and m.destination = %(destination)s
      and m.version = coalesce(
            %(version)s::int,
            (select max(p.version) from event_mappings p
              where p.event_type = %(event_type)s and p.destination = %(destination)s
                and p.version < active.version))
), flipped as (
    update event_mappings m
    set is_active = (m.version = target.version)
    from target
    where m.event_type = %(event_type)s and m.destination = %(destination)s
      and (m.is_active or m.version = target.version)
      and m.is_active is distinct from (m.version = target.version)
    returning m.version
), logged as (
    insert into mapping_activations (event_type, destination, version, previous_version, action,
                                     activated_by)
    select %(event_type)s, %(destination)s, target.version, active.version, %(action)s,
           %(actor)s
    from target, active
    where active.version is distinct from target.version
)
select target.version, active.version as previous_version,
       (select count(*) from flipped) as changed
from target, active;

-- name: mapping_preview_event
-- The stored event and, when it was routed to this destination, the version its delivery is
-- pinned to (what a retry would send).
select e.id, e.type, e.source, e.payload, e.occurred_at, e.received_at,
       d.id as delivery_id, d.mapping_version, d.status as delivery_status
from events e
left join lateral (
    select id, mapping_version, status from deliveries
    where event_id = e.id and destination = %(destination)s
    order by id desc
    limit 1
) d on true
where e.id = %(event_id)s;

-- name: known_destinations
select destination from routes
union
select destination from event_mappings
order by 1;

-- name: route_get
select event_type, destination, queue, priority, delay_s, enabled
from routes
where event_type = %(event_type)s and destination = %(destination)s;

-- name: route_set
-- Upsert one route; a null field keeps its value (a new route takes the column default). The
-- actor is set transaction-local in the same statement, before the row is written (the insert
-- reads from that CTE), so the history trigger of 0007 records who made the change.
with actor as (
    select set_config('carinho.actor', %(actor)s, true) as who
)
insert into routes as r (event_type, destination, queue, priority, delay_s, enabled)
select %(event_type)s, %(destination)s, coalesce(%(queue)s::text, 'default'),
       coalesce(%(priority)s::smallint, 100), coalesce(%(delay_s)s::int, 0),
       coalesce(%(enabled)s::boolean, true)
from actor
on conflict (event_type, destination) do update
set queue = coalesce(%(queue)s::text, r.queue),
    priority = coalesce(%(priority)s::smallint, r.priority),
    delay_s = coalesce(%(delay_s)s::int, r.delay_s),
    enabled = coalesce(%(enabled)s::boolean, r.enabled)
returning r.event_type, r.destination, r.queue, r.priority, r.delay_s, r.enabled,
          (r.xmax = 0) as created;

-- name: route_history
select id, event_type, destination, op, old_row, new_row, changed_by, changed_at
from routes_history
where (%(event_type)s::text is null or event_type = %(event_type)s::text)
  and (%(destination)s::text is null or destination = %(destination)s::text)
order by id desc
limit %(limit)s;

-- ===================================================================================
-- Operating it (issue 6): health, /status, the DLQ API, metrics gauges, alerts, dashboard.
-- Every statement here reads through the partial indexes of sql/0006 (or of 0001): its cost
-- follows the live backlog or a bounded time window, never the number of finished rows.
-- ===================================================================================

-- name: ops_applied_migrations
select version, checksum from schema_migrations order by version;

-- name: ops_destinations
-- Per destination: held/pending count, the oldest due pending row, the last success (one
-- backward probe of deliveries_delivered_dest) and the dead count. The destination list is
-- the routes plus the configured names, so a destination without traffic still shows. The
-- oldest row is the least of one probe of deliveries_pending_dest per priority pending for
-- the destination; `prio` finds those priorities by a skip scan (one probe per priority, a
-- few per destination), so no index on (destination, available_at) is written (sql/0012).
with recursive dest as (
    select unnest(%(destinations)s::text[]) as destination
    union
    select destination from routes
), prio as (
    select dest.destination,
           (select min(d.priority) from deliveries d
             where d.status = 'pending' and d.destination = dest.destination) as priority
    from dest
    union all
    select prio.destination,
           (select min(d.priority) from deliveries d
             where d.status = 'pending' and d.destination = prio.destination
               and d.priority > prio.priority)
    from prio
    where prio.priority is not null
), oldest as (
    select prio.destination, min(o.available_at) as oldest_due
    from prio
    cross join lateral (
        select d.available_at from deliveries d
        where d.status = 'pending' and d.destination = prio.destination
          and d.priority = prio.priority and d.available_at <= now()
        order by d.available_at
        limit 1
    ) o
    group by prio.destination
)
select dest.destination,
       (select count(*) from deliveries d
         where d.status = 'pending' and d.destination = dest.destination) as pending,
       (select oldest.oldest_due from oldest
         where oldest.destination = dest.destination) as oldest_due,
       (select d.finished_at from deliveries d
         where d.status = 'delivered' and d.destination = dest.destination
         order by d.finished_at desc limit 1) as last_success,
       (select count(*) from deliveries d
         where d.status = 'dead' and d.destination = dest.destination) as dead
from dest
order by dest.destination;

-- name: ops_open_counts
-- Every open delivery, one pass per state, grouped finely enough for /status to derive all its
-- backlog figures from it: counts by status / type / destination, queue depth, the retry queue
-- by attempt, held destinations and the oldest due row. The event type is the delivery row's
-- (sql/0011), so no events row is read; dead is an index-only pass of deliveries_dead_type.
-- Delivered rows, the millions, are counted apart (ops_throughput and the rollup).
select case when attempts = 0 then 'pending' else 'retrying' end as status, event_type,
       destination, queue, attempts, count(*) as count,
       count(*) filter (where available_at <= now()) as due,
       min(available_at) filter (where available_at <= now()) as oldest_due
from deliveries
where status = 'pending'
group by event_type, destination, queue, attempts
union all
select 'running', event_type, destination, null, null, count(*), 0, null
from deliveries
where status = 'running'
group by destination, event_type
union all
-- In the index's order: a streaming count, no hash table.
select 'dead', event_type, destination, null, null, count(*), 0, null
from deliveries
where status = 'dead'
group by destination, event_type;

-- name: status_rollup
-- Counts each closed minute of the last hour that has no status_minutes row yet (sql/0011).
-- A minute is closed once it ended %(settle_s)s seconds ago: the rows stamped within it (now()
-- of their one-statement transaction) have committed by then. Each missing minute is a few
-- index-only range counts (one per table, one of deliveries_delivered_dest per routed
-- destination); after the first run only the minute or two closed since the last are
-- missing, and with none missing the statement reads 60 primary-key entries. Two rollups
-- racing for a minute both count it; the primary key keeps the first row.
with missing as (
    select g.minute, g.minute + interval '1 minute' as next
    from generate_series(date_trunc('minute', now()) - interval '60 minutes',
                         date_trunc('minute', now() - make_interval(secs => %(settle_s)s))
                             - interval '1 minute',
                         interval '1 minute') as g(minute)
    where not exists (select 1 from status_minutes s where s.minute = g.minute)
)
insert into status_minutes (minute, received, delivered, failed, delivered_by)
select m.minute,
       (select count(*) from events e
         where e.received_at >= m.minute and e.received_at < m.next),
       (select count(*) from deliveries d
         where d.status = 'delivered' and d.finished_at >= m.minute and d.finished_at < m.next),
       (select count(*) from webhook_deliveries x
         where x.outcome in ('retry', 'dead') and x.created_at >= m.minute
           and x.created_at < m.next),
       (select coalesce(jsonb_object_agg(dest.destination, dest.n) filter (where dest.n > 0),
                        '{}'::jsonb)
          from (select r.destination,
                       (select count(*) from deliveries d
                         where d.status = 'delivered' and d.destination = r.destination
                           and d.finished_at >= m.minute and d.finished_at < m.next) as n
                  from (select distinct destination from routes) r) dest)
from missing m
on conflict (minute) do nothing;

-- name: status_prune
delete from status_minutes where minute < now() - make_interval(secs => %(older_than_s)s);

-- name: ops_delivered_by_destination
-- Delivered in the last hour per routed destination, cut like ops_throughput's 60-minute
-- window: the whole closed minutes from status_minutes.delivered_by, the rest (a part-minute,
-- the minutes not closed yet, a minute not rolled up) one index-only range of
-- deliveries_delivered_dest per destination and part.
with w as (
    select now() - interval '60 minutes' as since,
           date_trunc('minute', now() - interval '60 minutes') + interval '1 minute' as whole,
           date_trunc('minute', now() - make_interval(secs => %(settle_s)s)) as closed
), whole as (
    select g.minute, s.delivered_by
    from w
    cross join generate_series(w.whole, w.closed - interval '1 minute', interval '1 minute')
         as g(minute)
    left join status_minutes s on s.minute = g.minute
), part as (
    select since as lo, least(whole, closed) as hi from w
    union all
    select greatest(closed, since), 'infinity'::timestamptz from w
    union all
    select minute, minute + interval '1 minute' from whole where delivered_by is null
)
select dest.destination,
       (coalesce((select sum((whole.delivered_by ->> dest.destination)::bigint) from whole), 0)
        + (select count(*) from part p
           join deliveries d
             on d.status = 'delivered' and d.destination = dest.destination
            and d.finished_at >= p.lo and d.finished_at < p.hi
           where p.lo < p.hi))::bigint as count
from (select distinct destination from routes) dest
order by 1;

-- name: ops_throughput
-- Received / delivered / failed in the last 1, 5, 15 and 60 minutes (windows ending now). A
-- window is cut in parts: its whole closed minutes come from status_minutes (one row each);
-- the part-minute before them, the minutes not closed yet and any minute not rolled up are
-- time ranges counted from the indexes. So the index ranges read stay a couple of minutes
-- long however many rows the hour holds. Ranges shared by windows are counted once.
with t as (
    select now() as at,
           date_trunc('minute', now() - make_interval(secs => %(settle_s)s)) as closed
), w as (
    select w.n, t.at - make_interval(mins => w.n) as since, t.closed,
           date_trunc('minute', t.at - make_interval(mins => w.n)) + interval '1 minute' as whole
    from t cross join unnest('{1,5,15,60}'::int[]) as w(n)
), whole as (
    select w.n, g.minute, s.minute is not null as rolled, s.received, s.delivered, s.failed
    from w
    cross join generate_series(w.whole, w.closed - interval '1 minute', interval '1 minute')
         as g(minute)
    left join status_minutes s on s.minute = g.minute
), part as (
    select n, since as lo, least(whole, closed) as hi from w
    union all
    select n, greatest(closed, since), 'infinity'::timestamptz from w
    union all
    select n, minute, minute + interval '1 minute' from whole where not rolled
), counted as materialized (
    select r.lo, r.hi,
           (select count(*) from events e
             where e.received_at >= r.lo and e.received_at < r.hi) as received,
           (select count(*) from deliveries d
             where d.status = 'delivered' and d.finished_at >= r.lo and d.finished_at < r.hi)
               as delivered,
           (select count(*) from webhook_deliveries x
             where x.outcome in ('retry', 'dead') and x.created_at >= r.lo
               and x.created_at < r.hi) as failed
    from (select distinct lo, hi from part where lo < hi) r
)
select n as minutes, sum(received)::bigint as received, sum(delivered)::bigint as delivered,
       sum(failed)::bigint as failed
from (
    select n, received, delivered, failed from whole where rolled
    union all
    select p.n, c.received, c.delivered, c.failed
    from part p join counted c on c.lo = p.lo and c.hi = p.hi
) x
group by n
order by n;

-- name: ops_lag
-- Received → delivered over the last 15 minutes, from the most recent deliveries only (a
-- bounded sample keeps this cheap at any rate). created_at is the event's received_at: both
-- come from now() of the one ingest statement.
select count(*) as samples,
       percentile_cont(0.5) within group (order by lag_s) as p50_s,
       percentile_cont(0.95) within group (order by lag_s) as p95_s
from (
    select extract(epoch from finished_at - created_at)::float8 as lag_s
    from deliveries
    where status = 'delivered' and finished_at >= now() - make_interval(secs => %(window_s)s)
    order by finished_at desc
    limit %(sample)s
) s;

-- name: ops_state_gauges
-- The DB gauges of /metrics, one partial index per arm.
select 'pending' as state, destination, count(*) as count
  from deliveries where status = 'pending' group by destination
union all
select 'retrying', destination, count(*)
  from deliveries where status = 'pending' and attempts > 0 group by destination
union all
select 'running', destination, count(*)
  from deliveries where status = 'running' group by destination
union all
select 'dead', destination, count(*)
  from deliveries where status = 'dead' group by destination;

-- name: ops_series
-- Per-minute received / delivered / failed over the last hour for the dashboard charts: a
-- rolled-up minute from status_minutes, any other (the open minute, one not rolled up yet)
-- counted from the indexes (coalesce runs the count only when the row is missing).
select m.minute,
       coalesce(s.received, (select count(*) from events e
                              where e.received_at >= m.minute
                                and e.received_at < m.minute + interval '1 minute')) as received,
       coalesce(s.delivered, (select count(*) from deliveries d
                               where d.status = 'delivered' and d.finished_at >= m.minute
                                 and d.finished_at < m.minute + interval '1 minute'))
         as delivered,
       coalesce(s.failed, (select count(*) from webhook_deliveries x
                            where x.outcome in ('retry', 'dead') and x.created_at >= m.minute
                              and x.created_at < m.minute + interval '1 minute')) as failed
from generate_series(date_trunc('minute', now()) - interval '59 minutes',
                     date_trunc('minute', now()), interval '1 minute') as m(minute)
left join status_minutes s on s.minute = m.minute
order by m.minute;

-- name: ops_retry_list
select id, event_id, event_type, destination, queue, attempts, max_attempts, available_at,
       last_error, last_status
from retry_queue
order by available_at, id
limit %(limit)s;

-- name: dlq_list
-- Newest first, keyset-paginated on (dead_at, id), the key of deliveries_dead. The error
-- filter is a LIKE pattern the caller has already escaped, so `%%` and `_` typed by an
-- operator match themselves (same filter as dlq_reprocess).
select d.id, d.event_id, e.type as event_type, e.source, d.destination, d.attempts,
       d.last_error, d.last_status, d.dead_at, d.reprocessed, d.mapping_version, e.received_at
from deliveries d
join events e on e.id = d.event_id
where d.status = 'dead'
  and (%(event_type)s::text is null or e.type = %(event_type)s::text)
  and (%(destination)s::text is null or d.destination = %(destination)s::text)
  and (%(since)s::timestamptz is null or d.dead_at >= %(since)s::timestamptz)
  and (%(until)s::timestamptz is null or d.dead_at < %(until)s::timestamptz)
  and (%(error)s::text is null or d.last_error ilike '%%' || %(error)s::text || '%%')
  and (%(after_dead_at)s::timestamptz is null
       or (d.dead_at, d.id) < (%(after_dead_at)s::timestamptz, %(after_id)s::bigint))
order by d.dead_at desc, d.id desc
limit %(limit)s;

-- name: dlq_get
select id, event_id, event_type, source, destination, status, attempts, last_error,
       last_status, last_response, dead_at, archived_at, reprocessed, mapping_version,
       received_at
from dead_letter
where id = %(id)s;

-- name: dlq_attempts
select attempt, destination, outcome, response_status, duration_ms, error, request_summary,
       response_body, worker, lease_lost, created_at
from webhook_deliveries
where delivery_id = %(id)s
order by id;

-- name: dlq_stats
-- The event type is on the delivery row (sql/0011): an index-only pass over
-- deliveries_dead_type, no events row read.
select event_type, destination, count(*) as count,
       min(dead_at) as oldest_dead_at, max(dead_at) as newest_dead_at
from deliveries
where status = 'dead'
group by 1, 2
order by 1, 2;

-- name: dlq_top_errors
-- Dead letters in a window with their most common errors (the alert, /dlq/stats, /status).
-- Grouped by the stored text first and cut to 200 characters per distinct error after: a
-- dead letter's error is hashed as it is, not copied and cut row by row (a third less time
-- over a DLQ of 20k).
select coalesce(left(e.last_error, 200), '(no error text)') as error, sum(e.n)::bigint as count
from (
    select last_error, count(*) as n
    from deliveries
    where status = 'dead'
      and dead_at >= %(since)s::timestamptz and dead_at < %(until)s::timestamptz
    group by last_error
) e
group by 1
order by 2 desc, 1
limit %(limit)s;

-- name: alert_dead_count
select count(*) as count
from deliveries
where status = 'dead'
  and dead_at >= %(since)s::timestamptz and dead_at < %(until)s::timestamptz;

-- name: alert_oldest_pending
-- Oldest due pending row among the given (configured) destinations: per destination, one
-- probe of deliveries_pending_dest per priority it has pending (the skip scan of
-- ops_destinations).
with recursive prio as (
    select dest.name as destination,
           (select min(d.priority) from deliveries d
             where d.status = 'pending' and d.destination = dest.name) as priority
    from unnest(%(destinations)s::text[]) as dest(name)
    union all
    select prio.destination,
           (select min(d.priority) from deliveries d
             where d.status = 'pending' and d.destination = prio.destination
               and d.priority > prio.priority)
    from prio
    where prio.priority is not null
)
select min(p.available_at) as oldest_due
from prio
cross join lateral (
    select d.available_at from deliveries d
    where d.status = 'pending' and d.destination = prio.destination
      and d.priority = prio.priority and d.available_at <= now()
    order by d.available_at
    limit 1
) p;

-- name: alert_live_queues
select distinct unnest(queues) as queue
from workers
where last_seen_at >= now() - make_interval(secs => %(alive_within_s)s) and not stopping;

-- name: alert_states
select key, firing, since, last_sent_at, details from alert_state;

-- name: alert_state_save
insert into alert_state (key, firing, since, last_sent_at, details, updated_at)
values (%(key)s, %(firing)s, %(since)s, %(last_sent_at)s, %(details)s, now())
on conflict (key) do update
set firing = excluded.firing, since = excluded.since, last_sent_at = excluded.last_sent_at,
    details = excluded.details, updated_at = now();

-- name: alert_enqueue
-- An alert.raised event with deliveries only to the alert sinks that are configured (an
-- unconfigured sink would otherwise hold rows forever). The idempotency key makes a retried
-- alerts run for the same slot send nothing twice.
with ev as (
    insert into events (type, source, payload, idempotency_key, client)
    values ('alert.raised', 'hub', %(payload)s, %(idempotency_key)s, 'carinho-alerts')
    on conflict (source, idempotency_key) do nothing
    returning id, type
), dl as (
    insert into deliveries (event_id, destination, queue, priority)
    select ev.id, r.destination, r.queue, r.priority
    from ev
    join routes r on r.event_type = ev.type and r.enabled
    where r.destination = any(%(destinations)s::text[])
    returning destination, queue
)
select (select id from ev) as event_id,
       coalesce((select array_agg(destination order by destination) from dl), '{}') as destinations,
       (select count(*) from (select pg_notify('carinho_outbox', queue)
                                from (select distinct queue from dl) q) n) as notified;

-- name: lookup_events_by_phone
select id, type, source, received_at from events
where payload ? 'phone' and payload ->> 'phone' = %(phone)s
order by received_at desc
limit %(limit)s;

-- name: lookup_events_by_email
select id, type, source, received_at from events
where payload ? 'email' and lower(payload ->> 'email') = lower(%(email)s)
order by received_at desc
limit %(limit)s;

-- =====================================================================================
-- Ingress (issue 3): leads de-duplication, WhatsApp channel statuses, rate limits.
-- =====================================================================================

-- name: lock_lead_keys
-- Transaction-scoped advisory locks on the contact (phone, e-mail, raw WhatsApp ids) and the
-- idempotency key, taken in one fixed order so two writers cannot deadlock. Writers that could
-- touch the same lead always share a key and take turns; the two-int form keeps this lock
-- space (class 0x4c454144, "LEAD") apart from the single-bigint migration lock.
select count(*) as locked
from (
    select pg_advisory_xact_lock(1279607108, h)
    from (select distinct hashtext(k) as h from unnest(%(keys)s::text[]) as k order by 1) s
) l;

-- name: lead_event_by_idempotency
select e.id as event_id, e.type, e.payload ->> 'lead_id' as lead_id,
       coalesce(array_agg(d.destination order by d.destination)
                filter (where d.destination is not null), '{}') as destinations
from events e
left join deliveries d on d.event_id = e.id
where e.source = %(source)s and e.idempotency_key = %(idempotency_key)s
group by e.id;

-- name: match_leads
-- Every lead the submission could be: a BitmapOr over the four partial indexes. FOR UPDATE,
-- because a writer that matched the same row through a different key (phone vs e-mail) holds
-- no common advisory lock and must wait here, then plan from the row as the other one left it.
select id, lead_id, name, phone, phone_raw, whatsapp_lid, email, consent, source,
       first_touch, last_touch, touches
from leads
where phone = %(phone)s
   or email = %(email)s
   or phone_raw = any(%(raw_ids)s::text[])
   or whatsapp_lid = any(%(raw_ids)s::text[])
order by id
limit 20
for update;

-- name: insert_lead
insert into leads (lead_id, name, phone, phone_raw, whatsapp_lid, email, consent, source,
                   first_touch, last_touch, touches)
values (%(lead_id)s, %(name)s, %(phone)s, %(phone_raw)s, %(whatsapp_lid)s, %(email)s,
        %(consent)s, %(source)s, %(first_touch)s, %(last_touch)s, %(touches)s)
returning id;

-- name: update_lead
-- first_touch and source are never rewritten: they are the first-touch attribution.
update leads
set name = %(name)s, phone = %(phone)s, phone_raw = %(phone_raw)s,
    whatsapp_lid = %(whatsapp_lid)s, email = %(email)s, consent = %(consent)s,
    last_touch = %(last_touch)s, touches = %(touches)s, updated_at = now()
where id = %(id)s
returning id;

-- name: channel_status_update
-- One Z-API status or delivery callback: move the WhatsApp status of the deliveries that sent
-- these message ids forward (never back: see channel_status_rank), and park the ids no
-- delivery carries yet (the worker may not have flushed the send's outcome). The outbox status
-- is not touched: a delivery Z-API accepted stays 'delivered' even when WhatsApp later fails.
with upd as (
    update deliveries d
    set channel_status = %(status)s,
        channel_status_at = %(status_at)s,
        channel_error = coalesce(%(error)s, d.channel_error)
    where d.external_id = any(%(ids)s::text[])
      and (d.channel_status is null
           or channel_status_rank(%(status)s) > channel_status_rank(d.channel_status))
    returning d.external_id
), parked as (
    insert into channel_status_inbox (external_id, status, status_at, error)
    select i, %(status)s, %(status_at)s, %(error)s
    from unnest(%(ids)s::text[]) as i
    where not exists (select 1 from deliveries d where d.external_id = i)
    on conflict (external_id) do update
    set status = excluded.status, status_at = excluded.status_at,
        error = coalesce(excluded.error, channel_status_inbox.error)
    where channel_status_rank(excluded.status) > channel_status_rank(channel_status_inbox.status)
    returning external_id
)
select (select count(*) from upd) as updated, (select count(*) from parked) as parked;

-- name: reconcile_channel_statuses
-- Fold parked statuses into deliveries whose external_id has appeared since, and drop parked
-- rows that matched or are older than keep_s (statuses of messages the hub never sent).
with batch as (
    select external_id, status, status_at, error, received_at
    from channel_status_inbox
    order by received_at
    limit %(batch)s
    for update skip locked
), applied as (
    update deliveries d
    set channel_status = b.status, channel_status_at = b.status_at,
        channel_error = coalesce(b.error, d.channel_error)
    from batch b
    where d.external_id = b.external_id
      and (d.channel_status is null
           or channel_status_rank(b.status) > channel_status_rank(d.channel_status))
    returning b.external_id
), gone as (
    delete from channel_status_inbox i
    using batch b
    where i.external_id = b.external_id
      and (exists (select 1 from deliveries d where d.external_id = b.external_id)
           or b.received_at < now() - make_interval(secs => %(keep_s)s))
    returning i.external_id
)
select (select count(*) from applied) as applied, (select count(*) from gone) as removed;

-- name: take_token
-- The rate limiter: one statement per request. A token bucket refilled from the time elapsed
-- since the last write (token_level: tokens + rate × seconds, capped at burst); a request takes
-- `cost` tokens (1 for a request, one per event for a batch) when the bucket holds `need`
-- (the caller's min(cost, burst), so a batch larger than the burst can pass from a full bucket;
-- it leaves the bucket in debt, tokens below 0, which later requests wait out: the long-run
-- rate stays exact). cost 0, need 1 only checks that a token is there. A refused request
-- leaves tokens and updated_at alone (it took nothing), so the refill stays exact. `level` is
-- what is left after this request. Concurrent requests for one bucket queue on its row lock
-- for the few microseconds of this update.
insert into rate_limits as r (bucket, tokens, updated_at, full_at, allowed)
values (%(bucket)s, %(burst)s::float8 - %(cost)s, now(),
        now() + make_interval(secs => %(cost)s / %(rate)s::float8), true)
on conflict (bucket) do update
set allowed = token_level(r.tokens, r.updated_at, now(), %(rate)s, %(burst)s) >= %(need)s,
    tokens = case when token_level(r.tokens, r.updated_at, now(), %(rate)s, %(burst)s) >= %(need)s
                  then token_level(r.tokens, r.updated_at, now(), %(rate)s, %(burst)s) - %(cost)s
                  else r.tokens end,
    updated_at = case when token_level(r.tokens, r.updated_at, now(), %(rate)s, %(burst)s)
                           >= %(need)s
                      then now() else r.updated_at end,
    full_at = case when token_level(r.tokens, r.updated_at, now(), %(rate)s, %(burst)s) >= %(need)s
                   then now() + make_interval(secs => (%(burst)s::float8 + %(cost)s
                        - token_level(r.tokens, r.updated_at, now(), %(rate)s, %(burst)s))
                        / %(rate)s::float8)
                   else r.full_at end
returning allowed, token_level(tokens, updated_at, now(), %(rate)s, %(burst)s) as level;

-- name: peek_token
-- The bucket's level without taking anything (a missing bucket is a full one): POST
-- /events/batch looks before reading a body whose size decides what it will take.
select coalesce((select token_level(tokens, updated_at, now(), %(rate)s, %(burst)s)
                 from rate_limits where bucket = %(bucket)s), %(burst)s::float8) as level;

-- name: prune_rate_limits
-- A bucket that has refilled completely behaves exactly like a missing one.
delete from rate_limits
where bucket in (select bucket from rate_limits where full_at < now() limit %(batch)s);

-- name: ops_circuits
-- The engine's circuit breakers (sql/0008); the caller copes with the table not existing.
select destination, state from destination_state;

-- name: ops_dead_range
-- Oldest and newest dead letter: the two ends of deliveries_dead.
select min(dead_at) as oldest_dead_at, max(dead_at) as newest_dead_at
from deliveries
where status = 'dead';

-- =====================================================================================
-- Business flows (issue 5): contacts and opt-outs for the automations, the feedback loop,
-- the CRM → Operação and Operação → Financeiro syncs. Tables from sql/0009.
-- =====================================================================================

-- name: contact_get
select client_id, name, phone, email, consent from contacts where client_id = %(client_id)s;

-- name: contact_flags
-- Whether any address of this person opted out, and (for messages to leads) whether a lead
-- with this phone or e-mail refused consent on the form. Both probes use unique indexes.
select exists (select 1 from opt_outs where address = any (%(addresses)s::text[])) as opted_out,
       %(check_leads)s::boolean and exists (
           select 1 from leads
           where ((%(phone)s::text is not null and phone = %(phone)s::text)
               or (%(email)s::text is not null and email = %(email)s::text))
             and consent = false) as lead_refused;

-- name: opt_out_record
-- The first opt-out of an address is kept (when and why it happened).
insert into opt_outs (address, channel, reason, source_message_id)
values (%(address)s, %(channel)s, %(reason)s, %(message_id)s)
on conflict (address) do nothing
returning address;

-- name: feedback_request_record
-- A channel is about to ask for feedback on a service. The first channel creates the row;
-- the second fills its own timestamp and any contact the first did not have.
insert into feedback_requests (service_id, client_id, caregiver_id, phone, email, whatsapp_at,
                               email_at)
values (%(service_id)s, %(client_id)s, %(caregiver_id)s, %(phone)s, %(email)s,
        case when %(channel)s = 'whatsapp' then now() end,
        case when %(channel)s = 'email' then now() end)
on conflict (service_id) do update
set client_id = coalesce(feedback_requests.client_id, excluded.client_id),
    caregiver_id = coalesce(feedback_requests.caregiver_id, excluded.caregiver_id),
    phone = coalesce(excluded.phone, feedback_requests.phone),
    email = coalesce(excluded.email, feedback_requests.email),
    whatsapp_at = coalesce(excluded.whatsapp_at, feedback_requests.whatsapp_at),
    email_at = coalesce(excluded.email_at, feedback_requests.email_at);

-- name: feedback_request_get
select service_id, client_id, caregiver_id, requested_at, whatsapp_at, email_at, answered_at,
       rating, channel, event_id
from feedback_requests where service_id = %(service_id)s;

-- name: feedback_pending_by_phone
-- The newest request sent to this phone by WhatsApp that is unanswered and not older than the
-- link's lifetime: what a bare "4" from that phone answers.
select service_id, client_id, caregiver_id, whatsapp_at
from feedback_requests
where phone = %(phone)s and answered_at is null and whatsapp_at is not null
  and whatsapp_at > now() - make_interval(secs => %(within_s)s)
order by whatsapp_at desc
limit 1;

-- name: feedback_answer
-- The single-use step: only the first answer for a service returns a row. A link whose
-- request row is missing (recorded nowhere, e.g. wiped) still works once.
insert into feedback_requests (service_id, answered_at, rating, comment, channel)
values (%(service_id)s, now(), %(rating)s, %(comment)s, %(channel)s)
on conflict (service_id) do update
set answered_at = now(), rating = excluded.rating, comment = excluded.comment,
    channel = excluded.channel
where feedback_requests.answered_at is null
returning service_id, client_id, caregiver_id;

-- name: feedback_link_event
update feedback_requests set event_id = %(event_id)s where service_id = %(service_id)s;

-- name: sync_abandon_stale
-- A run still 'running' long after it started belongs to a worker that died mid-run.
update sync_runs
set status = 'abandoned', finished_at = now(), error = 'no end recorded: worker stopped'
where job = %(job)s and status = 'running'
  and started_at < now() - make_interval(secs => %(stale_s)s);

-- name: sync_run_start
-- Fails on sync_runs_one_running when another run of this job is in progress.
insert into sync_runs (job, cursor_before)
values (%(job)s, (select cursor from sync_cursors where job = %(job)s))
returning id, cursor_before;

-- name: sync_run_finish
-- The run's record, and the cursor moved in the same statement when it finished well.
with run as (
    update sync_runs
    set status = %(status)s, finished_at = now(), pages = %(pages)s, counts = %(counts)s,
        error = %(error)s, cursor_after = %(cursor_after)s
    where id = %(id)s
    returning job
)
insert into sync_cursors (job, cursor)
select job, %(cursor_after)s from run
where %(status)s = 'ok' and %(cursor_after)s::text is not null
on conflict (job) do update set cursor = excluded.cursor, updated_at = now();

-- name: sync_runs_recent
select id, job, status, started_at, finished_at, cursor_before, cursor_after, pages, counts, error
from sync_runs
where %(job)s::text is null or job = %(job)s::text
order by id desc
limit %(limit)s;

-- name: synced_contract_get
select contract_id, action, fingerprint from synced_contracts where contract_id = %(contract_id)s;

-- name: synced_contract_save
insert into synced_contracts (contract_id, action, fingerprint, source_updated_at)
values (%(contract_id)s, %(action)s, %(fingerprint)s, %(source_updated_at)s)
on conflict (contract_id) do update
set action = excluded.action, fingerprint = excluded.fingerprint,
    source_updated_at = excluded.source_updated_at, synced_at = now();

-- name: billing_rates
select code, kind, value, description from rates order by code;

-- name: billing_holidays
select day from billing_holidays where day between %(first)s and %(last)s;

-- name: bill_service
-- Billed once: a service already in billed_services inserts nothing, and only a new line
-- marks its invoice for a push (a new invoice row, or a version bump of the existing one).
with billed as (
    insert into billed_services (service_id, client_id, caregiver_id, period, started_at,
                                 ended_at, lines, amount_cents, payout_cents, run_id)
    values (%(service_id)s, %(client_id)s, %(caregiver_id)s, %(period)s, %(started_at)s,
            %(ended_at)s, %(lines)s, %(amount_cents)s, %(payout_cents)s, %(run_id)s)
    on conflict (service_id) do nothing
    returning client_id, period
)
insert into invoices (client_id, period, external_key)
select client_id, period, %(external_key)s from billed
on conflict (client_id, period) do update
set version = invoices.version + 1, dirty = true, updated_at = now()
returning client_id, period;

-- name: invoices_dirty
select i.client_id, i.period, i.external_key, i.version
from invoices i
where i.dirty
order by i.client_id, i.period
limit %(limit)s;

-- name: invoice_services
select service_id, client_id, caregiver_id, period, started_at, ended_at, lines, amount_cents,
       payout_cents
from billed_services
where client_id = %(client_id)s and period = %(period)s
order by started_at, service_id;

-- name: invoice_pushed
-- Clean only if nothing was billed into it while the push was in flight (same version).
update invoices
set dirty = version <> %(version)s, pushed_version = %(version)s,
    pushed_total_cents = %(total_cents)s, pushed_at = now(), last_error = null, updated_at = now()
where client_id = %(client_id)s and period = %(period)s;

-- name: invoice_push_failed
update invoices set last_error = %(error)s, updated_at = now()
where client_id = %(client_id)s and period = %(period)s;

-- =====================================================================================
-- Throughput and scale (issue 7): the autoscaling supervisor
-- =====================================================================================

-- name: autoscale_load
-- What waits, per queue, for the destinations these workers serve: due pending rows (counted
-- up to a cap, so a huge backlog costs a bounded index scan) and the age of the oldest one.
-- Both stay on the pending-and-due partial indexes, never on the finished history. Rows of
-- destinations nobody serves (unconfigured) are held on purpose and must not look like load.
select q.queue,
       (select count(*)
          from (select 1 from deliveries d
                 where d.status = 'pending' and d.due and d.available_at <= now()
                   and d.queue = q.queue and d.destination = any(%(destinations)s)
                 limit %(cap)s) c)::bigint as backlog,
       coalesce(extract(epoch from now() - (
           select min(d.available_at) from deliveries d
            where d.status = 'pending' and d.due and d.available_at <= now()
              and d.queue = q.queue and d.destination = any(%(destinations)s))), 0)::float8
           as oldest_age_s
from unnest(%(queues)s::text[]) as q(queue)
order by q.queue;
