"""Bytes of a blob -> text, the way a reader of the code would see it."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from charset_normalizer import from_bytes

# git's own rule (xdiff's buffer_is_binary): a NUL in the first 8,000 bytes means binary.
BINARY_SNIFF_BYTES = 8000

_UNICODE_BOMS: tuple[tuple[bytes, str], ...] = (
    # UTF-32 first: its little-endian BOM starts with UTF-16's.
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


@dataclass(frozen=True)
class DecodedText:
    text: str
    encoding: str


def bom_encoding(data: bytes) -> str | None:
    """The encoding a byte-order mark announces, if the blob starts with one."""
    for bom, encoding in _UNICODE_BOMS:
        if data.startswith(bom):
            return encoding
    return None


def is_binary(data: bytes) -> bool:
    """git's test, except that a UTF-16/32 BOM marks text (those files are full of NULs)."""
    if bom_encoding(data) in ("utf-16", "utf-32"):
        return False
    return b"\x00" in data[:BINARY_SNIFF_BYTES]


def decode(data: bytes) -> DecodedText:
    """Decode without ever dropping a file: BOM, then strict UTF-8, then charset detection.

    Whatever cannot be decoded becomes U+FFFD, so a bad byte costs one character, not the file.
    """
    announced = bom_encoding(data)
    if announced is not None:
        # The "-sig"/BOM-aware codecs drop the mark itself.
        return DecodedText(data.decode(announced, errors="replace"), announced)
    try:
        return DecodedText(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError:
        pass
    encoding = detect_legacy_encoding(data)
    if encoding is None:
        return DecodedText(data.decode("utf-8", errors="replace"), "utf-8")
    return DecodedText(data.decode(encoding, errors="replace"), encoding)


# Detectors struggle to tell the Latin code pages apart on short texts; Western European
# (cp1252, a superset of latin-1's printable range) is by far the most common legacy encoding
# in source code, so it wins whenever it reads nearly as cleanly as the detector's favourite.
_PREFERRED_LEGACY = "cp1252"
_PREFERENCE_MARGIN = 0.05


def detect_legacy_encoding(data: bytes) -> str | None:
    """The most plausible non-UTF-8 encoding of data, or None when nothing fits."""
    matches = list(from_bytes(data))
    if not matches:
        return None
    best = min(matches, key=lambda m: (m.chaos, -m.coherence))
    for match in matches:
        if match.encoding == _PREFERRED_LEGACY and match.chaos <= best.chaos + _PREFERENCE_MARGIN:
            return _PREFERRED_LEGACY
    if best.encoding in ("utf_8", "utf-8"):
        return None
    return best.encoding
