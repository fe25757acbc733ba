-- The outbox: events, their deliveries (one per destination), every attempt, and the
-- operator-facing views. Status columns are text + CHECK rather than enums so that adding a
-- state later is a plain migration.

create table events (
    id              uuid primary key default gen_random_uuid(),
    type            text not null,
    source          text not null,
    payload         jsonb not null,
    idempotency_key text,
    occurred_at     timestamptz not null default now(),
    received_at     timestamptz not null default now(),
    request_id      text,
    client          text,
    -- NULL keys are distinct, so events without a key never collide.
    constraint events_idempotency unique (source, idempotency_key)
);
create index events_received_at on events (received_at);
create index events_type_received on events (type, received_at);

create table deliveries (
    id              bigint generated always as identity primary key,
    event_id        uuid not null references events (id) on delete cascade,
    destination     text not null,
    status          text not null default 'pending'
                    check (status in ('pending', 'running', 'delivered', 'dead', 'archived')),
    queue           text not null default 'default',
    priority        smallint not null default 100,
    available_at    timestamptz not null default now(),
    attempts        integer not null default 0 check (attempts >= 0),
    max_attempts    integer,          -- NULL: the destination's policy decides
    locked_by       text,             -- lease holder (worker id); NULL unless running
    locked_until    timestamptz,
    mapping_version integer,
    ordering_key    text,
    last_error      text,
    last_status     integer,          -- last HTTP status (or adapter code)
    last_response   text,             -- truncated body of the last response
    external_id     text,             -- id given by the destination (e.g. Z-API messageId)
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    finished_at     timestamptz,      -- delivered or dead
    dead_at         timestamptz,
    archived_at     timestamptz,
    reprocessed     integer not null default 0,
    check ((status = 'running') = (locked_by is not null))
);
-- The claim only ever looks at pending rows: a partial index keeps its path the size of the
-- backlog, however many finished rows pile up behind it.
create index deliveries_claim on deliveries (priority, available_at, id)
    where status = 'pending';
-- Lease rescue scans only running rows.
create index deliveries_running on deliveries (locked_until) where status = 'running';
create index deliveries_event on deliveries (event_id);
create index deliveries_dead on deliveries (dead_at, id) where status = 'dead';
create index deliveries_external on deliveries (external_id) where external_id is not null;
create index deliveries_finished on deliveries (finished_at) where status = 'delivered';

create table webhook_deliveries (
    id               bigint generated always as identity primary key,
    delivery_id      bigint not null references deliveries (id) on delete cascade,
    attempt          integer not null,
    destination      text not null,
    outcome          text not null
                     check (outcome in ('delivered', 'retry', 'dead', 'lease_expired', 'released')),
    response_status  integer,
    duration_ms      double precision,
    error            text,
    request_summary  text,
    response_body    text,
    worker           text,
    lease_lost       boolean not null default false,
    created_at       timestamptz not null default now()
);
create index webhook_deliveries_delivery on webhook_deliveries (delivery_id, attempt);
create index webhook_deliveries_created on webhook_deliveries (created_at);

-- The routing table of the event catalog: which sources may emit a type, and where it goes.
create table event_types (
    type         text primary key,
    sources      text[] not null,
    description  text not null default ''
);

create table routes (
    event_type   text not null references event_types (type),
    destination  text not null,
    queue        text not null default 'default',
    priority     smallint not null default 100,
    delay_s      integer not null default 0 check (delay_s >= 0),
    enabled      boolean not null default true,
    primary key (event_type, destination)
);

create table event_mappings (
    event_type   text not null,
    destination  text not null,
    version      integer not null check (version >= 1),
    spec         jsonb not null,
    is_active    boolean not null default false,
    created_at   timestamptz not null default now(),
    created_by   text,
    note         text,
    primary key (event_type, destination, version)
);
create unique index event_mappings_one_active on event_mappings (event_type, destination)
    where is_active;

create table api_keys (
    id            bigint generated always as identity primary key,
    name          text not null unique,
    key_hash      text not null unique,  -- sha256 hex of the whole key; the key itself is never stored
    key_prefix    text not null,
    sources       text[] not null default '{}',
    is_admin      boolean not null default false,
    rate_per_s    double precision,      -- NULL: the configured default
    burst         integer,
    created_at    timestamptz not null default now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);

create table workers (
    id            text primary key,
    host          text not null,
    pid           integer not null,
    queues        text[] not null,
    concurrency   integer not null,
    started_at    timestamptz not null default now(),
    last_seen_at  timestamptz not null default now(),
    in_flight     integer not null default 0,
    processed     bigint not null default 0,
    stopping      boolean not null default false
);

create view dead_letter as
select d.id, d.event_id, e.type as event_type, e.source, d.destination, d.status,
       d.attempts, d.last_error, d.last_status, d.last_response, d.dead_at, d.archived_at,
       d.reprocessed, d.mapping_version, e.received_at, e.payload
from deliveries d
join events e on e.id = d.event_id
where d.status in ('dead', 'archived');

create view retry_queue as
select d.id, d.event_id, e.type as event_type, d.destination, d.queue, d.priority,
       d.attempts, d.max_attempts, d.available_at, d.last_error, d.last_status
from deliveries d
join events e on e.id = d.event_id
where d.status = 'pending' and d.attempts > 0;
