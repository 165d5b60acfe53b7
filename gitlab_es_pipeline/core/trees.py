"""Whether a manifest accounts for the whole tree at its commit.

GitLab's tree listing gives no count, so a listing that ends early without an error looks
complete. Two facts the listing cannot fake tell otherwise: every listed folder has git's object
id, which hashes its complete list of entries (name, mode, id), so a folder whose listed entries
hash to something else was listed in part; and every file of the archive must be in the tree.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gitlab_es_pipeline.core.blobs import ALGORITHMS, object_id

MODE_TREE = "040000"
_SHOWN = 10  # paths kept as examples of each problem


def _sort_key(name: str, mode: str) -> bytes:
    # git orders a tree's entries by name bytes, a folder's name as if it ended with "/".
    return name.encode() + (b"/" if mode == MODE_TREE else b"")


def tree_object_id(children: Iterable[tuple[str, str, str]], algorithm: str = "sha1") -> str:
    """git's id of the tree holding exactly these (name, mode, id) entries."""
    body = b"".join(
        mode.lstrip("0").encode() + b" " + name.encode() + b"\x00" + bytes.fromhex(sha)
        for name, mode, sha in sorted(children, key=lambda c: _sort_key(c[0], c[1]))
    )
    return object_id("tree", body, algorithm)


def _faithful(name: str) -> bool:
    # A name GitLab could not give as UTF-8 arrives altered: its folder cannot be hashed.
    return "\ufffd" not in name and not any("\ud800" <= c <= "\udfff" for c in name)


@dataclass(frozen=True)
class FolderCheck:
    verified: int
    unverifiable: int
    incomplete: list[str]  # folders whose listed entries do not hash to their id


def check_folders(
    folders: Mapping[str, str], entries: Iterable[tuple[str, str, str]]
) -> FolderCheck:
    """Every listed folder against its id. `entries` are the listed (path, mode, id) of files,
    links and submodules; `folders` maps each listed folder's path to its id. The root has no
    id in the listing: its own entries are vouched for by the archive instead."""
    children: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for path, mode, sha in entries:
        parent, _, name = path.rpartition("/")
        children[parent].append((name, mode, sha))
    for path, sha in folders.items():
        parent, _, name = path.rpartition("/")
        children[parent].append((name, MODE_TREE, sha))
    verified, unverifiable, incomplete = 0, 0, []
    for path, sha in sorted(folders.items()):
        listed = children.get(path, [])
        algorithm = ALGORITHMS.get(len(sha))
        if algorithm is None or not all(_faithful(name) for name, _, _ in listed):
            unverifiable += 1
        elif tree_object_id(listed, algorithm) == sha.lower():
            verified += 1
        else:
            incomplete.append(path)
    return FolderCheck(verified, unverifiable, incomplete)


@dataclass
class TreeAccount:
    """What one run saw of the tree, for the manifest's check (`problems()` empty = complete)."""

    source: str  # "tree listing", or "comparison" (the indexed manifest plus GitLab's changes)
    entries_in_pages: int = 0  # files, links and submodules in the listing's pages
    folders_in_pages: int = 0
    manifest_entries: int = 0
    folders: FolderCheck | None = None
    not_in_tree: int = 0  # archive files the listing lacks
    not_in_tree_examples: list[str] = field(default_factory=list)
    to_read: int = 0  # entries whose content this run needed
    read: int = 0  # of those, read and checked against their blob id
    read_twice: int = 0

    def archive_file_not_listed(self, path: str) -> None:
        self.not_in_tree += 1
        if len(self.not_in_tree_examples) < _SHOWN:
            self.not_in_tree_examples.append(path)

    def problems(self) -> list[str]:
        found = []
        if self.source == "tree listing" and self.entries_in_pages != self.manifest_entries:
            found.append(
                f"the tree pages listed {self.entries_in_pages} entries, the manifest holds "
                f"{self.manifest_entries}"
            )
        if self.not_in_tree:
            found.append(
                f"{self.not_in_tree} files of the archive are not in the tree listing (it "
                f"ended early?), e.g. {', '.join(map(repr, self.not_in_tree_examples))}"
            )
        if self.folders is not None and self.folders.incomplete:
            shown = ", ".join(repr(p) for p in self.folders.incomplete[:_SHOWN])
            found.append(
                f"{len(self.folders.incomplete)} folders were listed in part (their entries do "
                f"not hash to their tree id): {shown}"
            )
        if self.read != self.to_read:
            found.append(f"{self.read} of the {self.to_read} files to read were read")
        if self.read_twice:
            found.append(f"{self.read_twice} files were read twice")
        return found

    def metadata(self) -> dict[str, int | str]:
        meta: dict[str, int | str] = {
            "source": self.source,
            "tree_entries_in_pages": self.entries_in_pages,
            "tree_folders_in_pages": self.folders_in_pages,
            "manifest_entries": self.manifest_entries,
            "archive_files_not_in_tree": self.not_in_tree,
            "files_to_read": self.to_read,
            "files_read_and_verified": self.read,
            "files_read_twice": self.read_twice,
        }
        if self.folders is not None:
            meta.update(
                folders_verified=self.folders.verified,
                folders_unverifiable=self.folders.unverifiable,
                folders_listed_in_part=len(self.folders.incomplete),
            )
        return meta
