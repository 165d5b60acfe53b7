"""The streaming archive reader, on archives git itself makes from the corpus."""

import io
import subprocess
from pathlib import Path

import pytest

from gitlab_es_pipeline.core.archive import ArchiveError, ChunkStream, iter_archive_files
from gitlab_es_pipeline_tests.repos import run_git


def _git_archive(repo: Path, fmt: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(repo), "archive", f"--format={fmt}", "--prefix=proj-abc/", "HEAD"],
        check=True,
        capture_output=True,
    ).stdout


def _regular_files(repo: Path) -> dict[str, bytes]:
    out = {}
    for record in run_git(repo, "ls-tree", "-r", "-z", "--full-tree", "HEAD").split("\x00"):
        if record:
            meta, _, path = record.partition("\t")
            mode, type_, sha = meta.split()
            if type_ == "blob" and mode != "120000":
                out[path] = subprocess.run(
                    ["git", "-C", str(repo), "cat-file", "blob", sha],
                    check=True,
                    capture_output=True,
                ).stdout
    return out


@pytest.mark.parametrize("fmt", ["tar", "tar.gz"])
def test_every_regular_file_comes_out_byte_for_byte(
    corpus_repos: dict[str, Path], fmt: str
) -> None:
    repo = corpus_repos["acme/backend"]
    data = _git_archive(repo, fmt)
    chunks = (data[i : i + 1000] for i in range(0, len(data), 1000))
    got = {f.path: f.read() for f in iter_archive_files(ChunkStream(chunks))}
    assert got == _regular_files(repo)
    assert "ünïcödé/日本語.md" in got and "tabs\tand#hash?.txt" in got


def test_large_files_can_be_passed_over_unread(corpus_repos: dict[str, Path]) -> None:
    data = _git_archive(corpus_repos["acme/backend"], "tar.gz")
    sizes = {f.path: f.size for f in iter_archive_files(io.BytesIO(data))}
    assert sizes["big.txt"] == 1_111_000
    assert sizes["empty.txt"] == 0


@pytest.mark.parametrize("fmt", ["tar", "tar.gz"])
def test_a_cut_off_archive_is_an_error_wherever_it_is_cut(
    corpus_repos: dict[str, Path], fmt: str
) -> None:
    import gzip
    import tarfile

    data = _git_archive(corpus_repos["acme/tools/cli"], fmt)
    # The end-of-archive marker is the first zero block after the last member; every cut
    # before it must be noticed, whether mid-header, mid-content or between members.
    tar_bytes = gzip.decompress(data) if fmt == "tar.gz" else data
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        last = tar.getmembers()[-1]
    marker_end = last.offset_data + -(-last.size // 512) * 512 + 512
    # For tar.gz, cut the compressed stream anywhere in its first half (well before the marker).
    body_end = marker_end if fmt == "tar" else len(data) // 2
    cuts = (
        [*range(0, body_end, 97), marker_end - 1, last.offset_data, last.offset]
        if fmt == "tar"
        else range(0, body_end, 7)
    )
    for cut in cuts:
        with pytest.raises(ArchiveError):
            for f in iter_archive_files(io.BytesIO(data[:cut])):
                f.read()


def test_garbage_is_an_error() -> None:
    with pytest.raises(ArchiveError):
        list(iter_archive_files(io.BytesIO(b"this is not an archive" * 100)))


def test_member_names_are_only_keys(tmp_path: Path) -> None:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("prefix/../../escape.txt", "/abs/olute.txt", "prefix/ok.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"x\n"))
    before = set(tmp_path.rglob("*"))
    paths = [f.path for f in iter_archive_files(io.BytesIO(buf.getvalue()))]
    # Names are kept verbatim (less the archive's top folder), never resolved against a disk.
    assert paths[0] == "../../escape.txt"
    assert paths[2] == "ok.txt"
    assert set(tmp_path.rglob("*")) == before


def test_memory_does_not_grow_with_the_number_of_members(tmp_path: Path) -> None:
    """tarfile keeps every header it reads; the reader must not, or a 100,000-file archive
    holds 100,000 TarInfo objects until its end."""
    import tarfile
    import tracemalloc

    def archive(members: int) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for i in range(members):
                data = f"{i}\n".encode()
                info = tarfile.TarInfo(f"proj-abc/dir/f{i:06d}.txt")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return out.getvalue()

    def peak(data: bytes) -> int:
        tracemalloc.start()
        try:
            count = sum(1 for member in iter_archive_files(io.BytesIO(data)) if member.read())
            return tracemalloc.get_traced_memory()[1] if count else -1
        finally:
            tracemalloc.stop()

    small, large = peak(archive(1_000)), peak(archive(20_000))
    assert small > 0 and large < small + 256 * 1024  # not 20 x a TarInfo's kilobyte or so


def test_chunks_give_the_whole_content_in_pieces(corpus_repos: dict[str, Path]) -> None:
    repo = corpus_repos["acme/backend"]
    for member in iter_archive_files(io.BytesIO(_git_archive(repo, "tar"))):
        if member.path == "big.txt":
            pieces = list(member.chunks(1 << 16))
            assert len(pieces) > 10 and max(map(len, pieces)) == 1 << 16
            assert b"".join(pieces) == _regular_files(repo)["big.txt"]
            break
    else:
        raise AssertionError("big.txt not in the archive")
