"""The Celery settings that make redelivery safe, and their start-up validation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from approvals.tasks import execute

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def test_a_killed_worker_returns_its_task_to_the_queue() -> None:
    assert settings.CELERY_TASK_ACKS_LATE is True
    assert settings.CELERY_TASK_REJECT_ON_WORKER_LOST is True
    assert settings.CELERY_WORKER_PREFETCH_MULTIPLIER == 1
    assert execute.acks_late is True
    assert execute.reject_on_worker_lost is True


def test_a_running_task_is_killed_before_redis_would_redeliver_it() -> None:
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"]
    assert settings.CELERY_TASK_TIME_LIMIT < visibility
    assert settings.CELERY_TASK_SOFT_TIME_LIMIT < settings.CELERY_TASK_TIME_LIMIT


def _import_settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("CELERY_", "GATEHOUSE_", "DJANGO_"))}
    clean.update({"DJANGO_SECRET_KEY": "x" * 50, "GATEHOUSE_VAR_DIR": str(tmp_path),
                  "CELERY_BROKER_URL": "redis://127.0.0.1:6379/15", **env})
    return subprocess.run([sys.executable, "-c", "import config.settings.base"], cwd=BASE_DIR,
                          env=clean, capture_output=True, text=True, timeout=60, check=False)


def test_default_settings_import_cleanly(tmp_path: Path) -> None:
    done = _import_settings(tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("env", "message"), [
    ({"CELERY_TASK_TIME_LIMIT": "3600", "CELERY_VISIBILITY_TIMEOUT": "3600"},
     "CELERY_TASK_TIME_LIMIT must be below CELERY_VISIBILITY_TIMEOUT"),
    ({"CELERY_TASK_TIME_LIMIT": "600", "CELERY_VISIBILITY_TIMEOUT": "120"},
     "CELERY_TASK_TIME_LIMIT must be below CELERY_VISIBILITY_TIMEOUT"),
    ({"CELERY_VISIBILITY_TIMEOUT": "soon"}, "CELERY_VISIBILITY_TIMEOUT must be an integer"),
    ({"CELERY_VISIBILITY_TIMEOUT": "30"}, "CELERY_VISIBILITY_TIMEOUT must be >= 60"),
    ({"CELERY_TASK_TIME_LIMIT": "2"}, "CELERY_TASK_TIME_LIMIT must be >= 5"),
    ({"GATEHOUSE_OUTBOX_GRACE_SECONDS": "-1"}, "GATEHOUSE_OUTBOX_GRACE_SECONDS must be >= 0"),
    ({"GATEHOUSE_BREAKER_THRESHOLD": "0"}, "GATEHOUSE_BREAKER_THRESHOLD must be >= 1"),
])
def test_a_bad_value_stops_start_up_with_improperly_configured(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    done = _import_settings(tmp_path, **env)
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr
    assert message in done.stderr
