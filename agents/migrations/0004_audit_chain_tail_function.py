"""One round trip for the audit chain's lock and tail read (PostgreSQL only).

audit_record used to send `SELECT pg_advisory_xact_lock(k)` and then read the last
hash: two round trips on every state change. This function does both in one call.
It must be VOLATILE: a volatile PL/pgSQL function takes a fresh snapshot for each
statement it runs, so the tail read, which runs after the lock is granted, sees the
event the previous lock holder committed (a single plain SELECT would read with the
snapshot taken before it waited for the lock, and fork the chain).
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION gatehouse_audit_chain_tail(lock_key bigint) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    RETURN (SELECT hash FROM agents_auditevent ORDER BY id DESC LIMIT 1);
END;
$$;
"""

DROP = "DROP FUNCTION IF EXISTS gatehouse_audit_chain_tail(bigint);"


def forwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):

    dependencies = [
        ("agents", "0003_workflow_pending_agent_version"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
