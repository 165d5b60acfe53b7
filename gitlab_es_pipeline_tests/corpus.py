"""The test corpus, and the documents every repository should have, computed from git alone.

The expectation does not use the pipeline's code: it reads blobs with `git cat-file`, decides
what is indexed by the documented rules, and builds documents by its own simple means.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gitlab_es_pipeline_tests.repos import (
    FileSpec,
    Submodule,
    Symlink,
    commit_files,
    init_repo,
    run_git,
)

MAX_FILE_BYTES = 1024 * 1024
# A Git LFS pointer as `git lfs` writes it (its spec's example form).
LFS_POINTER = re.compile(
    rb"version https://git-lfs\.github\.com/spec/v1\noid sha256:[0-9a-f]{64}\nsize [0-9]+\n"
)
MAX_LINE_CHARS = 4096
EXCLUDED = re.compile(
    r"(?:.*/)?node_modules/.*|(?:.*/)?[^/]*\.min\.js|(?:.*/)?[^/]*\.min\.css|(?:.*/)?[^/]*\.map"
)

LATIN1_TEXT = (
    (
        "Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter en canoë au delà des îles,\n"
        "près du mälström où brûlent les novæ. Voix ambiguë d'un cœur qui au zéphyr préfère les jattes\n"
        "de kiwis. Où est la forêt? À côté de l'église, près du château, garçon. Ça va très bien, merci.\n"
    )
    .replace("œ", "oe")
    .replace("æ", "ae")
)


def _png() -> bytes:
    raw = b"\x00" + b"\xff\x00\x00" * 4

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
        )

    header = (4).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def edge_case_files(submodule_commit: str) -> dict[str, FileSpec]:
    """Every edge case issue #2 lists, in one repository."""
    big_line = "x = '" + "abcdefghij" * 1000 + "'"  # 10,005 characters
    return {
        "src/main.py": "import sys\n\n\ndef main() -> int:\n    print('hello, world')\n    return 0\n",
        "src/lib/util.go": "package lib\n\n// Add adds.\nfunc Add(a, b int) int {\n\treturn a + b\n}\n",
        "web/app.ts": "export const parseHttpResponse = (body: string): number => body.length;\n",
        "java/com/acme/Main.java": "public class Main {\n  public static void main(String[] args) {}\n}\n",
        "docs/README.md": "# Title\n\nSome *markdown* text.\n",
        "crlf.txt": b"first line\r\nsecond line\r\n\r\nlast\r\n",
        "bom.py": b"\xef\xbb\xbfprint('bom')\nx = 1\n",
        "no_newline.c": "int x;\nint y;",
        "empty.txt": b"",
        "blank_lines.txt": "\n\n\nmiddle\n\n",
        "only_newline.txt": "\n",
        "latin1.txt": LATIN1_TEXT.encode("latin-1"),
        "binary.bin": b"\x01\x02\x00\x03binary\x00data" * 10,
        "image.png": _png(),
        "big.txt": ("0123456789" * 10 + "\n") * 11000,  # 1,111,000 bytes > 1 MiB
        "long_line.js": "const a = 1;\n" + big_line + "\nconst b = 2;\n",
        "link_to_main": Symlink("src/main.py"),
        "vendor/dep": Submodule(submodule_commit),
        "dir with space/file name.txt": "spaces in the path\n",
        "ünïcödé/日本語.md": "こんにちは世界\nnon-ASCII path\n",
        "a/b/c/d/e/deep.txt": "deep\nnested\n",
        "node_modules/pkg/index.js": "module.exports = 1;\n",
        "dist/app.min.js": "var a=1;\n",
        "tabs\tand#hash?.txt": "odd characters in the name\n",
    }


def bad_input_files() -> dict[str, FileSpec]:
    """Issue #5's awkward files and paths, each with the outcome docs/operations.md (Bad input) documents."""
    at_cap = ("y" * 99 + "\n") * 10485 + "z" * 75 + "\n"  # exactly MAX_FILE_BYTES
    assert len(at_cap) == MAX_FILE_BYTES
    return {
        "invalid_utf8.txt": b"ok line\nbad \xff\xfe byte\n",
        "utf16_bom.txt": "h\u00e9llo\nw\u00f6rld\n".encode("utf-16"),
        "mixed_endings.txt": b"crlf\r\nlf\nlone\rcr\n",
        "lone_cr_only.txt": b"one\rtwo\rthree",
        "late_nul.txt": b"x" * 8000 + b"\x00 after the sniffed bytes\nmore\n",
        "huge_line.txt": "w" * 900_000 + "\n",
        "at_cap.txt": at_cap,
        "over_cap.txt": at_cap + "!",
        "lfs.bin": "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 12345\n",
        "control_chars.txt": "bell\x07 escape\x1b[0m form\x0cfeed vtab\x0b del\x7f\n",
        "quote\"d and 'single'.txt": "quoted path\n",
        "new\nline in name.txt": "a newline in the path\n",
        "long/" + "segment_of_path/" * 70 + "end.txt": "over 1,000 characters of path\n",
    }


