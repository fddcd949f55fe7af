"""Alembic environment: always run by `relayguard.dnsbl.store.migrate` on a connection it holds
(inside a transaction that already has the migration lock), never from an alembic.ini."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
