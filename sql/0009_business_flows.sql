-- Business flows (issue 5): the WhatsApp and e-mail automations as routes, the state they
-- need (contacts, opt-outs, feedback requests), and the scheduled syncs with their cursors,
-- rates and the record of what was billed.

-- The route history (0007) records who changed a route: this migration.
select set_config('carinho.actor', 'migration 0009', true);

-- 1. Catalog ---------------------------------------------------------------------------------

-- The hub's own feedback form (GET/POST /feedback/{token}) emits feedback.received as source
-- 'feedback': the rating came from the client through a signed link, not from Operação.
update event_types set sources = array_append(sources, 'feedback')
where type = 'feedback.received' and not ('feedback' = any (sources));

insert into event_types (type, sources, description) values
 ('job.sync_crm_to_operacao', '{scheduler}',
  'Hourly: contracts changed in the CRM become schedules in Operação'),
 ('job.sync_operacao_to_financeiro', '{scheduler}',
  'Daily: completed services become invoice lines and payouts in Financeiro');

-- 2. Routes ----------------------------------------------------------------------------------
-- Automations are ordinary routes to the channel destinations, so an operator can pause one
-- (enabled = false) or change the feedback delay with PUT /routes, with history.
insert into routes (event_type, destination, queue, priority, delay_s) values
 ('lead.created',      'whatsapp', 'default',  60,    0),
 ('client.registered', 'email',    'default', 100,    0),
 ('client.registered', 'whatsapp', 'default', 100,    0),
 -- FEEDBACK_DELAY_S: two hours after the service, as table state (available_at).
 ('service.completed', 'whatsapp', 'default', 150, 7200),
 ('service.completed', 'email',    'default', 150, 7200),
 ('job.sync_crm_to_operacao',        'sync_crm_to_operacao',        'default', 200, 0),
 ('job.sync_operacao_to_financeiro', 'sync_operacao_to_financeiro', 'default', 200, 0)
on conflict (event_type, destination) do nothing;

-- Routes shipped by a migration are defaults, not operator changes: recorded as baseline
-- rows by 'migration', like the routes of 0002 (see 0007), so "op <> 'baseline'" keeps
-- meaning "changed by someone".
update routes_history set op = 'baseline', changed_by = 'migration'
where changed_by = 'migration 0009' and op = 'insert';

-- 3. Who may be messaged ---------------------------------------------------------------------

