-- Fewer index writes per delivery.
--
-- A delivery is written three times (pending insert, claim, finish). `status` is in the
-- predicates of the partial indexes, so the two updates are never HOT: each new row version
-- goes into every index whose predicate it matches, and each attempt row into every index of
-- webhook_deliveries after a foreign-key probe that locks its delivery. Index maintenance was
-- the largest part of the Postgres CPU per delivery; this drops what no statement needs.
--
-- 1. deliveries_pending_age (destination, available_at) WHERE pending: its two readers, the
--    oldest pending row per destination (ops_destinations, alert_oldest_pending), now take
--    the least of one probe of deliveries_pending_dest (destination, priority, available_at,
--    id) per priority the destination has pending: a skip scan over a handful of priorities.
--    One index write less per delivery inserted (two per event at the ingress).
drop index deliveries_pending_age;

-- 2. deliveries_running (locked_until) WHERE running: running rows are at most the workers'
--    concurrency, so the lease rescue (every heartbeat, per worker) reads them all through
--    deliveries_running_dest and keeps the expired ones; the per-destination count of capped
--    claims stays an exact range. One index write less per claim. (Dropping, not rebuilding:
--    a new index here would scan the whole table inside this migration's transaction.)
drop index deliveries_running;

-- 3. webhook_deliveries_created (created_at): no statement reads attempts by time alone; the
--    failure counts use webhook_deliveries_failed, the lookups webhook_deliveries_delivery.
drop index webhook_deliveries_created;

-- 4. The foreign key from attempts to deliveries. Its check ran a probe of deliveries_pkey and
--    took a KEY SHARE lock (a WAL record) on the delivery for every attempt row, on the finish
--    path of every delivery. What it gave was the cascade: retention_delivered and
--    retention_archived now delete a batch's attempts in the same statement as its deliveries
--    (one set-based delete instead of one trigger query per delivery). Nothing else deletes
--    deliveries: events go only once they have none (retention_events).
alter table webhook_deliveries drop constraint webhook_deliveries_delivery_id_fkey;
