"""Text -> lines, numbered the way GitLab numbers them (only \\n ends a line)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_MAX_LINE_CHARS = 4096


def _one_separator_per_line(text: str) -> str | None:
    """The text with CRLF folded and the final newline dropped; None for a text of no lines.

    Every line counts: blank ones, and a last one without a newline. CRLF loses its CR; a
    lone CR is not a line end (as in git and GitLab) and stays in the line. An empty file
    has no lines; a file of one "\\n" has one empty line.
    """
    if not text:
        return None
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    return text[:-1] if text.endswith("\n") else text


def split_texts(texts: Sequence[str]) -> pa.ListArray:
    """The lines of each text, one list per text, split by Arrow in one pass for all texts."""
    prepared = pa.array([_one_separator_per_line(t) for t in texts], pa.string())
    lists = pc.split_pattern(prepared, "\n")
    # A text of no lines came out as a null list: make it an empty one.
    return pa.ListArray.from_arrays(lists.offsets, lists.values)


def count_lines(text: str) -> int:
    """Same count as split_texts gives, without building the lines."""
    if not text:
        return 0
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def cap_lines(lines: pa.StringArray, max_chars: int) -> tuple[pa.StringArray, pa.BooleanArray]:
    """Lines cut to max_chars characters (code points), with a flag for each one that was cut."""
    truncated = pc.greater(pc.utf8_length(lines), max_chars)
    if pc.any(truncated).as_py():
        lines = pc.utf8_slice_codeunits(lines, 0, max_chars)
    return lines, truncated