-- Clients as the CRM last described them (client.registered / client.updated), for the flows
-- whose events carry only a client_id (service.completed). event_at (the event's occurred_at)
-- keeps a late, older event from overwriting a newer one.
create table contacts (
    client_id   text primary key,
    name        text,
    phone       text,                 -- E.164
    email       text,                 -- normalised
    consent     boolean,              -- NULL: never stated (messages are sent)
    event_at    timestamptz not null,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);
create index contacts_phone on contacts (phone) where phone is not null;

-- Written by a trigger in the same transaction as the client event itself: the contact exists
-- the moment the event is accepted, whatever the order in which deliveries run, and no
-- delivery or worker round trip is spent on it. The WHEN clause keeps every other event type
-- off this path (one comparison per inserted row). Payloads are validated and normalised
-- before the insert (E.164 phones, lower-case e-mails), so the values are stored as they come.
create function contacts_from_event() returns trigger
language plpgsql as $$
declare
    fields jsonb := case when new.type = 'client.registered' then new.payload
                         else coalesce(new.payload -> 'changes', '{}'::jsonb) end;
begin
    if new.payload ->> 'client_id' is null or jsonb_typeof(fields) <> 'object' then
        return null;
    end if;
    insert into contacts (client_id, name, phone, email, consent, event_at)
    values (new.payload ->> 'client_id',
            nullif(btrim(fields ->> 'name'), ''),
            nullif(fields ->> 'phone', ''),
            nullif(fields ->> 'email', ''),
            case when jsonb_typeof(fields -> 'consent') = 'boolean'
                 then (fields ->> 'consent')::boolean end,
            new.occurred_at)
    on conflict (client_id) do update
    set name = coalesce(excluded.name, contacts.name),
        phone = coalesce(excluded.phone, contacts.phone),
        email = coalesce(excluded.email, contacts.email),
        consent = coalesce(excluded.consent, contacts.consent),
        event_at = excluded.event_at,
        updated_at = now()
    where contacts.event_at <= excluded.event_at;
    return null;
end
$$;

create trigger events_contacts
    after insert on events
    for each row when (new.type in ('client.registered', 'client.updated'))
    execute function contacts_from_event();

-- People who asked for no more automated messages ("PARAR", "SAIR" on WhatsApp), by address:
-- a phone is one person whether the CRM knows them as a lead or a client, so an opt-out on
-- WhatsApp also stops the e-mails addressed to the same contact.
create table opt_outs (
    address            text primary key,  -- E.164 phone or normalised e-mail
    channel            text not null check (channel in ('whatsapp', 'email', 'operator')),
    reason             text,
    source_message_id  text,
    opted_out_at       timestamptz not null default now()
);

-- One feedback request per service, answered once (by the WhatsApp reply or the e-mail link,
-- whichever comes first): answered_at is the single-use guard of the signed link too.
create table feedback_requests (
    service_id    text primary key,
    client_id     text,
    caregiver_id  text,
    phone         text,
    email         text,
    requested_at  timestamptz not null default now(),
    whatsapp_at   timestamptz,
    email_at      timestamptz,
    answered_at   timestamptz,
    rating        smallint check (rating between 1 and 5),
    comment       text,
    channel       text,
    event_id      uuid
);
-- "Has this phone a pending request?" for each inbound WhatsApp message: a probe of the
-- newest unanswered request sent to that phone.
create index feedback_requests_pending_phone on feedback_requests (phone, whatsapp_at desc)
    where answered_at is null and whatsapp_at is not null;

-- 4. Scheduled syncs --------------------------------------------------------------------------

create table sync_runs (
    id             bigint generated always as identity primary key,
    job            text not null,
    status         text not null default 'running'
                   check (status in ('running', 'ok', 'failed', 'abandoned')),
    started_at     timestamptz not null default now(),
    finished_at    timestamptz,
    cursor_before  text,
    cursor_after   text,
    pages          integer not null default 0,
    counts         jsonb not null default '{}'::jsonb,
    error          text
);
-- One run of a job at a time across all workers: a second insert fails on this index. A run
-- left 'running' by a crashed worker is marked abandoned after SYNC_STALE_S.
create unique index sync_runs_one_running on sync_runs (job) where status = 'running';
create index sync_runs_job on sync_runs (job, id);

-- Where the next run starts: moved only by a run that finished.
create table sync_cursors (
    job         text primary key,
    cursor      text not null,
    updated_at  timestamptz not null default now()
);

-- What Operação was last told about each contract: a rerun (or a page fetched again after a
-- failure) sends nothing when the fingerprint of the request is the same.
create table synced_contracts (
    contract_id        text primary key,
    action             text not null check (action in ('upsert', 'cancel')),
    fingerprint        text not null,
    source_updated_at  text,
    synced_at          timestamptz not null default now()
);

-- Prices, in integer cents and basis points (1 bp = 0.01 %), never float. Billing reads them
-- when a service is billed; the lines it wrote keep the values used.
create table rates (
    code         text primary key,
    kind         text not null check (kind in ('cents_per_hour', 'percent_bp', 'cents_per_unit')),
    value        bigint not null check (value >= 0),
    description  text not null,
    updated_at   timestamptz not null default now()
);
insert into rates (code, kind, value, description) values
 ('hourly',     'cents_per_hour', 4000, 'Hora de cuidado'),
 ('night',      'percent_bp',     2000, 'Adicional noturno (22h às 6h)'),
 ('weekend',    'percent_bp',     3000, 'Adicional de fim de semana (sábado e domingo)'),
 ('holiday',    'percent_bp',    10000, 'Adicional de feriado nacional'),
 ('extra_hour', 'percent_bp',     5000, 'Adicional de hora extra'),
 ('payout',     'percent_bp',     6000, 'Repasse ao cuidador (sobre o total do serviço)'),
 ('extra:acompanhamento_consulta', 'cents_per_unit', 6000, 'Acompanhamento em consulta'),
 ('extra:curativo',                'cents_per_unit', 2500, 'Curativo simples');

-- Holidays beyond the national ones the code knows (municipal, state): billed as holidays.
create table billing_holidays (
    day   date primary key,
    name  text not null
);

-- A service is billed once: the primary key makes every rerun a no-op for it.
create table billed_services (
    service_id    text primary key,
    client_id     text not null,
    caregiver_id  text,
    period        text not null,        -- YYYY-MM in BILLING_TZ
    started_at    timestamptz not null,
    ended_at      timestamptz not null,
    lines         jsonb not null,
    amount_cents  bigint not null check (amount_cents >= 0),
    payout_cents  bigint not null check (payout_cents >= 0),
    run_id        bigint,
    billed_at     timestamptz not null default now()
);
create index billed_services_invoice on billed_services (client_id, period);

-- One invoice per client per period, sent to Financeiro whole (PUT) whenever a service was
-- added since the last push. version guards the "pushed" mark against a service billed
-- while the push was in flight.
create table invoices (
    client_id           text not null,
    period              text not null,
    external_key        text not null unique,
    version             integer not null default 1,
    dirty               boolean not null default true,
    pushed_version      integer,
    pushed_total_cents  bigint,
    pushed_at           timestamptz,
    last_error          text,
    updated_at          timestamptz not null default now(),
    primary key (client_id, period)
);
create index invoices_dirty on invoices (client_id, period) where dirty;
