"""Carinho integration hub: a Postgres-only outbox processor."""
