"""One pass over a repository at a commit: the tree gives the manifest, the archive the lines."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

from gitlab_es_pipeline.clients.gitlab import GitLabError, GitLabSource
from gitlab_es_pipeline.core.archive import ArchiveError, ChunkStream, iter_archive_files
from gitlab_es_pipeline.core.decoding import decode
from gitlab_es_pipeline.core.documents import FileText, RepositorySnapshot, line_document_batches
from gitlab_es_pipeline.core.filtering import (
    MODE_SUBMODULE,
    SkipReason,
    content_skip_reason,
    tree_skip_reason,
)
from gitlab_es_pipeline.core.manifest import ManifestEntry, classify
from gitlab_es_pipeline.core.progress import Progress


class RepositoryError(Exception):
    """Indexing one repository failed; the message names it (and the file, if one is to blame)."""

    def __init__(
        self, repository: str, problem: str, path: str | None = None, permanent: bool = False
    ) -> None:
        where = f"{repository}: {path}" if path else repository
        super().__init__(f"{where}: {problem}")
        self.repository = repository
        self.path = path
        self.permanent = permanent  # trying again would fail the same way


@dataclass
class ScanSettings:
    max_file_bytes: int
    max_line_chars: int
    excluded: re.Pattern[str] | None
    archive_format: str = "tar.gz"
    # Up to this many changed files are fetched one by one; more, and the archive is cheaper.
    max_files_fetched_alone: int = 100
    fetch_workers: int = 4
    # A download that breaks off is resumed with a new archive request, skipping files done.
    archive_attempts: int = 3
    archive_retry_seconds: float = 15.0

    def fingerprint(self) -> str:
        """What decides a file's documents; when it changes, every file is read again."""
        excluded = self.excluded.pattern if self.excluded is not None else ""
        return (
            f"max_file_bytes={self.max_file_bytes};max_line_chars={self.max_line_chars};"
            f"excluded={excluded}"
        )


TREE_SKIP_REASONS = frozenset(
    {SkipReason.SUBMODULE.value, SkipReason.SYMLINK.value, SkipReason.EXCLUDED.value}
)


@dataclass
class ScanStats:
    files_from_archive: int = 0
    files_fetched_alone: int = 0
    archive_bytes: int = 0
    archive_restarts: int = 0
    lines: int = 0
    seconds: float = 0.0


class TreeListing:
    """The tree listing, paged in a thread of its own while the archive streams.

    Both list the tree in git's order, so the entry of the file that the archive is at has
    usually arrived already; `entry()` waits for it when not. Listing 20,000 files takes
    200 requests one after the other, which would otherwise come before the archive's first
    byte.
    """

    def __init__(self, pages: Iterator[dict[str, Any]], make_entry: Callable[..., Any]) -> None:
        self.entries: dict[str, ManifestEntry] = {}
        self._pages = pages
        self._make_entry = make_entry
        self._changed = threading.Condition()
        self._finished = False
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tree-listing", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._pages:
                if self._stopped:
                    return
                if item["type"] == "tree":
                    continue
                entry = self._make_entry(item)
                with self._changed:
                    self.entries[entry.path] = entry
                    self._changed.notify_all()
        except BaseException as exc:  # handed to the reading thread
            self._error = exc
        finally:
            with self._changed:
                self._finished = True
                self._changed.notify_all()

    def entry(self, path: str) -> ManifestEntry | None:
        """The path's entry, once listed; None if the whole tree has no such file."""
        with self._changed:
            while path not in self.entries and not self._finished:
                self._changed.wait()
            if path not in self.entries and self._error is not None:
                raise self._error
            return self.entries.get(path)

    def complete(self) -> dict[str, ManifestEntry]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.entries

    def stop(self) -> None:
        self._stopped = True


