"""One pass over a repository at a commit: the tree gives the manifest, the archive the lines."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

from gitlab_es_pipeline.clients.gitlab import GitLabError, GitLabSource
from gitlab_es_pipeline.core.archive import (
    ArchiveError,
    ArchiveFile,
    ChunkStream,
    iter_archive_files,
)
from gitlab_es_pipeline.core.blobs import is_blob, streams_blob
from gitlab_es_pipeline.core.decoding import decode
from gitlab_es_pipeline.core.documents import FileText, RepositorySnapshot, line_document_batches
from gitlab_es_pipeline.core.filtering import (
    MODE_SUBMODULE,
    Skipped,
    content_skip_reason,
    tree_skip_reason,
)
from gitlab_es_pipeline.core.manifest import ManifestEntry, classify
from gitlab_es_pipeline.core.progress import Progress
from gitlab_es_pipeline.core.read_plan import Reading, ReadPlan
from gitlab_es_pipeline.core.trees import TreeAccount, check_folders


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
    {Skipped.SUBMODULE.value, Skipped.SYMLINK.value, Skipped.EXCLUDED.value}
)


@dataclass
class ScanStats:
    files_from_archive: int = 0
    files_fetched_alone: int = 0
    # Of those fetched alone: the archive left them out (export-ignore), or its copy was not
    # the blob (export-subst, ident, working-tree-encoding, eol, LFS content).
    files_missing_from_archive: int = 0
    files_rewritten_by_archive: int = 0
    archive_bytes: int = 0
    archive_restarts: int = 0
    lines: int = 0
    seconds: float = 0.0


class TreeListing:
    """The tree listing, paged in a thread of its own while the archive streams.

    Both list the tree in git's order, so the entry of the file that the archive is at has
    usually arrived already; `entry()` waits for it when not. Listing 20,000 files takes
    200 requests one after the other, which would otherwise come before the archive's first
    byte. The listing always runs to its last page, however early the archive ends: only a
    reader that fails stops it.
    """

    def __init__(self, pages: Iterator[dict[str, Any]], make_entry: Callable[..., Any]) -> None:
        self.entries: dict[str, ManifestEntry] = {}
        self.folders: dict[str, str] = {}  # folder path -> its tree id
        self.entries_in_pages = 0
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
                    self.folders[item["path"]] = item["id"]
                    continue
                entry = self._make_entry(item)
                with self._changed:
                    self.entries_in_pages += 1
                    self.entries[entry.path] = entry
                    self._changed.notify_all()
        except OSError as exc:  # the connection failed past python-gitlab's own retries
            self._error = GitLabError(f"the tree listing broke off: {exc}")
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
        """Every entry, once the last page is in; a listing that failed raises its error."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.entries

    def stop(self) -> None:
        """Only for a read that failed: the pages left are of no use then."""
        self._stopped = True


