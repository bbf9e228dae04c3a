"""`manage.py demo_traffic` fills queue, shadow mode and dashboards; charts lay out."""

from __future__ import annotations

from datetime import date, timedelta
from io import StringIO

import pytest
from django.core.management import call_command

from agents.charts import line_chart
from agents.models import Workflow
from approvals.models import Proposal, ProposalStatus, Run
from shadow.models import Comparison


@pytest.mark.django_db
def test_demo_traffic_fills_queue_shadow_and_history() -> None:
    out = StringIO()
    call_command("demo_traffic", "--days", "6", "--cases", "45", stdout=out)
    assert "Demo traffic over 6 days" in out.getvalue()
    support = Workflow.objects.get(slug="support-triage")
    billing = Workflow.objects.get(slug="billing-disputes")
    assert billing.autonomy_level == 0
    assert Proposal.objects.filter(workflow=support, status=ProposalStatus.PENDING).count() >= 8
    assert Proposal.objects.filter(workflow=support, status=ProposalStatus.APPROVED).exists()
    assert Proposal.objects.filter(workflow=billing, status=ProposalStatus.SHADOW).count() == 15
    assert Comparison.objects.filter(proposal__workflow=billing).exists()
    # History spread over the window, and a second agent version that froze promotion.
    days = {p.created_at.date() for p in Proposal.objects.filter(workflow=support)}
    assert len(days) >= 4
    support.refresh_from_db()
    assert support.promotion_frozen and support.pending_agent_version == "v2"

    runs = Run.objects.count()
    call_command("demo_traffic", "--days", "6", "--cases", "45", "--quiet")
    assert Run.objects.count() == runs  # present already: skipped, no crash


@pytest.mark.django_db
def test_demo_traffic_force_adds_another_batch() -> None:
    call_command("demo_traffic", "--days", "2", "--cases", "10", "--quiet")
    before = Run.objects.count()
    call_command("demo_traffic", "--days", "2", "--cases", "10", "--quiet", "--force")
    assert Run.objects.count() > before


def test_line_chart_breaks_lines_on_missing_days() -> None:
    days = [date(2026, 11, 1) + timedelta(days=i) for i in range(5)]
    chart = line_chart("rates", days, [("a", [10.0, 20.0, None, 30.0, 40.0]),
                                        ("b", [None, None, None, None, 5.0])], y_max=100)
    a, b = chart.series
    assert len(a.segments) == 2 and len(a.dots) == 4
    assert b.segments == [] and len(b.dots) == 1  # a lone point is a dot
    assert not chart.empty
    assert [t.label for t in chart.y_ticks] == ["0", "25", "50", "75", "100"]
    assert line_chart("empty", days, [("a", [None] * 5)]).empty