class RepositoryScan:
    """Builds the manifest entries and the line documents of one snapshot.

    The archive is read once, front to back; files the archive leaves out (export-ignore in
    .gitattributes) are fetched one by one so that nothing in the tree is silently missed.
    """

    def __init__(
        self,
        source: GitLabSource,
        snapshot: RepositorySnapshot,
        settings: ScanSettings,
        progress: Progress | None = None,
    ) -> None:
        self.source = source
        self.progress = progress
        self.snapshot = snapshot
        self.settings = settings
        self.entries: dict[str, ManifestEntry] = {}
        self.deleted: list[ManifestEntry] = []
        self.wanted: set[str] = set()
        self.use_archive = True
        self.stats = ScanStats()
        self._listing: TreeListing | None = None
        self._base: dict[str, ManifestEntry] | None = None

    def _fail(
        self, problem: object, path: str | None = None, permanent: bool = False
    ) -> RepositoryError:
        permanent = permanent or (isinstance(problem, GitLabError) and problem.permanent)
        return RepositoryError(self.snapshot.repository_name, str(problem), path, permanent)

    def _tree_entry(self, item: dict[str, Any]) -> ManifestEntry:
        path = item["path"]
        reason = tree_skip_reason(path, item["type"], item["mode"], self.settings.excluded)
        return ManifestEntry(
            path=path,
            blob_sha=item["id"],
            mode=item["mode"],
            skip_reason=reason.value if reason else None,
        )

    def list_tree(self) -> None:
        try:
            for item in self.source.iter_tree(self.snapshot.project_id, self.snapshot.commit_sha):
                if item["type"] != "tree":
                    entry = self._tree_entry(item)
                    self.entries[entry.path] = entry
        except GitLabError as exc:
            raise self._fail(exc) from exc

    def read_everything(self, base: dict[str, ManifestEntry] | None) -> None:
        """Plan a full read: every file the tree does not rule out, listed while it is read.

        The manifest (entries, deleted) is complete once documents() has been consumed.
        """
        self._listing = TreeListing(
            self.source.iter_tree(self.snapshot.project_id, self.snapshot.commit_sha),
            self._tree_entry,
        )
        self._base = base
        self.use_archive = True

    def plan(self, base: dict[str, ManifestEntry] | None) -> None:
        """Classify every listed path against the base: only added, modified and renamed files
        are read, a few one by one, many from the archive (a full read is read_everything)."""
        self.deleted = classify(self.entries, base)
        self.wanted = {path for path, entry in self.entries.items() if entry.needs_content()}
        self.use_archive = len(self.wanted) > self.settings.max_files_fetched_alone

    def from_compare(self, base: dict[str, ManifestEntry], diffs: list[dict[str, Any]]) -> None:
        """The tree at HEAD as the base plus GitLab's list of changed paths: no tree listing.

        Blob id and size of each changed file come from a HEAD request on the files API
        (concurrently, no content); the content follows in documents(), a window at a time, and
        never for a file over the size cap. Skipped ones (submodules, symlinks, excluded) are
        not asked about, and keep an empty blob id.
        """
        entries = {path: replace(entry) for path, entry in base.items()}
        changed: list[str] = []
        for diff in diffs:
            if diff["deleted_file"] or diff["renamed_file"]:
                entries.pop(diff["old_path"], None)
            if diff["deleted_file"]:
                continue
            path, mode = diff["new_path"], diff["b_mode"]
            item_type = "commit" if mode == MODE_SUBMODULE else "blob"
            reason = tree_skip_reason(path, item_type, mode, self.settings.excluded)
            entries[path] = ManifestEntry(
                path, "", mode, skip_reason=reason.value if reason else None
            )
            if reason is None:
                changed.append(path)
        self.entries = entries
        try:
            with ThreadPoolExecutor(self.settings.fetch_workers) as pool:
                found = pool.map(
                    lambda p: self.source.file_metadata(
                        self.snapshot.project_id, p, self.snapshot.commit_sha
                    ),
                    changed,
                )
                for path, (blob, size) in zip(changed, found, strict=True):
                    entries[path].blob_sha = blob
                    entries[path].size = size
        except GitLabError as exc:
            raise self._fail(exc) from exc
        self.deleted = classify(entries, base)
        self.wanted = {path for path, entry in entries.items() if entry.needs_content()}
        self.use_archive = False

    def _scan_file(
        self, entry: ManifestEntry, size: int, read: Callable[[], bytes]
    ) -> FileText | None:
        """One file's text; a file over the size cap is never read."""
        entry.size = size
        data = b"" if size > self.settings.max_file_bytes else read()
        reason = content_skip_reason(size, data, self.settings.max_file_bytes)
        if reason is not None:
            entry.skip_reason = reason.value
            return None
        try:
            decoded = decode(data)
        except Exception as exc:  # a bug or a file we cannot handle: name it
            raise self._fail(f"cannot decode: {exc!r}", entry.path, permanent=True) from exc
        text = FileText(entry.path, entry.blob_sha, decoded.text)
        entry.encoding = decoded.encoding
        entry.line_count = text.line_count
        self.stats.lines += entry.line_count
        return text

    def documents(self, rows: int) -> Iterator[pa.RecordBatch]:
        """Line documents of the wanted files in batches of about `rows`; fills in their
        size, lines and skip reasons."""
        try:
            yield from line_document_batches(
                self.snapshot, self._files(), self.settings.max_line_chars, rows
            )
        except RepositoryError:
            raise
        except Exception as exc:  # a bug building documents: say which repository
            raise self._fail(f"cannot build line documents: {exc!r}", permanent=True) from exc

    def _files(self) -> Iterator[FileText]:
        """The texts of the wanted files, as they are read, with progress in the run log
        (out of the files to read when they are known: a full read lists them meanwhile)."""
        total = None if self._listing is not None else len(self.wanted)
        for count, text in enumerate(self._texts(), start=1):
            if self.progress is not None:
                self.progress.update(count, total, self.stats.lines)
            yield text

    def _texts(self) -> Iterator[FileText]:
        started = time.monotonic()
        try:
            if self._listing is not None:
                yield from self._read_everything()
                return
            done: set[str] = set()
            if self.wanted and self.use_archive:
                wanted = self.wanted
                yield from self._from_archive_resuming(
                    lambda path: path in wanted and path not in done, done
                )
            yield from self._one_by_one(sorted(self.wanted - done))
        except (ArchiveError, GitLabError) as exc:
            raise self._fail(exc) from exc
        except OSError as exc:  # the HTTP body broke off (requests' ChunkedEncodingError etc.)
            raise self._fail(f"download broke off: {exc}") from exc
        finally:
            self.stats.seconds = time.monotonic() - started

    def _read_everything(self) -> Iterator[FileText]:
        """The archive beside the tree listing; then what the archive left out, one by one."""
        listing = self._listing
        assert listing is not None
        done: set[str] = set()

        def wanted(path: str) -> bool:
            entry = listing.entry(path)
            return entry is not None and entry.skip_reason is None and path not in done

        try:
            yield from self._from_archive_resuming(wanted, done)
        finally:
            listing.stop()
        self.entries = listing.complete()
        self.wanted = {p for p, e in self.entries.items() if e.skip_reason is None or p in done}
        yield from self._one_by_one(sorted(self.wanted - done))
        self.deleted = classify(self.entries, self._base, learn=False)

    def _from_archive_resuming(
        self, wanted: Callable[[str], bool], done: set[str]
    ) -> Iterator[FileText]:
        """The archive, asked for again when its download breaks off or arrives cut short.

        python-gitlab retries a request that fails (status, connection); a body that stops
        half-way is ours to handle. Files already done are not read again, so documents are
        never duplicated; a corrupt archive fails the same way each time and is reported.
        """
        # A plain loop, not tenacity: the retried thing is a generator that has already
        # yielded, and a retry decorator's context must not swallow the consumer's close().
        for attempt in range(1, self.settings.archive_attempts + 1):
            try:
                yield from self._from_archive(wanted, done)
                return
            except (ArchiveError, OSError):
                if attempt == self.settings.archive_attempts:
                    raise
                self.stats.archive_restarts += 1
                time.sleep(self.settings.archive_retry_seconds * 2 ** (attempt - 1))

    def _from_archive(self, wanted: Callable[[str], bool], done: set[str]) -> Iterator[FileText]:
        """One streamed archive; each wanted file is read, then added to `done`."""
        chunks = self.source.archive_chunks(
            self.snapshot.project_id, self.snapshot.commit_sha, self.settings.archive_format
        )
        stream = ChunkStream(chunks)
        try:
            for member in iter_archive_files(stream):
                if not wanted(member.path):
                    continue
                listed = self._listing.entries if self._listing else self.entries
                text = self._scan_file(listed[member.path], member.size, member.read)
                done.add(member.path)
                self.stats.files_from_archive += 1
                if text is not None:
                    yield text
        finally:
            self.stats.archive_bytes += stream.bytes_read

    def _one_by_one(self, paths: list[str]) -> Iterator[FileText]:
        """Raw blobs by id, a few at a time; also what the archive left out (export-ignore)."""
        if not paths:
            return
        window = self.settings.fetch_workers * 4
        with ThreadPoolExecutor(self.settings.fetch_workers) as pool:
            for start in range(0, len(paths), window):
                group = paths[start : start + window]
                blobs = pool.map(self._content, group)
                for path, (size, data) in zip(group, blobs, strict=True):
                    self.stats.files_fetched_alone += 1
                    text = self._scan_file(self.entries[path], size, lambda d=data: d)
                    if text is not None:
                        yield text

    def _content(self, path: str) -> tuple[int, bytes]:
        """Size and content; a file known to be over the size cap is not downloaded."""
        entry = self.entries[path]
        if entry.size is not None and entry.size > self.settings.max_file_bytes:
            return entry.size, b""
        data = self.source.raw_blob(self.snapshot.project_id, entry.blob_sha)
        return len(data), data

    def skipped(self) -> dict[str, int]:
        counts = {reason.value: 0 for reason in SkipReason}
        for entry in self.entries.values():
            if entry.skip_reason is not None:
                counts[entry.skip_reason] += 1
        return counts
