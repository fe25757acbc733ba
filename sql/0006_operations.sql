-- Operating the hub: indexes that keep /status, /health/detailed, /metrics and the dashboard
-- fast however many finished rows pile up; the alerts job and its Slack/Discord routes; the
-- alert state that makes each alert fire once per incident.
--
-- Every index here is partial on a small or time-bounded set, so the operator queries are
-- index range scans whose cost follows the live backlog or the last hour, never the table.

-- Pending rows per destination, oldest due first: "oldest pending age" per destination is one
-- index probe each, held deliveries of unconfigured destinations are an index-only count.
-- (0008's deliveries_pending_dest puts priority before available_at, so it cannot answer
-- "oldest" without reading a destination's whole backlog.)
create index deliveries_pending_age on deliveries (destination, available_at)
    where status = 'pending';

-- The retry queue (pending with a spent attempt) by destination and attempt number.
create index deliveries_retrying on deliveries (destination, attempts)
    where status = 'pending' and attempts > 0;

-- Last success per destination is one backward probe; delivered throughput per destination
-- is a range scan bounded by the time window.
create index deliveries_delivered_dest on deliveries (destination, finished_at)
    where status = 'delivered';

-- Dead letters per destination: an index-only count (deliveries_dead is ordered by time).
create index deliveries_dead_dest on deliveries (destination) where status = 'dead';

-- Failed attempts over the last minutes (throughput "failed") without touching the far
-- larger set of successful attempts.
create index webhook_deliveries_failed on webhook_deliveries (created_at)
    where outcome in ('retry', 'dead');

-- Event lookup by phone or e-mail (the dashboard). Payloads store phones as E.164 and
-- e-mails normalised, so an equality probe finds them; partial, so events without the field
-- cost nothing.
create index events_payload_phone on events ((payload ->> 'phone'))
    where payload ? 'phone';
create index events_payload_email on events ((lower(payload ->> 'email')))
    where payload ? 'email';

-- Alerts go through the outbox itself: the alerts job (enqueued every minute by the
-- scheduler, run by a worker) writes alert.raised events, delivered to Slack and Discord like
-- any delivery, so alerts are retried, dead-lettered and logged.
insert into event_types (type, sources, description) values
 ('job.alerts',   '{scheduler}', 'Evaluate the alert rules (dead letters, pending age, workers)'),
 ('alert.raised', '{hub}',       'An operator alert (firing or resolved) for Slack and Discord');

insert into routes (event_type, destination, queue, priority) values
 ('job.alerts',   'alerts',  'critical', 30),
 ('alert.raised', 'slack',   'critical', 10),
 ('alert.raised', 'discord', 'critical', 10);

-- One row per alert rule: whether it is firing, since when, and when it last notified, so
-- an incident notifies once, repeats only after the cooldown, and says when it is resolved.
create table alert_state (
    key           text primary key,
    firing        boolean not null default false,
    since         timestamptz,
    last_sent_at  timestamptz,
    details       jsonb not null default '{}'::jsonb,
    updated_at    timestamptz not null default now()
);
