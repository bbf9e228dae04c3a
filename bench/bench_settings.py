"""Settings for the benchmark's own server and worker: production settings plus the
bench-only baseline endpoints (bench/bench_urls.py). Never used outside bench/."""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key-not-for-production-0123456789")
os.environ.setdefault("DJANGO_DEBUG", "0")
os.environ.setdefault("DJANGO_SECURE", "0")
# Persistent connections, as a production deployment would run; both the target and
# its baseline get the same.
os.environ.setdefault("DATABASE_CONN_MAX_AGE", "60")
os.environ.setdefault("LOG_LEVEL", "WARNING")

from config.settings.base import *  # noqa: F403

ROOT_URLCONF = "bench.bench_urls"