#: Files whose bytes are not UTF-8: what a person reads in them.
KNOWN_TEXT = {
    "latin1.txt": LATIN1_TEXT,
    # Not UTF-8: the closest legacy encoding (Western European) reads the two bytes as "ÿþ".
    "invalid_utf8.txt": "ok line\nbad \u00ff\u00fe byte\n",
    "utf16_bom.txt": "h\u00e9llo\nw\u00f6rld\n",
}


def build_corpus(root: Path) -> dict[str, Path]:
    """Repositories by path_with_namespace: the edge-case one and a few ordinary ones."""
    sub = init_repo(root / "submodule-source")
    sub_commit = commit_files(sub, {"x.txt": "x\n"})
    repos: dict[str, Path] = {}
    edge = init_repo(root / "acme" / "backend")
    commit_files(edge, edge_case_files(sub_commit), "edge cases")
    repos["acme/backend"] = edge
    tools = init_repo(root / "acme" / "tools" / "cli")
    commit_files(
        tools,
        {
            "cli.rs": 'fn main() {\n    println!("hi");\n}\n',
            "Cargo.toml": '[package]\nname = "cli"\n',
        },
    )
    repos["acme/tools/cli"] = tools
    other = init_repo(root / "other" / "lib", branch="develop")
    commit_files(
        other,
        {
            "lib.rb": "module Lib\n  VERSION = '1.0'\nend\n",
            "spec/lib_spec.rb": "describe Lib do\nend\n",
        },
    )
    repos["other/lib"] = other
    bad = init_repo(root / "quirks" / "bad-input")
    commit_files(bad, bad_input_files(), "bad input")
    repos["quirks/bad-input"] = bad
    return repos


def expected_id(project_id: int, path: str, line_number: int) -> str:
    """A line document's id as docs/architecture.md documents it, computed here, not by the pipeline."""
    digest = hashlib.blake2b(path.encode(), digest_size=16).hexdigest()
    return f"{project_id}-{digest}-{line_number}"


@dataclass
class Expected:
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _lines(text: str) -> list[str]:
    out = []
    for match in re.finditer(r"[^\n]*\n|[^\n]+\Z", text):
        line = match.group(0)
        if line.endswith("\n"):
            line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
        out.append(line)
    return out


def expected_documents(
    repo: Path,
    project_id: int,
    repository_name: str,
    branch: str,
    web_url: str,
    known_text: dict[str, str] | None = None,
    commit: str | None = None,
    visibility: str = "private",
) -> Expected:
    known_text = KNOWN_TEXT if known_text is None else known_text
    commit = commit or run_git(repo, "rev-parse", f"refs/heads/{branch}").strip()
    listing = run_git(
        repo, "-c", "core.quotepath=false", "ls-tree", "-r", "-z", "--full-tree", commit
    )
    expected = Expected()
    for record in listing.split("\x00"):
        if not record:
            continue
        meta, _, path = record.partition("\t")
        mode, type_, sha = meta.split()
        if type_ == "commit":
            expected.skipped[path] = "submodule"
            continue
        if mode == "120000":
            expected.skipped[path] = "symlink"
            continue
        if EXCLUDED.fullmatch(path):
            expected.skipped[path] = "excluded"
            continue
        data = _cat_blob(repo, sha)
        if len(data) > MAX_FILE_BYTES:
            expected.skipped[path] = "too_large"
            continue
        if LFS_POINTER.fullmatch(data):
            expected.skipped[path] = "lfs_pointer"
            continue
        utf16 = data.startswith((b"\xff\xfe", b"\xfe\xff"))  # a BOM: text full of NULs
        if b"\x00" in data[:8000] and not utf16:
            expected.skipped[path] = "binary"
            continue
        text = known_text.get(path) or data.decode("utf-8")
        if text.startswith("\ufeff"):
            text = text[1:]
        for number, line in enumerate(_lines(text), start=1):
            expected.documents[expected_id(project_id, path, number)] = {
                "project_id": project_id,
                "visibility": visibility,
                "repository_name": repository_name,
                "branch": branch,
                "commit_sha": commit,
                "file_path": path,
                "blob_sha": sha,
                "line_number": number,
                "line_content": line[:MAX_LINE_CHARS],
                "line_truncated": len(line) > MAX_LINE_CHARS,
                "web_url": f"{web_url}/-/blob/{commit}/{quote(path)}#L{number}",
            }
    return expected


def _cat_blob(repo: Path, sha: str) -> bytes:
    import subprocess

    return subprocess.run(
        ["git", "-C", str(repo), "cat-file", "blob", sha], check=True, capture_output=True
    ).stdout


