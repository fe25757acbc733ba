-- /status in constant time, however busy the last hour and however big the DLQ (issues 6, 7).
--
-- 1. The event type on the delivery row. /status counts open deliveries by (status, event
--    type, destination); the type lived only on events, so every count joined events row by
--    row (or hashed the whole events table), the cost following the backlog and the DLQ. The
--    ingress statements write it with the row; a BEFORE INSERT trigger fills it for every
--    other writer (jobs, alerts, tests that insert deliveries directly) that leaves it out.
--    Only the open rows are filled here: a delivered or archived row never becomes open again
--    (dlq_reprocess takes dead rows only), and nothing reads the type of a finished one.
alter table deliveries add column event_type text;

update deliveries d set event_type = e.type
from events e where e.id = d.event_id and d.status = 'pending' and d.event_type is null;
update deliveries d set event_type = e.type
from events e where e.id = d.event_id and d.status = 'running' and d.event_type is null;
update deliveries d set event_type = e.type
from events e where e.id = d.event_id and d.status = 'dead' and d.event_type is null;

create function deliveries_event_type() returns trigger
language plpgsql as $$
begin
    select e.type into new.event_type from events e where e.id = new.event_id;
    return new;
end
$$;

-- The WHEN clause keeps the function off the ingress path, which writes the type itself.
create trigger deliveries_event_type
    before insert on deliveries
    for each row when (new.event_type is null)
    execute function deliveries_event_type();

-- Dead letters by destination and type (with their time, for /dlq/stats): an index-only
-- count. It replaces 0006's deliveries_dead_dest, whose one column is this index's first.
create index deliveries_dead_type on deliveries (destination, event_type) include (dead_at)
    where status = 'dead';
drop index deliveries_dead_dest;

-- 2. Per-minute throughput. Counting the last hour from the indexes costs whatever the hour
--    held (hundreds of thousands of rows right after a burst). A minute that has ended (and
--    settled, so late commits are in) never changes: it is counted once, lazily, by whoever
--    asks first (/status, the dashboard, the every-minute alerts job), into one row here.
--    Readers take whole closed minutes from this table and count only the rest (the open
--    minute, the part-minute at a window's start, any minute not rolled up) from the indexes.
--    No write on the ingress or delivery path. The retention job prunes rows past two hours.
create table status_minutes (
    minute        timestamptz primary key,
    received      integer not null,   -- events received
    delivered     integer not null,   -- deliveries finished as delivered
    failed        integer not null,   -- attempts with outcome retry or dead
    delivered_by  jsonb not null default '{}'::jsonb,  -- delivered per destination
    rolled_at     timestamptz not null default now()
);
