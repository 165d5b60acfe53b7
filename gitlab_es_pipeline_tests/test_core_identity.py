"""Blob and tree ids, and Git LFS pointers, checked against git and git-lfs themselves."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitlab_es_pipeline.core.blobs import blob_id, is_blob, streams_blob
from gitlab_es_pipeline.core.lfs import is_lfs_pointer
from gitlab_es_pipeline.core.trees import TreeAccount, check_folders, tree_object_id
from gitlab_es_pipeline_tests.repos import Submodule, Symlink, commit_files, init_repo, run_git


def _git_hash_object(data: bytes, repo: Path | None = None) -> str:
    where = ["-C", str(repo)] if repo else []
    return (
        subprocess.run(
            ["git", *where, "hash-object", "--stdin"], input=data, capture_output=True, check=True
        )
        .stdout.decode()
        .strip()
    )


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=3000))
def test_blob_ids_are_gits(data: bytes) -> None:
    sha = _git_hash_object(data)
    assert blob_id(data) == sha and is_blob(data, sha)
    assert streams_blob(sha, len(data), [data[:7], data[7:100], data[100:]])
    assert not is_blob(data + b"\n", sha)
    assert not is_blob(data, "0" * 40)


def test_sha256_repositories_hash_with_sha256(tmp_path: Path) -> None:
    repo = tmp_path / "sha256"
    subprocess.run(
        ["git", "init", "-q", "--object-format=sha256", str(repo)], check=True, capture_output=True
    )
    data = b"int main(void) { return 0; }\n"
    sha = _git_hash_object(data, repo)
    assert len(sha) == 64 and is_blob(data, sha)
    assert not is_blob(data + b" ", sha)


def _ls_tree(repo: Path, commit: str) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Folders (path -> id) and the other entries, as GitLab's recursive listing gives them."""
    folders, entries = {}, []
    out = run_git(repo, "-c", "core.quotepath=false", "ls-tree", "-r", "-t", "-z", commit)
    for record in out.split("\x00"):
        if record:
            meta, _, path = record.partition("\t")
            mode, type_, sha = meta.split()
            if type_ == "tree":
                folders[path] = sha
            else:
                entries.append((path, mode.zfill(6), sha))
    return folders, entries


def test_folder_ids_are_gits_and_a_partial_listing_is_caught(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    source = init_repo(tmp_path / "source")
    sub = commit_files(source, {"x": "x\n"})
    commit_files(
        repo,
        {
            "a/b.txt": "b\n",
            "a/b/c.txt": "c\n",  # "b" the folder sorts after "b.txt", as "b/"
            "a/b-c.txt": "-\n",
            "a/run.sh": "#!/bin/sh\n",
            "a/link": Symlink("b.txt"),
            "a/vendor": Submodule(sub),
            "a/ünï.txt": "u\n",
            "top.txt": "t\n",
        },
    )
    os.chmod(repo / "a" / "run.sh", 0o755)
    run_git(repo, "add", "a/run.sh")
    run_git(repo, "commit", "-q", "-m", "exec")
    folders, entries = _ls_tree(repo, "HEAD")
    in_a = [(p.rpartition("/")[2], m, s) for p, m, s in entries if p.count("/") == 1]
    in_a.append(("b", "040000", folders["a/b"]))
    assert tree_object_id(in_a) == run_git(repo, "rev-parse", "HEAD:a").strip()

    complete = check_folders(folders, entries)
    assert complete.verified == 2 and not complete.incomplete
    # A listing that stops before a folder's last entry: that folder is caught.
    cut = check_folders(folders, [e for e in entries if e[0] != "a/ünï.txt"])
    assert cut.incomplete == ["a"]
    # A folder listed with a wrong entry id is caught too.
    wrong = [(p, m, "0" * 40 if p == "a/b/c.txt" else s) for p, m, s in entries]
    assert check_folders(folders, wrong).incomplete == ["a/b"]


def test_tree_account_names_each_problem() -> None:
    account = TreeAccount(source="tree listing", entries_in_pages=10, manifest_entries=10)
    account.to_read, account.read = 5, 5
    assert account.problems() == []
    account.archive_file_not_listed("z/late.txt")
    account.read = 4
    account.manifest_entries = 9
    problems = account.problems()
    assert len(problems) == 3
    assert "'z/late.txt'" in problems[1] and "4 of the 5" in problems[2]
    comparison = TreeAccount(source="comparison", manifest_entries=3)
    assert comparison.problems() == []  # no pages to compare with


SPEC_EXAMPLE = (
    b"version https://git-lfs.github.com/spec/v1\n"
    b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    b"size 12345\n"
)


def test_git_lfs_pointers_as_git_lfs_writes_them(tmp_path: Path) -> None:
    content = tmp_path / "model.bin"
    content.write_bytes(bytes(range(256)) * 7)
    pointer = subprocess.run(
        ["git", "lfs", "pointer", f"--file={content}"], capture_output=True, check=True
    ).stdout
    assert pointer.startswith(b"version https://git-lfs.github.com/spec/v1\n")
    assert is_lfs_pointer(pointer)
    assert is_lfs_pointer(SPEC_EXAMPLE)


@pytest.mark.parametrize(
    "data",
    [
        SPEC_EXAMPLE[:-1],  # no final newline
        SPEC_EXAMPLE.replace(b"\n", b"\r\n"),
        SPEC_EXAMPLE.replace(b"sha256:4d7a", b"sha256:4D7A"),
        SPEC_EXAMPLE.replace(b"size 12345", b"size twelve"),
        SPEC_EXAMPLE.replace(b"spec/v1", b"spec/v2"),
        b"oid sha256:" + b"0" * 64 + b"\nversion https://git-lfs.github.com/spec/v1\nsize 1\n",
        SPEC_EXAMPLE.replace(b"size 12345\n", b""),
        SPEC_EXAMPLE + b"x" * 1024,
        b"# docs about LFS\n" + SPEC_EXAMPLE,
        SPEC_EXAMPLE + b"size 1\n",  # a key twice: not sorted strictly
    ],
)
def test_near_misses_are_text(data: bytes) -> None:
    assert not is_lfs_pointer(data)


def test_extension_keys_sort_before_oid() -> None:
    ext = b"ext-0-foo sha256:" + b"1" * 64 + b"\n"
    lines = SPEC_EXAMPLE.split(b"\n")
    assert is_lfs_pointer(lines[0] + b"\n" + ext + b"\n".join(lines[1:]))
