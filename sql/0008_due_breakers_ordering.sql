-- Keep the claim index to rows that can be sent *now*.
--
-- `due` is false while a pending delivery waits for its time (a retry's backoff, a delay), for
-- an earlier delivery with the same ordering key, or for its destination's circuit to close.
-- The claim index holds only pending AND due rows, so retries waiting, paused destinations and
-- blocked keys cost the claim nothing, however many there are. A promoter (run by every worker
-- each poll) flips rows to due when their time comes and their key's predecessor is finished.
-- Status stays 'pending' throughout: the state machine of DESIGN.md §2 is unchanged.
alter table deliveries add column due boolean not null default true;

drop index deliveries_claim;
create index deliveries_claim on deliveries (priority, available_at, id)
    where status = 'pending' and due;
-- Starvation guard: the oldest due rows, whatever their priority.
create index deliveries_claim_age on deliveries (available_at, id)
    where status = 'pending' and due;
-- The promoter's path: waiting rows by time.
create index deliveries_waiting on deliveries (available_at, id)
    where status = 'pending' and not due;
-- Per-key ordering: "is there an unfinished earlier delivery with my key?"
create index deliveries_ordering on deliveries (destination, ordering_key, id)
    where ordering_key is not null and status in ('pending', 'running');
-- Guarded claims (capped destinations, circuit probes) look up one destination's backlog.
create index deliveries_pending_dest on deliveries (destination, priority, available_at, id)
    where status = 'pending';
create index deliveries_running_dest on deliveries (destination) where status = 'running';

-- Which payload field orders an event type's deliveries (first non-null wins).
alter table event_types add column ordering_paths text[] not null default '{}';
update event_types set ordering_paths = case
    when type like 'lead.%' then '{lead_id,phone,email}'
    when type like 'client.%' then '{client_id}'
    when type like 'service.%' then '{service_id}'
    when type in ('payment.received', 'payment.failed', 'invoice.created') then '{client_id}'
    when type = 'payout.processed' then '{caregiver_id}'
    when type = 'whatsapp.inbound' then '{phone,phone_raw}'
    when type = 'feedback.received' then '{service_id}'
    else '{}' end::text[];

-- Per-destination protection, all in table state so it holds across any number of workers.
create table destination_state (
    destination           text primary key,
    state                 text not null default 'closed'
                          check (state in ('closed', 'open', 'half_open')),
    consecutive_failures  integer not null default 0,
    paused_until          timestamptz,
    opened_at             timestamptz,
    probe_until           timestamptz,
    last_success_at       timestamptz,
    last_failure_at       timestamptz,
    last_error            text,
    -- token bucket for an optional deliveries-per-second limit
    tokens                double precision,
    tokens_at             timestamptz,
    updated_at            timestamptz not null default now()
);
