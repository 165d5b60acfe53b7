"""Files straight out of a streamed tar(.gz) archive: never extracted, never held whole."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO


class ArchiveError(Exception):
    """The archive stream is cut off or corrupt."""


class ChunkStream(io.RawIOBase):
    """A file object over an iterator of byte chunks (an HTTP body), read front to back."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = memoryview(b"")
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = memoryview(chunk)
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        self.bytes_read += n
        return n


@dataclass
class ArchiveFile:
    """One regular file of the archive; `content` can be read until the next file is taken."""

    path: str
    size: int
    content: IO[bytes]

    def read(self, limit: int | None = None) -> bytes:
        """The first `limit` bytes (all by default); a short read means the stream was cut."""
        want = self.size if limit is None else min(limit, self.size)
        try:
            data = self.content.read(want)
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise ArchiveError(f"archive stream is cut off inside {self.path!r}: {exc}") from exc
        if len(data) != want:
            raise ArchiveError(f"archive stream is cut off inside {self.path!r}")
        return data

    def chunks(self, chunk_bytes: int = 1 << 16) -> Iterator[bytes]:
        """The whole content a piece at a time: a file too large to hold can still be hashed."""
        left = self.size
        while left:
            chunk = self.read(min(chunk_bytes, left))
            left -= len(chunk)
            yield chunk


def _strip_prefix(name: str) -> str:
    # GitLab archives put everything under "<project>-<ref>-<sha>/".
    _, _, rest = name.partition("/")
    return rest


def iter_archive_files(stream: io.RawIOBase | io.BufferedIOBase) -> Iterator[ArchiveFile]:
    """Regular files of a tar or tar.gz stream, paths relative to the repository root.

    Member names are only ever used as dictionary keys, never as file system paths.
    """
    buffered = io.BufferedReader(stream, buffer_size=1 << 16)
    cut_off = False

    class CheckedTarInfo(tarfile.TarInfo):
        # tarfile ends iteration quietly when the stream stops between two members; a real
        # archive ends with zero blocks instead, so a short header read means it was cut off.
        @classmethod
        def fromtarfile(cls, tar: tarfile.TarFile) -> CheckedTarInfo:
            nonlocal cut_off
            try:
                return super().fromtarfile(tar)
            # Both HeaderErrors are undocumented, so typeshed leaves them out.
            except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):  # type: ignore[attr-defined]
                cut_off = True
                raise

    try:
        with tarfile.open(
            fileobj=buffered, mode="r|*", encoding="utf-8", tarinfo=CheckedTarInfo
        ) as tar:
            while (member := tar.next()) is not None:
                # tarfile keeps every header it read in `members` (for random access, which a
                # stream has not): dropped, so memory does not grow with the archive.
                tar.members.clear()  # type: ignore[attr-defined]  # not in typeshed
                if not member.isfile():
                    continue
                path = _strip_prefix(member.name)
                if not path:
                    continue
                content = tar.extractfile(member)
                if content is None:  # pragma: no cover - isfile() members always have content
                    continue
                yield ArchiveFile(path=path, size=member.size, content=content)
        if cut_off:
            raise ArchiveError("archive stream ended before the end-of-archive marker")
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise ArchiveError(f"archive stream is truncated or corrupt: {exc}") from exc
