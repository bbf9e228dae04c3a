"""The application's URLs plus the ingest baselines: a bare DRF endpoint doing one
INSERT. Bench-only; the table is created by bench/harness.py."""

from __future__ import annotations

import json

from django.db import connection
from django.urls import path
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from config.urls import urlpatterns as app_urlpatterns

BARE_TABLE = "bench_bare_insert"


def _insert(request: Request) -> Response:
    with connection.cursor() as cur:
        cur.execute(f"INSERT INTO {BARE_TABLE} (payload) VALUES (%s) RETURNING id",
                    [json.dumps(request.data)])
        row_id = cur.fetchone()[0]
    return Response({"id": row_id}, status=201)


@api_view(["POST"])
def bare_insert(request: Request) -> Response:
    """The project's DRF defaults (agent bearer token, IsAuthenticated), one INSERT."""
    return _insert(request)


@api_view(["POST"])
@authentication_classes([])
@permission_classes([AllowAny])
def bare_insert_anon(request: Request) -> Response:
    """No authentication at all: the absolute floor of a DRF POST that writes a row."""
    return _insert(request)


urlpatterns = [
    path("bench/bare-insert/", bare_insert),
    path("bench/bare-insert-anon/", bare_insert_anon),
    *app_urlpatterns,
]
