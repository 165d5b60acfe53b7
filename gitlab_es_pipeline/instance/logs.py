"""Run logs as JSON lines, for log shippers: one object per event, with run and repository.

dagster.yaml hands this formatter to a handler of Dagster's run loggers (`python_logs`), so
every message of a run at INFO and above — the pipeline's own (progress, modes, failures) and
Dagster's — reaches stderr as one line that a machine can read without parsing prose.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from gitlab_es_pipeline.defs.partitions import PARTITION_TAG


class JsonLinesFormatter(logging.Formatter):
    """time, level, run_id, job, step, repository (the run's partition), event, message."""

    def format(self, record: logging.LogRecord) -> str:
        meta: dict[str, Any] = getattr(record, "dagster_meta", None) or {}
        tags = meta.get("job_tags") or {}
        event = meta.get("dagster_event")
        line = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "run_id": meta.get("run_id"),
            "job": meta.get("job_name"),
            "step": meta.get("step_key"),
            "repository": tags.get(PARTITION_TAG),
            "event": getattr(event, "event_type_value", None),
            "message": meta.get("orig_message") or record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps({k: v for k, v in line.items() if v is not None}, ensure_ascii=False)
