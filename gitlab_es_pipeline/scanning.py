"""One pass over a repository at a commit: the tree gives the manifest, the archive the lines."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from gitlab_es_pipeline.clients.gitlab import GitLabError, GitLabSource
from gitlab_es_pipeline.core.archive import ArchiveError, ChunkStream, iter_archive_files
from gitlab_es_pipeline.core.decoding import decode
from gitlab_es_pipeline.core.documents import RepositorySnapshot, file_documents
from gitlab_es_pipeline.core.filtering import SkipReason, content_skip_reason, tree_skip_reason
from gitlab_es_pipeline.core.lines import count_lines
from gitlab_es_pipeline.core.manifest import ManifestEntry


class RepositoryError(Exception):
    """Indexing one repository failed; the message names it (and the file, if one is to blame)."""

    def __init__(self, repository: str, problem: str, path: str | None = None) -> None:
        where = f"{repository}: {path}" if path else repository
        super().__init__(f"{where}: {problem}")
        self.repository = repository
        self.path = path


@dataclass
class ScanSettings:
    max_file_bytes: int
    max_line_chars: int
    excluded: re.Pattern[str] | None
    archive_format: str = "tar.gz"


@dataclass
class ScanStats:
    files_from_archive: int = 0
    files_fetched_alone: int = 0
    archive_bytes: int = 0
    lines: int = 0
    seconds: float = 0.0


class RepositoryScan:
    """Builds the manifest entries and the line documents of one snapshot.

    The archive is read once, front to back; files the archive leaves out (export-ignore in
    .gitattributes) are fetched one by one so that nothing in the tree is silently missed.
    """

    def __init__(
        self, source: GitLabSource, snapshot: RepositorySnapshot, settings: ScanSettings
    ) -> None:
        self.source = source
        self.snapshot = snapshot
        self.settings = settings
        self.entries: dict[str, ManifestEntry] = {}
        self.stats = ScanStats()

    def _fail(self, problem: object, path: str | None = None) -> RepositoryError:
        return RepositoryError(self.snapshot.repository_name, str(problem), path)

    def list_tree(self) -> None:
        try:
            for item in self.source.iter_tree(self.snapshot.project_id, self.snapshot.commit_sha):
                if item["type"] == "tree":
                    continue
                path = item["path"]
                reason = tree_skip_reason(path, item["type"], item["mode"], self.settings.excluded)
                self.entries[path] = ManifestEntry(
                    path=path,
                    blob_sha=item["id"],
                    mode=item["mode"],
                    skip_reason=reason.value if reason else None,
                )
        except GitLabError as exc:
            raise self._fail(exc) from exc

    def _scan_file(
        self, entry: ManifestEntry, data: bytes | None, size: int
    ) -> pa.RecordBatch | None:
        """`data` is None for a file too large to read."""
        entry.size = size
        reason = content_skip_reason(size, data or b"", self.settings.max_file_bytes)
        if reason is not None:
            entry.skip_reason = reason.value
            return None
        assert data is not None
        try:
            decoded = decode(data)
            entry.encoding = decoded.encoding
            entry.line_count = count_lines(decoded.text)
            batch = file_documents(
                self.snapshot,
                entry.path,
                entry.blob_sha,
                decoded.text,
                self.settings.max_line_chars,
            )
        except Exception as exc:  # a bug or a file we cannot handle: name it
            raise self._fail(f"cannot build line documents: {exc!r}", entry.path) from exc
        self.stats.lines += entry.line_count
        return batch

    def documents(self) -> Iterator[pa.RecordBatch]:
        """Line documents file by file; fills in size, lines and content skip reasons."""
        started = time.monotonic()
        pending = {path for path, e in self.entries.items() if e.skip_reason is None}
        stream = None
        try:
            if pending:
                chunks = self.source.archive_chunks(
                    self.snapshot.project_id, self.snapshot.commit_sha, self.settings.archive_format
                )
                stream = ChunkStream(chunks)
                for member in iter_archive_files(stream):
                    entry = self.entries.get(member.path)
                    if entry is None or member.path not in pending:
                        continue
                    pending.discard(member.path)
                    self.stats.files_from_archive += 1
                    too_large = member.size > self.settings.max_file_bytes
                    data = None if too_large else member.read()
                    batch = self._scan_file(entry, data, member.size)
                    if batch is not None:
                        yield batch
            for path in sorted(pending):
                entry = self.entries[path]
                data = self.source.raw_blob(self.snapshot.project_id, entry.blob_sha)
                self.stats.files_fetched_alone += 1
                too_large = len(data) > self.settings.max_file_bytes
                batch = self._scan_file(entry, None if too_large else data, len(data))
                if batch is not None:
                    yield batch
        except (ArchiveError, GitLabError) as exc:
            raise self._fail(exc) from exc
        except OSError as exc:  # the HTTP body broke off (requests' ChunkedEncodingError etc.)
            raise self._fail(f"archive download broke off: {exc}") from exc
        finally:
            if stream is not None:
                self.stats.archive_bytes = stream.bytes_read
            self.stats.seconds = time.monotonic() - started

    def skipped(self) -> dict[str, int]:
        counts = {reason.value: 0 for reason in SkipReason}
        for entry in self.entries.values():
            if entry.skip_reason is not None:
                counts[entry.skip_reason] += 1
        return counts
