-- Default event mappings: version 1, active, for every (event type, destination) pair of the
-- catalog in DESIGN.md §4 (29 pairs) plus the 5 automation channel pairs (34 rows in total).
--
-- Specs are interpreted by carinho_outbox.mapping (see its module docstring). Most pairs are
-- identity on purpose: each destination's real shape is unknown until its team asks for one,
-- and a new version can be added with `carinho-outbox mappings` without a migration. The few
-- non-identity rules only ADD keys (merge mode never drops payload keys here) and omit them
-- when the source field is absent, so no default mapping can make a valid event undeliverable.
--
-- ON CONFLICT DO NOTHING: if an operator already created a version 1 or an active version for
-- a pair before this migration ran, theirs wins; the seed must never fail the migration.
insert into event_mappings (event_type, destination, version, spec, is_active, created_by, note)
values
    -- lead.created
    ('lead.created', 'crm', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    ('lead.created', 'marketing', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity: utm_* pass through'),
    ('lead.created', 'whatsapp', 1, '{"mode":"merge","fields":[{"to":"phone_digits","from":"phone","format":"phone_digits"}]}'::jsonb, true, 'migration', 'greeting: Z-API wants bare digits (5541999999999)'),
    -- lead.updated
    ('lead.updated', 'crm', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    -- client.registered
    ('client.registered', 'crm', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    ('client.registered', 'financeiro', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    ('client.registered', 'marketing', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    ('client.registered', 'email', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'welcome e-mail: identity'),
    ('client.registered', 'whatsapp', 1, '{"mode":"merge","fields":[{"to":"phone_digits","from":"phone","format":"phone_digits"}]}'::jsonb, true, 'migration', 'welcome: Z-API wants bare digits'),
    -- client.updated
    ('client.updated', 'crm', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    ('client.updated', 'operacao', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    -- service.scheduled
    ('service.scheduled', 'crm', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    ('service.scheduled', 'operacao', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity: dates as sent (ISO 8601 with offset)'),
    ('service.scheduled', 'cuidadores', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    ('service.scheduled', 'financeiro', 1, '{"mode":"merge","fields":[{"to":"valor","from":"amount_cents","format":"cents_to_decimal"}]}'::jsonb, true, 'migration', 'adds valor (decimal string) when amount_cents is sent'),
    -- service.started
    ('service.started', 'crm', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    ('service.started', 'operacao', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity: dates as sent'),
    -- service.completed
    ('service.completed', 'crm', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    ('service.completed', 'financeiro', 1, '{"mode":"merge","fields":[{"to":"valor","from":"amount_cents","format":"cents_to_decimal"}]}'::jsonb, true, 'migration', 'adds valor (decimal string) when amount_cents is sent'),
    ('service.completed', 'cuidadores', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    ('service.completed', 'whatsapp', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'feedback request (rating buttons): identity'),
    ('service.completed', 'email', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'feedback request (link): identity'),
    -- service.cancelled
    ('service.cancelled', 'crm', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    ('service.cancelled', 'operacao', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity: dates as sent'),
    ('service.cancelled', 'financeiro', 1, '{"mode":"merge","fields":[{"to":"valor","from":"amount_cents","format":"cents_to_decimal"}]}'::jsonb, true, 'migration', 'adds valor (decimal string) when amount_cents is sent'),
    -- payment.received
    ('payment.received', 'crm', 1, '{"mode":"merge","fields":[{"to":"valor","from":"amount_cents","format":"cents_to_decimal"}]}'::jsonb, true, 'migration', 'adds valor (decimal string)'),
    ('payment.received', 'operacao', 1, '{"mode":"merge","fields":[{"to":"valor","from":"amount_cents","format":"cents_to_decimal"}]}'::jsonb, true, 'migration', 'adds valor (decimal string); dates as sent'),
    -- payment.failed
    ('payment.failed', 'crm', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    -- invoice.created
    ('invoice.created', 'crm', 1, '{"mode":"merge","fields":[{"to":"valor","from":"amount_cents","format":"cents_to_decimal"}]}'::jsonb, true, 'migration', 'adds valor (decimal string)'),
    -- payout.processed
    ('payout.processed', 'cuidadores', 1, '{"mode":"merge","fields":[{"to":"valor","from":"amount_cents","format":"cents_to_decimal"}]}'::jsonb, true, 'migration', 'adds valor (decimal string)'),
    -- whatsapp.inbound
    ('whatsapp.inbound', 'crm', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    ('whatsapp.inbound', 'atendimento', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    -- feedback.received
    ('feedback.received', 'crm', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity'),
    ('feedback.received', 'cuidadores', 1, '{"mode":"merge","fields":[]}'::jsonb, true, 'migration', 'identity')
on conflict do nothing;
