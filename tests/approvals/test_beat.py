from __future__ import annotations

from django.conf import settings

from config.celery import app


def test_every_beat_entry_names_a_registered_task() -> None:
    app.loader.import_default_modules()
    names = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"approvals.tasks.expire_overdue", "approvals.tasks.sweep_executions",
            "approvals.tasks.sweep_webhooks", "shadow.tasks.match_pending",
            "shadow.tasks.recover_exports"} <= names
    assert names <= set(app.tasks)
