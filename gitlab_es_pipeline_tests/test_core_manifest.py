"""Manifests: round trip, summaries, classification against the indexed one, exact deletes."""

import pytest

from gitlab_es_pipeline.core.documents import RepositorySnapshot, document_id
from gitlab_es_pipeline.core.manifest import (
    BuildMode,
    ManifestEntry,
    ManifestHeader,
    classify,
    current_entries,
    manifest_table,
    outcome_in_words,
    snapshot_of,
    stale_document_ids,
    summarize,
)

SNAPSHOT = RepositorySnapshot(
    7, "acme/backend", "main", "c" * 40, "https://gitlab.example.com/acme/backend"
)
HEADER = ManifestHeader(SNAPSHOT, BuildMode.INCREMENTAL, "b" * 40, "max_file_bytes=1")


def text(path: str, blob: str, lines: int) -> ManifestEntry:
    return ManifestEntry(
        path, blob * 40, "100644", size=lines * 2, line_count=lines, encoding="utf-8"
    )


def fresh(path: str, blob: str) -> ManifestEntry:
    """As the tree listing makes it (RepositoryScan._tree_entry): content not known yet."""
    return ManifestEntry(path, blob * 40, "100644")


def test_round_trip_and_summary() -> None:
    entries = [
        text("b.py", "1", 3),
        text("a.py", "2", 1),
        ManifestEntry("img.png", "3" * 40, "100644", size=99, skip_reason="binary", change="added"),
        ManifestEntry("link", "4" * 40, "120000", skip_reason="symlink", change="unchanged"),
        ManifestEntry("gone.py", "5" * 40, "100644", change="deleted", previous_line_count=4),
    ]
    entries[0].change, entries[1].change = "modified", "added"
    table = manifest_table(HEADER, entries)
    assert table.column("path").to_pylist() == ["a.py", "b.py", "gone.py", "img.png", "link"]
    assert snapshot_of(table) == SNAPSHOT
    assert ManifestHeader.of(table) == HEADER
    summary = summarize(table)
    assert (summary.files, summary.indexed_files, summary.lines, summary.indexed_bytes) == (
        4,
        2,
        4,
        8,
    )
    assert summary.skipped == {"binary": 1, "symlink": 1}
    assert summary.changes == {"added": 2, "deleted": 1, "modified": 1, "unchanged": 1}
    assert set(current_entries(table)) == {"a.py", "b.py", "img.png", "link"}


def test_without_a_base_everything_is_added() -> None:
    entries = {"a": fresh("a", "1")}
    assert classify(entries, None) == []
    assert entries["a"].change == "added" and entries["a"].needs_content()


def test_classification_against_the_indexed_manifest() -> None:
    base = {
        "same.py": text("same.py", "1", 10),
        "edit.py": text("edit.py", "2", 10),
        "shrink.py": text("shrink.py", "3", 10),
        "old_name.py": text("old_name.py", "4", 6),
        "gone.py": text("gone.py", "5", 4),
        "was_text.dat": text("was_text.dat", "6", 3),
        "was_binary.dat": ManifestEntry(
            "was_binary.dat", "7" * 40, "100644", size=9, skip_reason="binary"
        ),
        "still_binary.png": ManifestEntry(
            "still_binary.png", "8" * 40, "100644", size=9, skip_reason="binary"
        ),
    }
    entries = {
        "same.py": fresh("same.py", "1"),
        "edit.py": fresh("edit.py", "a"),
        "shrink.py": fresh("shrink.py", "b"),
        "new_name.py": fresh("new_name.py", "4"),
        "new.py": fresh("new.py", "c"),
        "was_text.dat": fresh("was_text.dat", "d"),
        "was_binary.dat": fresh("was_binary.dat", "e"),
        "still_binary.png": fresh("still_binary.png", "8"),
    }
    deleted = classify(entries, base)
    changes = {p: e.change for p, e in entries.items()}
    assert changes == {
        "same.py": "unchanged",
        "edit.py": "modified",
        "shrink.py": "modified",
        "new_name.py": "renamed",
        "new.py": "added",
        "was_text.dat": "modified",
        "was_binary.dat": "modified",
        "still_binary.png": "unchanged",
    }
    assert [d.path for d in deleted] == ["gone.py"] and deleted[0].previous_line_count == 4
    assert entries["new_name.py"].previous_path == "old_name.py"
    # Unchanged files keep what the base learned from their content, and are not read again.
    assert (entries["same.py"].line_count, entries["same.py"].needs_content()) == (10, False)
    assert entries["still_binary.png"].skip_reason == "binary"
    assert {p for p, e in entries.items() if e.needs_content()} == {
        "edit.py",
        "shrink.py",
        "new_name.py",
        "new.py",
        "was_text.dat",
        "was_binary.dat",
    }

    # After reading: shrink.py has 7 lines, was_text.dat turned binary, edit.py grew.
    entries["shrink.py"].line_count = 7
    entries["was_text.dat"].skip_reason = "binary"
    entries["edit.py"].line_count = 12
    entries["new_name.py"].line_count = 6
    stale = set(stale_document_ids(7, [*entries.values(), *deleted]))
    expected = {document_id(7, "shrink.py", n) for n in (8, 9, 10)}
    expected |= {document_id(7, "old_name.py", n) for n in range(1, 7)}
    expected |= {document_id(7, "gone.py", n) for n in range(1, 5)}
    expected |= {document_id(7, "was_text.dat", n) for n in range(1, 4)}
    assert stale == expected


def test_a_rename_pairs_one_old_path_with_one_new_path() -> None:
    base = {"a.txt": text("a.txt", "1", 2), "b.txt": text("b.txt", "1", 2)}
    entries = {
        "c.txt": fresh("c.txt", "1"),
        "d.txt": fresh("d.txt", "1"),
        "e.txt": fresh("e.txt", "1"),
    }
    deleted = classify(entries, base)
    assert sorted(str(e.change) for e in entries.values()) == ["added", "renamed", "renamed"]
    assert sorted(e.previous_path for e in entries.values() if e.previous_path) == [
        "a.txt",
        "b.txt",
    ]
    assert deleted == []


@pytest.mark.parametrize("mode", ["100755", "120000"])
def test_a_mode_change_is_a_modification(mode: str) -> None:
    base = {"x": text("x", "1", 2)}
    entries = {"x": ManifestEntry("x", "1" * 40, mode)}
    classify(entries, base)
    assert entries["x"].change == "modified"


def test_a_write_with_nothing_to_do_says_it_is_up_to_date_in_words() -> None:
    a, b = "a" * 40, "b" * 40
    assert outcome_in_words(b, b, 0, 0, {"unchanged": 7}) == (
        f"up to date at {b[:12]}: this commit was indexed already"
    )
    assert outcome_in_words(b, a, 0, 0, {"modified": 1, "unchanged": 6}) == (
        f"up to date at {b[:12]}: no indexed file changed since {a[:12]}"
    )
    assert outcome_in_words(b, a, 12, 3, {"added": 1, "deleted": 1, "unchanged": 5}) == (
        f"indexed {b[:12]} (from {a[:12]}): 12 documents written, 3 deleted; "
        "tree entries 1 added, 1 deleted"
    )
    assert outcome_in_words(a, None, 1234, 0, {"added": 2}) == (
        f"indexed {a[:12]} (from nothing): 1,234 documents written, 0 deleted; tree entries 2 added"
    )
