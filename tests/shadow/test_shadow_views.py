"""Shadow and dataset pages: access (login, 404 for outsiders, 405), forms with 400s,
the htmx progress partial and the streaming download."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from shadow import services
from shadow.models import Dataset, DatasetVersion, ExportJob, HumanOutcome
from tests.factories import WorkflowFactory
from tests.shadow.conftest import shadow_proposal

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _export_dir(settings, tmp_path):  # type: ignore[no-untyped-def]
    settings.GATEHOUSE_EXPORT_DIR = tmp_path / "exports"


@pytest.fixture
def billing(db: None):  # type: ignore[no-untyped-def]
    return WorkflowFactory(slug="billing", name="Billing",
                           reviewer_group=Group.objects.get_or_create(name="billing-reviewers")[0])


@pytest.fixture
def as_reviewer(client: Client, reviewer) -> Client:  # type: ignore[no-untyped-def]
    client.force_login(reviewer)
    return client


@pytest.fixture
def as_outsider(other_reviewer, billing) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(other_reviewer)
    return client


@pytest.fixture
def compared(reviewer, agent, shadow_workflow):  # type: ignore[no-untyped-def]
    p = shadow_proposal(agent, shadow_workflow, case_ref="T-1",
                        arguments={"project": "SUP", "summary": "<script>alert(1)</script>"})
    services.outcome_record(actor=reviewer, workflow=shadow_workflow, case_ref="T-1",
                            tool_name="jira.create_ticket",
                            arguments={"project": "SUP", "summary": "Printer on fire"})
    return p


@pytest.fixture
def version(manager, compared, shadow_workflow) -> DatasetVersion:  # type: ignore[no-untyped-def]
    dataset = services.dataset_create(actor=manager, workflow=shadow_workflow, name="evals")
    return services.dataset_version_create(actor=manager, dataset=dataset, filters={})


PAGES = ["/shadow/", "/shadow/support-triage/", "/shadow/support-triage/outcomes/new/",
         "/shadow/support-triage/outcomes/upload/", "/datasets/"]


@pytest.mark.parametrize("url", PAGES)
def test_pages_need_login(client: Client, shadow_workflow, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_comparisons_page_shows_verdict_diff_and_escapes_agent_content(
    as_reviewer: Client, compared
) -> None:
    page = as_reviewer.get("/shadow/support-triage/").content.decode()
    assert "verdict-partial" in page and f"/queue/{compared.pk}/" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "Printer on fire" in page and "differs" in page
    assert as_reviewer.get("/shadow/support-triage/?verdict=agree").content.decode().count(
        "comparison-") == 0


def test_proposal_detail_shows_the_shadow_comparison(as_reviewer: Client, compared) -> None:
    page = as_reviewer.get(f"/queue/{compared.pk}/").content.decode()
    assert "Shadow comparison" in page and "verdict-partial" in page


def test_outsiders_get_404_everywhere(as_outsider: Client, version: DatasetVersion,
                                      reviewer) -> None:
    job = services.export_start(actor=reviewer, version=version, format="jsonl",
                                enqueue=False)
    services.export_run(job_id=job.pk)
    for url in [*PAGES[1:4], f"/datasets/{version.dataset_id}/",
                f"/exports/{job.pk}/progress/", f"/exports/{job.pk}/download/"]:
        assert as_outsider.get(url).status_code == 404, url
    for url in ["/shadow/support-triage/outcomes/new/",
                f"/datasets/{version.dataset_id}/versions/",
                f"/datasets/versions/{version.pk}/export/"]:
        assert as_outsider.post(url, {"case_ref": "x", "tool": "y", "format": "csv"}
                                ).status_code == 404, url
    response = as_outsider.post("/datasets/new/", {"workflow": "support-triage", "name": "x"})
    assert response.status_code == 400 and not Dataset.objects.filter(name="x").exists()
    assert HumanOutcome.objects.count() == 1


@pytest.mark.parametrize("url", ["/datasets/new/", "/datasets/1/versions/",
                                 "/datasets/versions/1/export/"])
def test_post_only_endpoints_refuse_get_with_405(as_reviewer: Client, url: str) -> None:
    assert as_reviewer.get(url).status_code == 405


@pytest.mark.parametrize("url", ["/shadow/", "/datasets/", "/exports/1/progress/",
                                 "/exports/1/download/", "/datasets/1/"])
def test_read_only_pages_refuse_post_with_405(as_reviewer: Client, url: str) -> None:
    assert as_reviewer.post(url).status_code == 405


def test_manual_outcome_form_records_and_redirects(as_reviewer: Client, agent,
                                                   shadow_workflow) -> None:
    shadow_proposal(agent, shadow_workflow, case_ref="T-8")
    response = as_reviewer.post("/shadow/support-triage/outcomes/new/", {
        "case_ref": "T-8", "tool": "jira.create_ticket",
        "arguments": '{"project": "SUP", "summary": "Printer on fire"}'})
    assert response.status_code == 302
    outcome = HumanOutcome.objects.get()
    assert outcome.source == "manual" and outcome.comparisons.get().verdict == "agree"


def test_manual_outcome_form_bad_json_is_400_and_writes_nothing(as_reviewer: Client,
                                                               shadow_workflow) -> None:
    response = as_reviewer.post("/shadow/support-triage/outcomes/new/", {
        "case_ref": "", "tool": "jira.create_ticket", "arguments": "{oops"})
    assert response.status_code == 400
    assert "not valid JSON" in response.content.decode()
    assert not HumanOutcome.objects.exists()


def test_csv_upload_page_imports_a_good_file(as_reviewer: Client, shadow_workflow) -> None:
    file = SimpleUploadedFile("o.csv", b"case_ref,tool\nT-1,jira.create_ticket\n",
                              content_type="text/csv")
    response = as_reviewer.post("/shadow/support-triage/outcomes/upload/", {"file": file})
    assert response.status_code == 302 and HumanOutcome.objects.get().source == "csv"


def test_csv_upload_bad_row_is_400_with_row_and_column(as_reviewer: Client,
                                                       shadow_workflow) -> None:
    file = SimpleUploadedFile(
        "o.csv", b'case_ref,tool,arguments\nT-1,jira.create_ticket,\nT-2,x,"[1]"\n')
    response = as_reviewer.post("/shadow/support-triage/outcomes/upload/", {"file": file})
    assert response.status_code == 400
    assert "row 3, arguments" in response.content.decode()
    assert not HumanOutcome.objects.exists()
    assert as_reviewer.post("/shadow/support-triage/outcomes/upload/").status_code == 400


def test_dataset_pages_create_cut_and_export(client: Client, manager, compared,
                                             monkeypatch) -> None:
    client.force_login(manager)
    as_manager = client
    monkeypatch.setattr(services, "_publish_export", lambda job_id: None)
    response = as_manager.post("/datasets/new/", {"workflow": "support-triage",
                                                   "name": "shadow evals"})
    dataset = Dataset.objects.get(name="shadow evals")
    assert response.status_code == 302
    assert as_manager.post(f"/datasets/{dataset.pk}/versions/",
                            {"source": "bogus"}).status_code == 400
    assert as_manager.post(f"/datasets/{dataset.pk}/versions/",
                            {"source": "shadow", "is_good": ""}).status_code == 302
    version = dataset.versions.get()
    assert version.example_count == 1
    page = as_manager.get(f"/datasets/{dataset.pk}/").content.decode()
    assert "v1 · 1 examples" in page
    response = as_manager.post(f"/datasets/versions/{version.pk}/export/",
                                {"format": "jsonl"}, HTTP_HX_REQUEST="true")
    job = ExportJob.objects.get()
    body = response.content.decode()
    assert response.status_code == 200 and 'hx-trigger="every 1s"' in body
    assert f'hx-get="/exports/{job.pk}/progress/"' in body and "<progress" in body
    assert as_manager.post(f"/datasets/versions/{version.pk}/export/",
                            {"format": "xml"}).status_code == 400


def test_reviewers_may_not_create_datasets(as_reviewer: Client, compared) -> None:
    response = as_reviewer.post("/datasets/new/", {"workflow": "support-triage",
                                                   "name": "not mine"})
    assert response.status_code == 403
    assert not Dataset.objects.filter(name="not mine").exists()


def test_progress_partial_stops_polling_when_done_and_download_streams(
    as_reviewer: Client, reviewer, version: DatasetVersion
) -> None:
    job = services.export_start(actor=reviewer, version=version, format="csv", enqueue=False)
    running = as_reviewer.get(f"/exports/{job.pk}/progress/").content.decode()
    assert 'hx-trigger="every 1s"' in running and "Download" not in running
    assert as_reviewer.get(f"/exports/{job.pk}/download/").status_code == 404
    services.export_run(job_id=job.pk)
    done = as_reviewer.get(f"/exports/{job.pk}/progress/").content.decode()
    assert "hx-trigger" not in done and 'value="1"' in done and "1 / 1 rows" in done
    response = as_reviewer.get(f"/exports/{job.pk}/download/")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Disposition"].startswith("attachment")
    content = b"".join(response.streaming_content).decode()
    assert content.splitlines()[0].startswith("id,proposal,source")
