-- Versioned mappings and the routing table as operator-editable data (issue 4).

-- 1. One active version per pair, checked at the END of each statement.
-- The partial unique index of 0001 is checked row by row, so `update … set is_active =
-- (version = n)` over a pair's rows fails or succeeds depending on the physical order in which
-- the rows are visited. A DEFERRABLE (initially immediate) exclusion constraint is checked once
-- per statement, which is what lets activation and rollback be one UPDATE. It builds the same
-- partial btree the old index was, so the ingress join on is_active keeps its index.
drop index event_mappings_one_active;
alter table event_mappings
    add constraint event_mappings_one_active
    exclude using btree (event_type with =, destination with =) where (is_active)
    deferrable initially immediate;

-- 2. Versions are immutable. A delivery records only (type, destination, version); the body it
-- sent is reproducible only while that version's spec stays exactly as it was. Only is_active
-- may change, and no version is ever deleted (old deliveries may still be pinned to it).
create function event_mappings_immutable() returns trigger
language plpgsql as $$
begin
    if tg_op = 'DELETE' then
        raise exception 'event mapping % -> % version % is immutable and cannot be deleted',
            old.event_type, old.destination, old.version
            using errcode = 'integrity_constraint_violation';
    end if;
    if (new.event_type, new.destination, new.version, new.spec, new.created_at, new.created_by,
        new.note)
       is distinct from
       (old.event_type, old.destination, old.version, old.spec, old.created_at, old.created_by,
        old.note) then
        raise exception 'event mapping % -> % version % is immutable; save a new version instead',
            old.event_type, old.destination, old.version
            using errcode = 'integrity_constraint_violation';
    end if;
    return new;
end
$$;

create trigger event_mappings_immutable
    before update or delete on event_mappings
    for each row execute function event_mappings_immutable();

-- 3. Who activated which version, when (versions themselves carry created_by/created_at).
create table mapping_activations (
    id               bigint generated always as identity primary key,
    event_type       text not null,
    destination      text not null,
    version          integer not null,
    previous_version integer,
    action           text not null check (action in ('activate', 'rollback', 'save')),
    activated_by     text not null,
    activated_at     timestamptz not null default now()
);
create index mapping_activations_pair on mapping_activations (event_type, destination, id);

-- 4. Routing history: every insert/update/delete of a route, with who and when.
-- A trigger rather than the store writing it, so an edit made straight in psql is recorded as
-- well. "Who" is the transaction-local setting carinho.actor (the store sets it in the same
-- statement as the change), else the database role.
create table routes_history (
    id           bigint generated always as identity primary key,
    event_type   text not null,
    destination  text not null,
    op           text not null check (op in ('baseline', 'insert', 'update', 'delete')),
    old_row      jsonb,
    new_row      jsonb,
    changed_by   text not null,
    changed_at   timestamptz not null default now()
);
create index routes_history_pair on routes_history (event_type, destination, id);

create function routes_record_history() returns trigger
language plpgsql as $$
declare
    who text := coalesce(nullif(current_setting('carinho.actor', true), ''),
                         'db:' || session_user);
begin
    if tg_op = 'INSERT' then
        insert into routes_history (event_type, destination, op, new_row, changed_by)
        values (new.event_type, new.destination, 'insert', to_jsonb(new), who);
    elsif tg_op = 'UPDATE' then
        insert into routes_history (event_type, destination, op, old_row, new_row, changed_by)
        values (new.event_type, new.destination, 'update', to_jsonb(old), to_jsonb(new), who);
    else
        insert into routes_history (event_type, destination, op, old_row, changed_by)
        values (old.event_type, old.destination, 'delete', to_jsonb(old), who);
    end if;
    return null;
end
$$;

-- No-op updates (same values written again) are not history.
create trigger routes_history_update
    after update on routes
    for each row when (old is distinct from new)
    execute function routes_record_history();
create trigger routes_history_insert_delete
    after insert or delete on routes
    for each row execute function routes_record_history();

-- The state the history starts from, so every route has a first row to compare against.
insert into routes_history (event_type, destination, op, new_row, changed_by)
select event_type, destination, 'baseline', to_jsonb(r), 'migration'
from routes r
order by event_type, destination;
