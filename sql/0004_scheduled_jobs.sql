-- Periodic work is ordinary outbox rows: the scheduler inserts an event of type job.<name>
-- with the idempotency key "<name>@<slot>", so any number of schedulers enqueue each slot
-- once, and the job inherits retries, the DLQ and the logs. The destination is the job runner.
insert into event_types (type, sources, description) values
 ('job.retention', '{scheduler}', 'Delete finished rows past their retention period');

insert into routes (event_type, destination, queue, priority) values
 ('job.retention', 'retention', 'low', 300);