class RepositoryScan:
    """Builds the manifest entries and the line documents of one snapshot.

    The archive is read once, front to back; files the archive leaves out (export-ignore in
    .gitattributes) or rewrote (export-subst, ident, working-tree-encoding, eol: its copy does
    not hash to the blob id) are fetched alone by blob id, so that what is indexed is exactly
    what is committed. `account` says afterwards whether the manifest covers the whole tree.
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
        self.account = TreeAccount(source="tree listing")
        self._listing: TreeListing | None = None
        self._full_read = False
        self._base: dict[str, ManifestEntry] | None = None
        self._rewritten: set[str] = set()  # archive copies that are not the blob
        self._not_listed: set[str] = set()  # archive files the tree listing lacks
        self._scanned: set[str] = set()

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

    def _start_listing(self) -> TreeListing:
        self._listing = TreeListing(
            self.source.iter_tree(self.snapshot.project_id, self.snapshot.commit_sha),
            self._tree_entry,
        )
        return self._listing

    def start(self, plan: ReadPlan, base: dict[str, ManifestEntry] | None) -> None:
        """Set out on the plan (core/read_plan.py) against the base's entries. The manifest
        (entries, deleted) and the documents follow as documents() is consumed."""
        if plan.reading is Reading.EVERYTHING:
            self._read_everything_against(base)
        elif plan.reading is Reading.TREE:
            self._against_tree(base)
        else:
            if base is None:
                raise ValueError("a compared read needs the indexed manifest")
            self._against_comparison(base, plan.diffs)

    def _read_everything_against(self, base: dict[str, ManifestEntry] | None) -> None:
        """Every file the tree does not rule out, listed while it is read."""
        self._start_listing()
        self._full_read = True
        self._base = base
        self.use_archive = True

    def _against_tree(self, base: dict[str, ManifestEntry] | None) -> None:
        """The whole tree listed, every path classified against the base: only added,
        modified and renamed files are read, a few one by one, many from the archive."""
        try:
            self.entries = self._start_listing().complete()
        except GitLabError as exc:
            raise self._fail(exc) from exc
        self.deleted = classify(self.entries, base)
        self.wanted = {path for path, entry in self.entries.items() if entry.needs_content()}
        self.use_archive = len(self.wanted) > self.settings.max_files_fetched_alone

    def _against_comparison(
        self, base: dict[str, ManifestEntry], diffs: Iterable[dict[str, Any]]
    ) -> None:
        """The tree at HEAD as the base plus GitLab's list of changed paths: no tree listing.

        Blob id and size of each changed file come from a HEAD request on the files API
        (concurrently, no content); the content follows in documents(), a window at a time, and
        never for a file over the size cap. Skipped ones (submodules, symlinks, excluded) are
        not asked about, and keep an empty blob id.
        """
        self.account = TreeAccount(source="comparison")
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

    def _scan_file(self, entry: ManifestEntry, size: int, data: bytes) -> FileText | None:
        """One blob's text; `data` is the blob's bytes, checked already (empty when over the
        size cap: such a file is never held)."""
        if entry.path in self._scanned:
            self.account.read_twice += 1
        self._scanned.add(entry.path)
        entry.size = size
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
        self._settle_account()

    def _settle_account(self) -> None:
        """What the run saw of the tree, once every file is read (see TreeAccount)."""
        account = self.account
        account.manifest_entries = len(self.entries)
        account.to_read = len(self.wanted)
        account.read = len(self._scanned & self.wanted)
        if self._listing is not None and account.source == "tree listing":
            account.entries_in_pages = self._listing.entries_in_pages
            account.folders_in_pages = len(self._listing.folders)
            account.folders = check_folders(
                self._listing.folders,
                ((e.path, e.mode, e.blob_sha) for e in self.entries.values()),
            )

    def _files(self) -> Iterator[FileText]:
        """The texts of the wanted files, as they are read, with progress in the run log
        (out of the files to read when they are known: a full read lists them meanwhile)."""
        total = None if self._full_read else len(self.wanted)
        for count, text in enumerate(self._texts(), start=1):
            if self.progress is not None:
                self.progress.update(count, total, self.stats.lines)
            yield text

    def _texts(self) -> Iterator[FileText]:
        started = time.monotonic()
        try:
            if self._full_read:
                yield from self._read_everything()
                return
            done: set[str] = set()
            if self.wanted and self.use_archive:
                wanted = self.wanted
                yield from self._from_archive_resuming(
                    self.entries.get, lambda entry: entry.path in wanted, done
                )
            yield from self._fetched_alone(done)
        except (ArchiveError, GitLabError) as exc:
            raise self._fail(exc) from exc
        except OSError as exc:  # the HTTP body broke off (requests' ChunkedEncodingError etc.)
            raise self._fail(f"download broke off: {exc}") from exc
        finally:
            self.stats.seconds = time.monotonic() - started

    def _read_everything(self) -> Iterator[FileText]:
        """The archive beside the tree listing, which runs to its last page; then what the
        archive left out or rewrote, one by one."""
        listing = self._listing
        assert listing is not None
        done: set[str] = set()
        try:
            yield from self._from_archive_resuming(
                listing.entry, lambda entry: entry.skip_reason is None, done
            )
        except BaseException:
            listing.stop()
            raise
        self.entries = listing.complete()
        self.wanted = {p for p, e in self.entries.items() if e.skip_reason is None or p in done}
        yield from self._fetched_alone(done)
        self.deleted = classify(self.entries, self._base, learn=False)

    def _fetched_alone(self, done: set[str]) -> Iterator[FileText]:
        """The wanted files the archive did not give as committed (or all, without one)."""
        left = sorted(self.wanted - done)
        rewritten = len(self._rewritten.intersection(left))
        self.stats.files_rewritten_by_archive = rewritten
        if self.use_archive:
            self.stats.files_missing_from_archive = len(left) - rewritten
        yield from self._one_by_one(left)

    def _from_archive_resuming(
        self,
        lookup: Callable[[str], ManifestEntry | None],
        wanted: Callable[[ManifestEntry], bool],
        done: set[str],
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
                yield from self._from_archive(lookup, wanted, done)
                return
            except (ArchiveError, OSError):
                if attempt == self.settings.archive_attempts:
                    raise
                self.stats.archive_restarts += 1
                time.sleep(self.settings.archive_retry_seconds * 2 ** (attempt - 1))

    def _from_archive(
        self,
        lookup: Callable[[str], ManifestEntry | None],
        wanted: Callable[[ManifestEntry], bool],
        done: set[str],
    ) -> Iterator[FileText]:
        """One streamed archive; each wanted file that is its blob is read and added to
        `done`. A file the tree does not list is noted (the listing ended early)."""
        chunks = self.source.archive_chunks(
            self.snapshot.project_id, self.snapshot.commit_sha, self.settings.archive_format
        )
        stream = ChunkStream(chunks)
        try:
            for member in iter_archive_files(stream):
                path = member.path
                if path in done or path in self._rewritten or path in self._not_listed:
                    continue
                entry = lookup(path)
                if entry is None:
                    self._not_listed.add(path)
                    self.account.archive_file_not_listed(path)
                    continue
                if not wanted(entry):
                    continue
                text = self._archive_file(entry, member)
                if path in self._rewritten:
                    continue
                done.add(path)
                self.stats.files_from_archive += 1
                if text is not None:
                    yield text
        finally:
            self.stats.archive_bytes += stream.bytes_read

    def _archive_file(self, entry: ManifestEntry, member: ArchiveFile) -> FileText | None:
        """The member's text if its bytes are the blob's; otherwise the path is noted as
        rewritten, to be fetched alone. A member over the cap is hashed as it streams by."""
        if member.size > self.settings.max_file_bytes:
            if streams_blob(entry.blob_sha, member.size, member.chunks()):
                return self._scan_file(entry, member.size, b"")
            self._rewritten.add(entry.path)
            return None
        data = member.read()
        if not is_blob(data, entry.blob_sha):
            self._rewritten.add(entry.path)
            return None
        return self._scan_file(entry, len(data), data)

    def _one_by_one(self, paths: list[str]) -> Iterator[FileText]:
        """Raw blobs by id, a few at a time; also what the archive left out or rewrote."""
        if not paths:
            return
        window = self.settings.fetch_workers * 4
        with ThreadPoolExecutor(self.settings.fetch_workers) as pool:
            for start in range(0, len(paths), window):
                group = paths[start : start + window]
                blobs = pool.map(self._content, group)
                for path, (size, data) in zip(group, blobs, strict=True):
                    self.stats.files_fetched_alone += 1
                    text = self._scan_file(self.entries[path], size, data)
                    if text is not None:
                        yield text

    def _content(self, path: str) -> tuple[int, bytes]:
        """Size and the blob's bytes, checked against its id. Never more than the cap is
        downloaded: a file of unknown size is streamed and given up past the cap, and its
        size asked of the files API (no content)."""
        entry = self.entries[path]
        cap = self.settings.max_file_bytes
        if entry.size is not None and entry.size > cap:
            return entry.size, b""
        data = self.source.raw_blob(self.snapshot.project_id, entry.blob_sha, limit=cap)
        if len(data) > cap:
            if entry.size is not None:  # smaller than GitLab said before: not the blob either
                raise self._fail(f"blob {entry.blob_sha} is over its listed size", path)
            blob, size = self.source.file_metadata(
                self.snapshot.project_id, path, self.snapshot.commit_sha
            )
            if blob != entry.blob_sha:
                raise self._fail(
                    f"the files API names blob {blob}, the tree {entry.blob_sha}", path
                )
            return size, b""
        if not is_blob(data, entry.blob_sha):
            raise self._fail(
                f"GitLab served {len(data)} bytes for blob {entry.blob_sha} that do not hash to "
                "its id (a proxy or cache in between?)",
                path,
            )
        return len(data), data

    def skipped(self) -> dict[str, int]:
        counts = {reason.value: 0 for reason in Skipped}
        for entry in self.entries.values():
            if entry.skip_reason is not None:
                counts[entry.skip_reason] += 1
        return counts
