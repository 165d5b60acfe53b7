"""Where a dagster.yaml copied before 2026-12-05 looks for the run logs' JSON lines formatter
(`JsonLogFormatter`, or for a few days `JsonLinesFormatter` here): the same class, now
`gitlab_es_pipeline.instance.logs.JsonLinesFormatter`. Kept so that such an instance still
loads."""

from gitlab_es_pipeline.instance.logs import JsonLinesFormatter
from gitlab_es_pipeline.instance.logs import JsonLinesFormatter as JsonLogFormatter

__all__ = ["JsonLinesFormatter", "JsonLogFormatter"]
