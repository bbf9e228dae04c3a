"""PostgreSQL triggers that make the audit log append-only.

UPDATE, DELETE and TRUNCATE on agents_auditevent raise an exception, whoever runs
them (the application's own role included). SQLite (quickstart only) has no
TRUNCATE; there the hash chain still exposes tampering via verify_audit.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION gatehouse_audit_refuse() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only: % refused on %', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON agents_auditevent
    FOR EACH ROW EXECUTE FUNCTION gatehouse_audit_refuse();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON agents_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION gatehouse_audit_refuse();
"""

DROP = """
DROP TRIGGER IF EXISTS audit_no_update ON agents_auditevent;
DROP TRIGGER IF EXISTS audit_no_truncate ON agents_auditevent;
DROP FUNCTION IF EXISTS gatehouse_audit_refuse();
"""

SQLITE_CREATE = """
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON agents_auditevent
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON agents_auditevent
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: DELETE refused'); END;
"""


def forwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_CREATE.strip().split("END;"):
            if statement.strip():
                schema_editor.execute(statement + "END;")


def backwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)
    elif schema_editor.connection.vendor == "sqlite":
        schema_editor.execute("DROP TRIGGER IF EXISTS audit_no_update")
        schema_editor.execute("DROP TRIGGER IF EXISTS audit_no_delete")


class Migration(migrations.Migration):
    dependencies = [("agents", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