def _tree(repo: Path, commit: str) -> dict[str, tuple[str, str]]:
    listing = run_git(
        repo, "-c", "core.quotepath=false", "ls-tree", "-r", "-z", "--full-tree", commit
    )
    out = {}
    for record in listing.split("\x00"):
        if record:
            meta, _, path = record.partition("\t")
            mode, _type, sha = meta.split()
            out[path] = (mode, sha)
    return out


def expected_after_runs(
    repo: Path,
    indexed_commits: list[str],
    project_id: int,
    repository_name: str,
    branch: str,
    web_url: str,
    known_text: dict[str, str] | None = None,
) -> Expected:
    """The index after runs at each of indexed_commits, incremental from the first one.

    A line's commit_sha (and link) is the indexed commit at which its file last changed:
    unchanged files are not rewritten. Successive indexed commits are compared as trees,
    so rewritten histories need nothing special.
    """
    head = indexed_commits[-1]
    expected = expected_documents(
        repo, project_id, repository_name, branch, web_url, known_text, commit=head
    )
    trees = [_tree(repo, c) for c in indexed_commits]
    written_at: dict[str, str] = {}
    for path in trees[-1]:
        i = len(trees) - 1
        while i > 0 and trees[i - 1].get(path) == trees[i][path]:
            i -= 1
        written_at[path] = indexed_commits[i]
    for doc in expected.documents.values():
        commit = written_at[doc["file_path"]]
        doc["commit_sha"] = commit
        doc["web_url"] = (
            f"{web_url}/-/blob/{commit}/{quote(doc['file_path'])}#L{doc['line_number']}"
        )
    return expected


# -- a repository whose .gitattributes make `git archive` differ from the tree ----------------

#: Left out of archives by export-ignore: a folder, and files that sort last in the tree.
EXPORT_IGNORED_PREFIXES = ("tests/", "zz-ignored/", "zzz-")
#: Files whose archive copy is not their blob (export-subst, ident, working-tree-encoding, eol).
REWRITTEN_BY_ARCHIVE = ("version.txt", "src/ident.c", "utf16.txt", "windows.bat")
LFS_TRACKED = "assets/model.bin"
ATTRIBUTES = (
    "/tests export-ignore\n"
    "/zz-ignored export-ignore\n"
    "/zzz-* export-ignore\n"
    "version.txt export-subst\n"
    "src/ident.c ident\n"
    "utf16.txt text working-tree-encoding=UTF-16LE-BOM\n"
    "windows.bat text eol=crlf\n"
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
)


def _use_git_lfs(repo: Path) -> None:
    """git-lfs's filters in this repository only (what `git lfs install --local` writes):
    `git add` stores a pointer and the object, `git archive` puts the object back."""
    run_git(repo, "config", "filter.lfs.clean", "git-lfs clean -- %f")
    run_git(repo, "config", "filter.lfs.smudge", "git-lfs smudge -- %f")
    run_git(repo, "config", "filter.lfs.process", "git-lfs filter-process")
    run_git(repo, "config", "filter.lfs.required", "true")


def attributes_files(modules: int = 240) -> dict[str, FileSpec]:
    """Enough files for three tree pages of 100, each kind of .gitattributes rewrite, an LFS
    object, and export-ignored files, some of which sort last in the tree."""
    files: dict[str, FileSpec] = {".gitattributes": ATTRIBUTES}
    for i in range(modules):
        files[f"src/pkg{i // 20:02d}/mod{i:03d}.py"] = (
            f"VALUE_{i} = {i}\n\ndef f{i}():\n    return {i}\n"
        )
    files.update(
        {
            "version.txt": "commit: $Format:%H$\ndate: $Format:%cI$\nplain line\n",
            "src/ident.c": "/* $Id$ */\nint main(void) { return 0; }\n",
            # Written in UTF-16LE with a BOM; git stores it as UTF-8.
            "utf16.txt": "\ufeffgrüße\nçà et là\n".encode("utf-16-le"),
            "windows.bat": "@echo off\necho hello\n",
            LFS_TRACKED: bytes(range(256)) * 40,  # stored as a pointer, the object beside
            "tests/test_app.py": "def test_app():\n    assert True\n",
            "tests/data/fixture.json": '{"a": 1}\n',
            "zz-ignored/notes.md": "# ignored by archives\nstill in the tree\n",
            # Enough of them that the tree's last pages hold only files the archive lacks.
            **{f"zz-ignored/data/row{i:03d}.csv": f"{i},{i * i}\n" for i in range(150)},
            "zzz-last.txt": "the last entry of the tree\n",
            "zzz-really-last.txt": "after it\n",
        }
    )
    return files


def build_attributes_repo(path: Path) -> Path:
    repo = init_repo(path)
    _use_git_lfs(repo)
    commit_files(repo, attributes_files(), "gitattributes at work")
    return repo
