-- A queue table churns: every delivery is inserted, updated two or three times and deleted by
-- retention. With the default 20% scale factor, dead tuples pile up on the claim indexes
-- between autovacuum runs (the soak showed the claim scan touching 200x more buffers within
-- minutes with autovacuum off). Vacuum these tables after a fixed, small amount of churn.
alter table deliveries set (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.02
);
alter table webhook_deliveries set (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);
alter table destination_state set (autovacuum_vacuum_threshold = 100);
