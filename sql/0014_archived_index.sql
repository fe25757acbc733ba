-- Archived dead letters by time, for the retention job.
--
-- retention_archived ran every RETENTION_CRON (10 minutes) as a sequential scan of the whole
-- deliveries table: no index held archived rows. A partial index on them costs one index
-- write per archive action (an operator's, rare) and nothing on the delivery path, since a
-- row only enters it when archived.
--
-- Built inside the migration's transaction: writes to deliveries wait for one read of the
-- table.
create index deliveries_archived on deliveries (archived_at) where status = 'archived';
