"""Dead letters: the documents Elasticsearch refused for good, kept where people can look.

A run with dead letters is not recorded as indexed, so the next run of the repository
rebuilds it in full and sends them again (a mapping fixed in between lets them in); the
table is replaced by each run's own and removed by a run without any.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from gitlab_es_pipeline.core.bulk import ItemFailure
from gitlab_es_pipeline.core.documents import RepositorySnapshot

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("repository_name", pa.string()),
        pa.field("project_id", pa.int64()),
        pa.field("commit_sha", pa.string()),
        pa.field("file_path", pa.string()),  # null for a refused delete
        pa.field("line_number", pa.int32()),
        pa.field("doc_id", pa.string()),
        pa.field("status", pa.int32()),
        pa.field("error", pa.string()),
    ]
)


def dead_letter_table(snapshot: RepositorySnapshot, failures: Sequence[ItemFailure]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "repository_name": snapshot.repository_name,
                "project_id": snapshot.project_id,
                "commit_sha": snapshot.commit_sha,
                "file_path": f.origin.file_path,
                "line_number": f.origin.line_number,
                "doc_id": f.origin.doc_id,
                "status": f.status,
                "error": f.error,
            }
            for f in failures
        ],
        schema=DEAD_LETTER_SCHEMA,
    )
