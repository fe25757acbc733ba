-- deliveries_ordering with the ordering key first.
--
-- Every reader asks for one (destination, ordering_key) pair, and the ordering key is by far
-- the more selective of the two (one client's rows). A prepared ingest_event whose generic
-- plan was made while deliveries was small (a fresh install, or after a TRUNCATE) kept only
-- `ordering_key = $n` as its index condition on the old (destination, ordering_key, id)
-- order: a scan of the whole index per event, growing with the backlog (560 -> 1,225 µs per
-- ingest_event over 15,000 events) until the next ANALYZE replanned it. With the key leading,
-- any plan that uses the index at all is a narrow range.
--
-- Built inside the migration's transaction: writes to deliveries wait for the build, which
-- reads the table once (the index itself holds only pending and running rows with a key).
drop index deliveries_ordering;
create index deliveries_ordering on deliveries (ordering_key, destination, id)
    where ordering_key is not null and status in ('pending', 'running');
