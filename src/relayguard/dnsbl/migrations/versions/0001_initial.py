"""The DNSBL store: hosts, test runs, nominations, removal requests, the audit log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: an alias of the rowid
TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO meta (id, version) VALUES (1, 0)")
    op.create_table(
        "hosts",
        sa.Column("id", ID, primary_key=True),
        sa.Column("network", sa.String(43), nullable=False, unique=True),
        sa.Column("family", sa.SmallInteger, nullable=False),
        sa.Column("prefixlen", sa.SmallInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("code", sa.String(15), nullable=False),
        sa.Column("txt", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("first_listed", TS, nullable=True),
        sa.Column("last_listed", TS, nullable=True),
        sa.Column("delisted_at", TS, nullable=True),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("next_retest", TS, nullable=True),
        sa.Column("last_tested", TS, nullable=True),
        sa.Column("last_verdict", sa.String(16), nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.Column("updated", TS, nullable=False),
    )
    op.create_index("ix_hosts_state", "hosts", ["state"])
    op.create_index("ix_hosts_next_retest", "hosts", ["next_retest"])
    op.create_index("ix_hosts_expires_at", "hosts", ["expires_at"])
    op.create_table(
        "test_runs",
        sa.Column("id", ID, primary_key=True),
        sa.Column("host_id", ID, sa.ForeignKey("hosts.id"), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("started", TS, nullable=False),
        sa.Column("finished", TS, nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("relays", JSON, nullable=False),
        sa.Column("result", JSON, nullable=False),
    )
    op.create_index("ix_test_runs_host_id", "test_runs", ["host_id"])
    op.create_table(
        "nominations",
        sa.Column("id", ID, primary_key=True),
        sa.Column("host_id", ID, sa.ForeignKey("hosts.id"), nullable=False),
        sa.Column("requester", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.Column("outcome", sa.String(24), nullable=False),
        sa.Column("test_run_id", ID, sa.ForeignKey("test_runs.id"), nullable=True),
    )
    op.create_index("ix_nominations_host_id", "nominations", ["host_id"])
    op.create_index("ix_nominations_requester_created", "nominations", ["requester", "created"])
    op.create_table(
        "removal_requests",
        sa.Column("id", ID, primary_key=True),
        sa.Column("host_id", ID, sa.ForeignKey("hosts.id"), nullable=False),
        sa.Column("contact", sa.Text, nullable=False),
        sa.Column("requester", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created", TS, nullable=False),
        sa.Column("state", sa.String(24), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=True, unique=True),
        sa.Column("confirmed_at", TS, nullable=True),
        sa.Column("test_run_id", ID, sa.ForeignKey("test_runs.id"), nullable=True),
        sa.Column("outcome", sa.String(24), nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
    )
    op.create_index("ix_removal_requests_host_id", "removal_requests", ["host_id"])
    op.create_index("ix_removal_requests_requester_created", "removal_requests", ["requester", "created"])
    op.create_table(
        "audit_log",
        sa.Column("id", ID, primary_key=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("host_id", ID, sa.ForeignKey("hosts.id"), nullable=True),
        sa.Column("network", sa.String(43), nullable=False),
        sa.Column("action", sa.String(24), nullable=False),
        sa.Column("old_state", sa.String(16), nullable=False),
        sa.Column("new_state", sa.String(16), nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("evidence", JSON, nullable=True),
    )
    op.create_index("ix_audit_log_host_id", "audit_log", ["host_id"])
    # The audit log is append-only in the database itself, not only by convention.
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
        )
    else:
        for what in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{what.lower()} BEFORE {what} ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION audit_log_append_only()")
    for table in ("audit_log", "removal_requests", "nominations", "test_runs", "hosts", "meta"):
        op.drop_table(table)
