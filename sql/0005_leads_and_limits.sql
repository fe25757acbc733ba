-- Ingress state: the leads the hub has seen (for de-duplication and attribution), the WhatsApp
-- status of outbound sends, and the token buckets of the rate limiter.

-- One row per person who reached Carinho through the site form or WhatsApp. The hub matches a
-- new submission on the canonical phone, the e-mail, or a raw WhatsApp id (an "@lid" privacy
-- id cannot be turned into a number, so it is kept and matched as is).
create table leads (
    id             bigint generated always as identity primary key,
    lead_id        uuid not null unique,          -- public id, carried in lead.* payloads
    name           text,
    phone          text,                          -- E.164 (+55…), NULL when only an @lid is known
    phone_raw      text,                          -- the WhatsApp chat id as Z-API sent it
    whatsapp_lid   text,                          -- the sender's "@lid" id, when Z-API told us
    email          text,                          -- normalised (trimmed, lower case)
    consent        boolean,
    source         text not null check (source in ('site', 'whatsapp')),
    -- A touch is {"at", "channel", "utm_source", …, "gclid", "fbclid", "page_url", "ad"}: the
    -- first one never changes, the last one moves with every new submission or ad click.
    first_touch    jsonb not null,
    last_touch     jsonb not null,
    touches        integer not null default 1,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now(),
    -- Plain columns for the attribution report marketing runs most (GROUP BY without jsonb).
    first_channel      text generated always as (first_touch ->> 'channel') stored,
    first_utm_source   text generated always as (first_touch ->> 'utm_source') stored,
    first_utm_medium   text generated always as (first_touch ->> 'utm_medium') stored,
    first_utm_campaign text generated always as (first_touch ->> 'utm_campaign') stored,
    last_channel       text generated always as (last_touch ->> 'channel') stored,
    last_utm_source    text generated always as (last_touch ->> 'utm_source') stored,
    last_utm_medium    text generated always as (last_touch ->> 'utm_medium') stored,
    last_utm_campaign  text generated always as (last_touch ->> 'utm_campaign') stored,
    check (phone is not null or email is not null or phone_raw is not null)
);
-- A phone or an e-mail identifies one lead: that is what de-duplication means. Unique partial
-- indexes make a second row for the same person impossible even if the ingress had a bug.
create unique index leads_phone on leads (phone) where phone is not null;
create unique index leads_email on leads (email) where email is not null;
-- Raw ids are lookups only: a 12-digit and a 13-digit id can both belong to one person.
create index leads_phone_raw on leads (phone_raw) where phone_raw is not null;
create index leads_whatsapp_lid on leads (whatsapp_lid) where whatsapp_lid is not null;
create index leads_created_at on leads (created_at);

-- What WhatsApp says happened to a message the hub sent (Z-API MessageStatusCallback and
-- DeliveryCallback), matched on deliveries.external_id (the Z-API messageId). The outbox status
-- stays what the engine decided: 'delivered' means Z-API accepted the send; a later FAILED
-- here is the channel's verdict and never moves the delivery back.
alter table deliveries
    add column channel_status    text,
    add column channel_status_at timestamptz,
    add column channel_error     text;

-- Statuses only move forward: callbacks arrive out of order (READ before RECEIVED is common)
-- and FAILED is final. Unknown statuses rank 0, so they only fill an empty column.
create function channel_status_rank(status text) returns integer
language sql immutable parallel safe as $$
    select case status
        when 'SENT' then 1
        when 'RECEIVED' then 2
        when 'READ' then 3
        when 'PLAYED' then 4
        when 'FAILED' then 5
        else 0
    end
$$;

-- A callback can beat the worker's outcome flush (the worker records external_id in batches
-- after Z-API answered), so a status for an id no delivery carries yet is parked here and
-- folded in by reconcile_channel_statuses; ids that never match (messages typed on the phone)
-- are pruned after a day.
create table channel_status_inbox (
    external_id  text primary key,
    status       text not null,
    status_at    timestamptz not null,
    error        text,
    received_at  timestamptz not null default now()
);

-- Token buckets of the rate limiter, one row per bucket ("key:<name>", "ip:<webhook>:<addr>").
-- UNLOGGED: every request writes here, and a crash that empties the table only refills the
-- buckets, so the WAL and fsync cost buys nothing. full_at (when the bucket is full again) lets
-- a prune delete exactly the rows that are indistinguishable from no row. No index besides the
-- key, so the per-request UPDATE stays a HOT update.
-- The level of a bucket at time `at`: what it held at `since` plus the refill, capped at burst.
-- A plain SQL function so the planner inlines it; it only keeps take_token readable.
create function token_level(tokens double precision, since timestamptz, at timestamptz,
                            rate double precision, burst double precision)
returns double precision
language sql immutable parallel safe as $$
    select least(burst, tokens + rate * extract(epoch from at - since)::double precision)
$$;

create unlogged table rate_limits (
    bucket      text primary key,
    tokens      double precision not null,
    updated_at  timestamptz not null,
    full_at     timestamptz not null,
    allowed     boolean not null
);
