"""The record of import runs: what each `cityos import gtfs|gtfs-rt|csv`, `cityos demo` and the
server's own demo load did (its source, kind, tenant, when it started and finished, how much it
stored and rejected, and the first MAX_REJECTS reasons), kept in the store (import_runs_base.py)
for the operations page and GET /cityos/v1/imports (ingest/runs_http.py).

A run is saved when it starts (status "running": a run that never finishes shows as such) and when
it ends. Where it is saved follows the sink the import writes through: into the store it writes
(StoreSink), or to the broker it posts to (HttpSink: PUT /cityos/v1/imports/{id}, which needs an
admin's key). A run that cannot be recorded never fails its import: a warning says why.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from typing import Any

import httpx
import orjson

from cityos.entities.values import now as utc_now
from cityos.errors import DatabaseBusy
from cityos.ingest.sink import HttpSink, StoreSink
from cityos.redact import redact_uri
from cityos.store.import_runs_base import ImportRun

log = logging.getLogger("cityos.ingest")
MAX_REJECTS = 20  # reasons kept per run (all are counted)
MAX_TEXT = 500  # characters of a reason, a source or a message
KINDS = frozenset({"gtfs", "gtfs-rt", "csv", "demo", "sdm", "other"})
STATUSES = frozenset({"running", "finished", "failed"})
RUNS_PATH = "/cityos/v1/imports"


def new_run(kind: str, source: str, tenant: str = "") -> ImportRun:
    return ImportRun(uuid.uuid4().hex, kind, redact_uri(source)[:MAX_TEXT], tenant, utc_now())


def finish(
    run: ImportRun,
    *,
    stored: int,
    rejects: Iterable[tuple[str, str]] = (),
    rejected: int | None = None,
    failed: bool = False,
    message: str = "",
) -> ImportRun:
    """The run, ended: `rejects` are (where, reason) pairs (the first MAX_REJECTS are kept),
    `rejected` their number when it is more than those given."""
    kept = [{"where": str(w)[:MAX_TEXT], "reason": str(r)[:MAX_TEXT]} for w, r in rejects]
    run.stored = stored
    run.rejected = len(kept) if rejected is None else max(rejected, len(kept))
    run.rejects = kept[:MAX_REJECTS]
    run.status = "failed" if failed else "finished"
    run.message = message[:MAX_TEXT]
    run.finished_at = utc_now()
    return run


def add_round(run: ImportRun, *, stored: int, rejects: Iterable[tuple[str, str]] = ()) -> ImportRun:
    """A polled import (gtfs-rt --interval): one more round counted into the same run, still running."""
    kept = [{"where": str(w)[:MAX_TEXT], "reason": str(r)[:MAX_TEXT]} for w, r in rejects]
    run.stored += stored
    run.rejected += len(kept)
    run.rejects = (run.rejects + kept)[:MAX_REJECTS]
    return run


def demo_finished(run: ImportRun, report: Any) -> ImportRun:
    """The run of a demo load (ingest/demo.py DemoReport): its entities and history instances, counted
    together as stored; no message (the console shows a run's message as written, in English)."""
    stored = sum(report.counts.values()) + sum(report.gtfs.values()) + report.history_instances
    failures = [split_failure(f) for f in report.failed]
    return finish(run, stored=stored, rejects=failures)


def split_failure(text: str) -> tuple[str, str]:
    """An importer's "<entity id>: <reason>" as (where, reason)."""
    where, sep, reason = text.partition(": ")
    return (where, reason) if sep and " " not in where else ("", text)


def parse_run(data: Any, run_id: str) -> ImportRun:
    """A run as a client sends it (PUT /cityos/v1/imports/{id}); ValueError says what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("a run is a JSON object")
    if data.get("id", run_id) != run_id or not (8 <= len(run_id) <= 64) or not run_id.isalnum():
        raise ValueError("the run id (8-64 letters and digits) must be the one in the path")
    texts = {"kind": True, "source": True, "tenant": False, "started_at": True, "message": False}
    for name, required in texts.items():
        value = data.get(name, None if required else "")
        if not isinstance(value, str) or (required and not value) or len(value) > MAX_TEXT:
            raise ValueError(
                f"{name} must be a string of at most {MAX_TEXT} characters" + (", given" if required else "")
            )
    if data["kind"] not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(sorted(KINDS))}")
    if data.get("status", "running") not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(sorted(STATUSES))}")
    for name in ("stored", "rejected"):
        value = data.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a count")
    finished = data.get("finished_at")
    if finished is not None and (not isinstance(finished, str) or len(finished) > 40):
        raise ValueError("finished_at must be a time or null")
    rejects = data.get("rejects", [])
    if not isinstance(rejects, list) or len(rejects) > MAX_REJECTS:
        raise ValueError(f"rejects must be a list of at most {MAX_REJECTS}")
    for item in rejects:
        if not isinstance(item, dict) or set(item) - {"where", "reason"}:
            raise ValueError('each reject is {"where": ..., "reason": ...}')
        if not all(isinstance(item.get(k, ""), str) and len(item.get(k, "")) <= MAX_TEXT for k in ("where", "reason")):
            raise ValueError(f"a reject's where and reason are strings of at most {MAX_TEXT} characters")
    return ImportRun(
        id=run_id,
        kind=data["kind"],
        source=redact_uri(data["source"]),
        tenant=data.get("tenant", ""),
        started_at=data["started_at"],
        finished_at=finished,
        status=data.get("status", "running"),
        stored=data.get("stored", 0),
        rejected=data.get("rejected", 0),
        rejects=[{"where": i.get("where", ""), "reason": i.get("reason", "")} for i in rejects],
        message=data.get("message", ""),
    )


async def save(sink: object, run: ImportRun) -> None:
    """Record the run where the sink writes (module docstring); raises only DatabaseBusy: the
    import that follows could not write either, and the command says so in one line."""
    try:
        if isinstance(sink, StoreSink):
            await sink.store.save_import_run(run)
        elif isinstance(sink, HttpSink):
            answer = await sink.client.put(
                f"{sink.base_url}{RUNS_PATH}/{run.id}",
                content=orjson.dumps(run.as_dict()),
                headers={"Content-Type": "application/json"},
            )
            if answer.status_code not in (200, 201, 204):
                log.warning("the broker did not record the import run: HTTP %s", answer.status_code)
    except DatabaseBusy:
        raise
    except (httpx.HTTPError, OSError) as exc:
        log.warning("the import run could not be recorded: %s", exc)
    except Exception:  # the record is a convenience: the import itself goes on
        log.exception("the import run could not be recorded")
