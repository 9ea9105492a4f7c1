"""JSON-lines logs for the project's loggers and Dagster's run logs (one object per line, no PHI).

Wired through dagster.yaml (`python_logs.dagster_handler_config`, Dagster "Python logging" docs): every
`context.log` call and every record of the managed logger `dicom_backup_dagster` inside a run reaches
`JsonLinesHandler`, which writes:

    {"ts": "2026-11-23T01:30:02.120Z", "level": "INFO", "logger": "dicom_backup_dagster.defs.dimse",
     "message": "...", "run_id": "...", "job": "ARIA_backup", "source": "ARIA", "partition": "2026-11-22",
     "step": "ARIA__archived", "peer_ae": "ARIA_SIM", "operation": "C-MOVE", "status": "success",
     "duration_seconds": 12.3, "count": 40}

The fields are an allow-list: run ID, job, source and partition come from the run (Dagster's
`dagster_meta`: run ID, job name and the run tags `dicom_backup/source` and `dagster/partition`); peer AE,
operation, status, duration and count from `extra={...}` of the log call. Nothing else of the record (its
arguments, the Dagster event, other run tags) is written, so identifiers a data set might carry cannot
leak through extra fields; messages themselves carry counts, AE titles and UIDs only, never patient
names, IDs or birth dates. Exceptions are reduced to their class name: DIMSE and pydicom exception texts
can echo data set contents (docs/decisions/monitoring.md). Dagster's ERROR line for a failed step (and its
line for a step up for retry) carries the step's dagster.Failure description, which the backup steps word
themselves (peer, operation, DICOM status and meaning, advice), so the log says why without the UI.

The file is `$DICOM_BACKUP_LOG_FILE`, else `$DAGSTER_HOME/logs/dicom_backup.jsonl` (without DAGSTER_HOME:
under the temporary directory). WatchedFileHandler
reopens it after logrotate moves it; every process appends whole lines (O_APPEND).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOG_FILE_ENV_VAR = "DICOM_BACKUP_LOG_FILE"
SOURCE_TAG = "dicom_backup/source"  # on every run of a source's backup and sweep jobs (defs/keys.py)
PARTITION_TAG = "dagster/partition"

# extra={...} keys copied into the line, with the JSON type they must have.
EXTRA_FIELDS: dict[str, type | tuple[type, ...]] = {
    "source": str,
    "partition": str,
    "peer_ae": str,
    "operation": str,
    "status": str,
    "duration_seconds": (int, float),
    "count": int,
    "dimse_status": str,
    "event": str,
}


def default_log_file() -> Path:
    explicit = os.environ.get(LOG_FILE_ENV_VAR)
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("DAGSTER_HOME")
    if not home:  # an instance built from a config file in code (tests, scripts): not the working dir
        return Path(tempfile.gettempdir()) / "dicom_backup_dagster" / "logs" / "dicom_backup.jsonl"
    return Path(home).expanduser() / "logs" / "dicom_backup.jsonl"


class JsonFormatter(logging.Formatter):
    """Formats a LogRecord as one JSON object with the allow-listed fields above."""

    def format(self, record: logging.LogRecord) -> str:
        meta: dict[str, Any] = getattr(record, "dagster_meta", None) or {}
        message = meta.get("orig_message")
        if not isinstance(message, str):
            message = record.getMessage()
        reason = _failure_reason(meta.get("dagster_event"))
        if reason:
            message = f"{message} {reason}"
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        tags = meta.get("job_tags") or {}
        run_fields = {
            "run_id": meta.get("run_id"),
            "job": meta.get("job_name"),
            "source": tags.get(SOURCE_TAG),
            "partition": tags.get(PARTITION_TAG),
            "step": meta.get("step_key"),
        }
        line.update({k: v for k, v in run_fields.items() if isinstance(v, str) and v})
        for key, kind in EXTRA_FIELDS.items():
            value = getattr(record, key, None)
            if value is not None and isinstance(value, kind) and not isinstance(value, bool):
                line[key] = round(value, 6) if isinstance(value, float) else value
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = record.exc_info[0].__name__
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def _failure_reason(event: Any) -> str | None:
    """Why a step failed or will be retried, for Dagster's own ERROR line ("Execution of step ... failed."):
    the description of the step's dagster.Failure (the project's bodies word it themselves: source, peer
    AE@host:port, operation, DICOM status and meaning, advice; never data set content), else only the
    exception's class name (its text may echo a data set)."""
    data = getattr(event, "event_specific_data", None)
    if data is None or not hasattr(data, "error"):
        return None
    user = getattr(data, "user_failure_data", None)
    description = getattr(user, "description", None)
    if isinstance(description, str) and description:
        return description
    error = data.error
    while error is not None and error.cause is not None and error.cls_name in _WRAPPERS:
        error = error.cause
    if error is None or not error.cls_name:
        return None
    if error.cls_name == "Failure":  # a retried Failure: its message is its description
        return error.message.split(": ", 1)[-1].strip()
    return f"({error.cls_name})"


# Dagster's wrappers around the exception a step raised (retries, framework errors).
_WRAPPERS = frozenset({"RetryRequestedFromPolicy", "DagsterExecutionStepExecutionError"})


class JsonLinesHandler(logging.handlers.WatchedFileHandler):
    """Appends JsonFormatter lines to `filename` (default: default_log_file()), creating its folder."""

    def __init__(self, filename: str | None = None, level: int | str = logging.NOTSET) -> None:
        path = Path(filename).expanduser() if filename else default_log_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(str(path), encoding="utf-8", delay=True)
        self.setLevel(level)
        self.setFormatter(JsonFormatter())
