"""Dataset versions are frozen; exports stream in three formats, redact PII, report
progress and keep memory flat."""

from __future__ import annotations

import csv
import gc
import json
import tracemalloc
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection

from agents.audit import SYSTEM
from agents.models import AuditEvent
from agents.policy import DEFAULT_POLICY_YAML
from approvals.models import Proposal
from shadow import services
from shadow.models import Dataset, ExportJob, LabeledExample
from shadow.services import review_approve, review_reject
from tests.factories import open_run, publish, submit
from tests.shadow.conftest import shadow_proposal

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _export_dir(settings, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    settings.GATEHOUSE_EXPORT_DIR = tmp_path / "exports"
    return settings.GATEHOUSE_EXPORT_DIR


@pytest.fixture
def dataset(manager, workflow) -> Dataset:  # type: ignore[no-untyped-def]
    return services.dataset_create(actor=manager, workflow=workflow, name="triage evals")


def labeled_mix(manager, agent, workflow) -> dict[str, LabeledExample]:  # type: ignore[no-untyped-def]
    """One example of each source: approval, edit, rejection (level 2) and shadow."""
    approved = submit(open_run(agent, workflow, "T-1"), rationale="mail anna@example.com")
    review_approve(actor=manager, proposal=approved, expected_version=approved.version)
    edited = submit(open_run(agent, workflow, "T-2"))
    review_approve(actor=manager, proposal=edited, expected_version=edited.version,
                   edited_arguments={"project": "SUP", "summary": "Call +49 30 1234567"},
                   failure_category="wrong_params")
    rejected = submit(open_run(agent, workflow, "T-3"))
    review_reject(actor=manager, proposal=rejected, expected_version=rejected.version,
                  reason_code="tone", note="too curt")
    workflow.autonomy_level = 0
    workflow.save(update_fields=["autonomy_level"])
    shadowed = shadow_proposal(agent, workflow, case_ref="T-4")
    services.outcome_record(actor=manager, workflow=workflow, case_ref="T-4",
                            tool_name="jira.create_ticket",
                            arguments={"project": "SUP", "summary": "Printer on fire"})
    return {e.source: e for e in LabeledExample.objects.filter(
        proposal__in=[approved, edited, rejected, shadowed])}


def run_export(manager, version, fmt: str, **kwargs) -> ExportJob:  # type: ignore[no-untyped-def]
    job = services.export_start(actor=manager, version=version, format=fmt, enqueue=False)
    return services.export_run(job_id=job.pk, **kwargs)


def test_a_version_is_frozen_and_later_examples_do_not_change_it(
    manager, agent, workflow, dataset
) -> None:
    labeled_mix(manager, agent, workflow)
    v1 = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    assert (v1.number, v1.example_count, v1.examples.count()) == (1, 4, 4)
    shadow_proposal(agent, workflow, case_ref="T-9")
    services.outcome_record(actor=manager, workflow=workflow, case_ref="T-9",
                            tool_name="confluence.search")
    v1.refresh_from_db()
    assert v1.examples.count() == 4 and v1.example_count == 4
    v2 = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    assert (v2.number, v2.example_count) == (2, 5)
    job = run_export(manager, v1, "jsonl")
    assert len(Path(job.file_path).read_text().splitlines()) == 4
    assert AuditEvent.objects.filter(action="dataset.version_create").count() == 2


def test_version_filters_select_examples(manager, agent, workflow, dataset) -> None:
    labeled_mix(manager, agent, workflow)
    cut = lambda **f: services.dataset_version_create(  # noqa: E731
        actor=manager, dataset=dataset, filters=f).example_count
    assert cut(source="shadow") == 1
    assert cut(is_good="false") == 2
    assert cut(is_good="true") == 2
    assert cut(failure_category="tone") == 1
    assert cut(tool="jira.create_ticket", agent_version="v1") == 4
    assert cut(agent_version="v2") == 0
    assert cut(date_from="2000-01-01", date_to="2999-01-01") == 4
    assert cut(date_to="2000-01-01") == 0
    v = dataset.versions.get(number=1)
    assert v.filters == {"source": "shadow"}


@pytest.mark.parametrize("filters, field", [
    ({"source": "dream"}, "source"), ({"is_good": "maybe"}, "is_good"),
    ({"failure_category": "x"}, "failure_category"), ({"date_from": "yesterday"}, "date_from"),
    ({"date_from": "2026-02-01", "date_to": "2026-01-01"}, "date_to"),
])
def test_bad_filters_name_the_field_and_cut_nothing(manager, dataset, filters: dict,
                                                    field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        services.dataset_version_create(actor=manager, dataset=dataset, filters=filters)
    assert field in exc.value.message_dict and not dataset.versions.exists()


def test_dataset_names_are_unique_per_workflow(manager, workflow, dataset) -> None:
    with pytest.raises(ValidationError) as exc:
        services.dataset_create(actor=manager, workflow=workflow, name="triage evals")
    assert "name" in exc.value.message_dict


def test_jsonl_export_parses_back_and_redacts_pii(manager, agent, workflow, dataset) -> None:
    labeled_mix(manager, agent, workflow)
    version = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    job = run_export(manager, version, "jsonl")
    assert job.status == "done" and job.rows_done == job.rows_total == 4
    rows = [json.loads(line) for line in Path(job.file_path).read_text().splitlines()]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    by_source = {r["source"]: r for r in rows}
    assert set(by_source) == {"approval", "edit", "rejection", "shadow"}
    assert by_source["rejection"]["human_output"] is None
    assert by_source["rejection"]["failure_category"] == "tone"
    assert by_source["edit"]["human_output"]["arguments"]["summary"] == "Call [phone redacted]"
    assert by_source["approval"]["context"]["rationale"] == "mail [email redacted]"
    assert "anna@example.com" not in Path(job.file_path).read_text()


def test_pii_is_kept_when_the_policy_does_not_redact(manager, agent, workflow,
                                                     dataset) -> None:
    publish(workflow, DEFAULT_POLICY_YAML.replace("pii_redaction: true", "pii_redaction: false"))
    p = submit(open_run(agent, workflow, "T-1"), rationale="mail anna@example.com")
    review_approve(actor=manager, proposal=p, expected_version=p.version)
    version = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    text = Path(run_export(manager, version, "jsonl").file_path).read_text()
    assert "anna@example.com" in text


def test_csv_export_parses_back(manager, agent, workflow, dataset) -> None:
    labeled_mix(manager, agent, workflow)
    Proposal.objects.filter(run__case_ref="T-3").update(review_note='quote " and, comma\nline')
    version = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    job = run_export(manager, version, "csv")
    with Path(job.file_path).open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and list(rows[0]) == services.CSV_HEADER
    edit = next(r for r in rows if r["source"] == "edit")
    assert json.loads(edit["human_output"])["arguments"]["summary"] == "Call [phone redacted]"
    assert edit["is_good"] == "false" and edit["failure_category"] == "wrong_params"
    rejection = next(r for r in rows if r["source"] == "rejection")
    assert rejection["note"] == "too curt" and json.loads(rejection["human_output"]) is None


def test_openai_export_has_chat_messages_for_examples_with_a_human_output(
    manager, agent, workflow, dataset
) -> None:
    labeled_mix(manager, agent, workflow)
    version = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    job = run_export(manager, version, "openai")
    lines = [json.loads(line) for line in Path(job.file_path).read_text().splitlines()]
    assert len(lines) == 3 == job.rows_total == job.rows_done  # the rejection has none
    for line in lines:
        assert [m["role"] for m in line["messages"]] == ["system", "user", "assistant"]
        assert line["messages"][1]["content"].startswith("Case: T-")
        action = json.loads(line["messages"][2]["content"])
        assert action["tool"] == "jira.create_ticket" and "arguments" in action
    edited = next(x for x in lines if "T-2" in x["messages"][1]["content"])
    assert json.loads(edited["messages"][2]["content"])["arguments"]["summary"] == \
        "Call [phone redacted]"


def test_text_only_human_output_is_the_assistant_text() -> None:
    assert services._assistant_content({"tool": "slack.send_message", "arguments": {},
                                        "text": "Hello"}) == "Hello"


def test_progress_is_updated_every_batch(manager, agent, workflow, dataset) -> None:
    labeled_mix(manager, agent, workflow)
    version = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    job = services.export_start(actor=manager, version=version, format="jsonl",
                                enqueue=False)
    seen = []

    def progress(done: int, total: int) -> None:
        stored = ExportJob.objects.get(pk=job.pk)
        seen.append((done, total, stored.rows_done, stored.status))

    services.export_run(job_id=job.pk, batch_size=3, on_progress=progress)
    assert seen == [(3, 4, 3, "running"), (4, 4, 4, "running")]
    job.refresh_from_db()
    assert job.status == "done" and job.finished_at and not Path(job.file_path +
                                                                 ".part").exists()
    assert {"export.start", "export.run", "export.done"} <= set(
        AuditEvent.objects.values_list("action", flat=True))


def test_an_export_runs_once_even_if_redelivered(manager, agent, workflow, dataset) -> None:
    labeled_mix(manager, agent, workflow)
    version = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    job = run_export(manager, version, "jsonl")
    again = services.export_run(job_id=job.pk)
    assert again.status == "done" and AuditEvent.objects.filter(action="export.run").count() == 1


def test_export_start_enqueues_after_commit(manager, dataset, monkeypatch,
                                           django_capture_on_commit_callbacks) -> None:
    version = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    sent = []
    monkeypatch.setattr(services, "_publish_export", sent.append)
    with django_capture_on_commit_callbacks(execute=True):
        job = services.export_start(actor=manager, version=version, format="csv")
        assert sent == []
    assert sent == [job.pk] and job.status == "queued"
    with pytest.raises(ValidationError):
        services.export_start(actor=manager, version=version, format="xml")


def test_export_task_is_thin(manager, agent, workflow, dataset) -> None:
    from shadow.tasks import export_dataset

    labeled_mix(manager, agent, workflow)
    version = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    job = services.export_start(actor=manager, version=version, format="csv", enqueue=False)
    assert export_dataset.run(job.pk) == "done"


def test_export_dataset_command_uses_the_service(manager, agent, workflow, dataset,
                                                 tmp_path: Path, capsys) -> None:
    labeled_mix(manager, agent, workflow)
    services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    out = tmp_path / "out.jsonl"
    call_command("export_dataset", "triage evals", "1", "--format", "openai", "--out", str(out))
    assert len(out.read_text().splitlines()) == 3
    assert "3 rows" in capsys.readouterr().out
    assert ExportJob.objects.get().status == "done"


def _bulk_examples(proposal: Proposal, n: int, agent_version: str) -> None:
    """n edit examples in one INSERT ... SELECT (bulk_create of 20k JSON rows takes 10 s)."""
    with connection.cursor() as cur:
        cur.execute(
            f"""INSERT INTO {LabeledExample._meta.db_table} (workflow_id, proposal_id, source,
                agent_version, tool_name, context, agent_output, human_output, is_good,
                failure_category, note, created_at)
            SELECT %s, %s, 'edit', %s, 'jira.create_ticket',
                jsonb_build_object('case_ref', 'T-' || g, 'rationale',
                    'customer reports the printer on floor 3 is on fire again, ticket ' || g),
                %s::jsonb,
                jsonb_build_object('tool', 'jira.create_ticket', 'text', '', 'arguments',
                    jsonb_build_object('project', 'SUP', 'summary', 'Printer on fire #' || g)),
                false, 'wrong_params', '', now()
            FROM generate_series(1, %s) g""",
            [proposal.workflow_id, proposal.pk, agent_version,
             json.dumps({"tool": "jira.create_ticket", "text": "",
                         "arguments": {"project": "SUP", "summary": "Printer on fire"}}), n])


def _peak(manager, version, fmt: str) -> int:  # type: ignore[no-untyped-def]
    gc.collect()
    tracemalloc.start()
    try:
        run_export(manager, version, fmt)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_export_memory_is_flat_in_the_number_of_rows(manager, agent, workflow,
                                                     dataset) -> None:
    # Redaction costs time, not memory: leave it out to keep the test quick.
    publish(workflow, DEFAULT_POLICY_YAML.replace("pii_redaction: true", "pii_redaction: false"))
    proposal = submit(open_run(agent, workflow))
    _bulk_examples(proposal, 2_000, "small")
    _bulk_examples(proposal, 20_000, "big")
    small = services.dataset_version_create(actor=manager, dataset=dataset,
                                            filters={"agent_version": "small"})
    big = services.dataset_version_create(actor=manager, dataset=dataset,
                                          filters={"agent_version": "big"})
    assert (small.example_count, big.example_count) == (2_000, 20_000)
    run_export(manager, small, "jsonl")  # warm-up: imports, caches
    small_peak = _peak(manager, small, "jsonl")
    big_peak = _peak(manager, big, "jsonl")
    print(f"export peak: 2k {small_peak} B, 20k {big_peak} B")
    assert big_peak <= 1.5 * small_peak, (small_peak, big_peak)
    assert ExportJob.objects.filter(version=big).get().rows_done == 20_000
    assert SYSTEM  # the exporter audits as the system actor


def test_csv_cells_that_look_like_formulas_are_neutralised(manager, agent, workflow,
                                                          dataset) -> None:
    p = submit(open_run(agent, workflow), agent_version="=HYPERLINK(\"http://x\")")
    review_approve(actor=manager, proposal=p, expected_version=p.version)
    version = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    job = run_export(manager, version, "csv")
    with Path(job.file_path).open(newline="", encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["agent_version"] == "'=HYPERLINK(\"http://x\")"


def test_a_failed_export_is_recorded_and_leaves_no_file(manager, agent, workflow, dataset,
                                                        tmp_path: Path) -> None:
    labeled_mix(manager, agent, workflow)
    version = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    job = services.export_start(actor=manager, version=version, format="jsonl",
                                enqueue=False)
    with pytest.raises(OSError):
        services.export_run(job_id=job.pk, out_path=blocker / "out.jsonl")
    job.refresh_from_db()
    assert job.status == "failed" and job.finished_at and "Error" in job.error
    assert AuditEvent.objects.filter(action="export.failed").count() == 1


def test_a_write_error_mid_export_removes_the_partial_file(manager, agent, workflow,
                                                          dataset, monkeypatch,
                                                          tmp_path: Path) -> None:
    labeled_mix(manager, agent, workflow)
    version = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    job = services.export_start(actor=manager, version=version, format="jsonl",
                                enqueue=False)

    def boom(done: int, total: int) -> None:
        raise RuntimeError("disk full")

    out = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        services.export_run(job_id=job.pk, out_path=out, batch_size=2, on_progress=boom)
    job.refresh_from_db()
    assert (job.status, job.rows_done) == ("failed", 2) and "disk full" in job.error
    assert not out.exists() and not out.with_name("out.jsonl.part").exists()


def test_only_managers_curate_datasets(reviewer, manager, workflow) -> None:  # type: ignore[no-untyped-def]
    from django.core.exceptions import PermissionDenied

    with pytest.raises(PermissionDenied):
        services.dataset_create(actor=reviewer, workflow=workflow, name="mine")
    dataset = services.dataset_create(actor=manager, workflow=workflow, name="ours")
    with pytest.raises(PermissionDenied):
        services.dataset_version_create(actor=reviewer, dataset=dataset, filters={})
    assert not dataset.versions.exists()


def test_a_stale_running_export_is_requeued_and_republished(manager, agent, workflow, dataset,
                                                            monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from django.utils import timezone

    published: list[int] = []
    monkeypatch.setattr(services, "_publish_export", published.append)
    labeled_mix(manager, agent, workflow)
    version = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    job = services.export_start(actor=manager, version=version, format="jsonl", enqueue=False)
    # A worker claimed it, then died: RUNNING, attempt 1, heartbeat long ago.
    ExportJob.objects.filter(pk=job.pk).update(
        status="running", attempt=1, heartbeat_at=timezone.now() - timedelta(hours=1))
    assert services.exports_recover() == 1
    job.refresh_from_db()
    assert job.status == "queued" and published == [job.pk]
    assert AuditEvent.objects.filter(action="export.requeue", object_id=str(job.pk)).exists()
    finished = services.export_run(job_id=job.pk)
    assert finished.status == "done" and finished.attempt == 2
    assert len(Path(finished.file_path).read_text().splitlines()) == finished.rows_done


def test_a_superseded_export_worker_stops_and_leaves_no_file(manager, agent, workflow, dataset,
                                                             _export_dir: Path) -> None:  # type: ignore[no-untyped-def]
    labeled_mix(manager, agent, workflow)
    version = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    job = services.export_start(actor=manager, version=version, format="jsonl", enqueue=False)

    def requeue_midway(done: int, total: int) -> None:
        if done == 1:  # the recoverer decides this attempt is dead
            assert services.export_requeue(job_id=job.pk, attempt=1)

    result = services.export_run(job_id=job.pk, batch_size=1, on_progress=requeue_midway)
    assert result.status == "queued" and result.attempt == 1
    assert not list(_export_dir.glob("*"))  # neither the file nor its .part


def test_an_old_queued_export_is_published_again(manager, agent, workflow, dataset,
                                                 monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from django.utils import timezone

    published: list[int] = []
    monkeypatch.setattr(services, "_publish_export", published.append)
    version = services.dataset_version_create(actor=manager, dataset=dataset, filters={})
    job = services.export_start(actor=manager, version=version, format="csv", enqueue=False)
    assert services.exports_recover() == 0  # still within the grace
    ExportJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(hours=1))
    assert services.exports_recover() == 1 and published == [job.pk]
