"""Text -> lines, numbered the way GitLab numbers them (only \\n ends a line)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_MAX_LINE_CHARS = 4096


def split_lines(text: str) -> list[str]:
    """Every line counts: blank ones, and a last one without a newline.

    CRLF loses its CR; a lone CR is not a line end (as in git and GitLab) and stays in the line.
    An empty file has no lines; a file of one "\\n" has one empty line.
    """
    if not text:
        return []
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def count_lines(text: str) -> int:
    """Same count as len(split_lines(text)), without building the lines."""
    if not text:
        return 0
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def cap_lines(lines: list[str], max_chars: int) -> tuple[pa.StringArray, pa.BooleanArray]:
    """Lines cut to max_chars characters (code points), with a flag for each one that was cut."""
    array = pa.array(lines, type=pa.string())
    truncated = pc.greater(pc.utf8_length(array), max_chars)
    if pc.any(truncated).as_py():
        array = pc.utf8_slice_codeunits(array, 0, max_chars)
    return array, truncated
