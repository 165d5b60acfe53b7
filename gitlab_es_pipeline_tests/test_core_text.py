"""Decoding, binary detection and line splitting."""

import codecs

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitlab_es_pipeline.core.decoding import BINARY_SNIFF_BYTES, decode, is_binary
from gitlab_es_pipeline.core.lines import cap_lines, count_lines, split_texts
from gitlab_es_pipeline_tests.corpus import LATIN1_TEXT


def test_utf8_is_decoded_as_is() -> None:
    decoded = decode("naïve café 日本\n".encode())
    assert decoded.text == "naïve café 日本\n"
    assert decoded.encoding == "utf-8"


def test_utf8_bom_is_dropped() -> None:
    assert decode(codecs.BOM_UTF8 + b"x = 1\n").text == "x = 1\n"


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_with_bom_is_text(codec: str) -> None:
    bom = codecs.BOM_UTF16_LE if codec.endswith("le") else codecs.BOM_UTF16_BE
    data = bom + "héllo\nwörld\n".encode(codec)
    assert not is_binary(data)
    assert decode(data).text == "héllo\nwörld\n"


def test_latin1_is_detected_not_dropped() -> None:
    decoded = decode(LATIN1_TEXT.encode("latin-1"))
    assert decoded.text == LATIN1_TEXT
    assert decoded.encoding != "utf-8"


def test_cyrillic_legacy_encoding_is_detected() -> None:
    text = "Привет мир, это тест кодировки для проверки детектора.\n" * 3
    assert decode(text.encode("cp1251")).text == text


def test_mostly_utf8_with_a_bad_byte_keeps_the_rest() -> None:
    decoded = decode("ünïcode ".encode() * 40 + b"\xff" + b" tail\n")
    assert decoded.text.endswith(" tail\n")
    assert decoded.text.count("\n") == 1


def test_binary_is_a_nul_in_the_first_8000_bytes() -> None:
    assert is_binary(b"a" * (BINARY_SNIFF_BYTES - 1) + b"\x00")
    assert not is_binary(b"a" * BINARY_SNIFF_BYTES + b"\x00")
    assert not is_binary(b"plain text\n")
    assert is_binary(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("", []),
        ("\n", [""]),
        ("a", ["a"]),
        ("a\n", ["a"]),
        ("a\nb", ["a", "b"]),
        ("a\n\n\nb\n\n", ["a", "", "", "b", ""]),
        ("a\r\nb\r\n", ["a", "b"]),
        ("a\r\n\r\nb", ["a", "", "b"]),
        ("mixed\r\nends\nhere", ["mixed", "ends", "here"]),
        ("lone\rcr\n", ["lone\rcr"]),
        ("trailing cr\r", ["trailing cr\r"]),
        ("form\x0cfeed\u2028sep\n", ["form\x0cfeed\u2028sep"]),
    ],
)
def test_split_texts(text: str, lines: list[str]) -> None:
    assert split_texts([text])[0].as_py() == lines
    assert count_lines(text) == len(lines)


def _reference_lines(text: str) -> list[str]:
    """The rule, written the plain way: \n ends a line, CRLF is one line end, the final
    newline ends the last line rather than starting an empty one."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


@given(
    st.lists(
        st.text(alphabet=st.sampled_from(["a", "é", "\n", "\r", " ", "\u2028"]), max_size=60),
        max_size=8,
    )
)
def test_split_texts_agrees_with_the_rule_and_count_lines(texts: list[str]) -> None:
    lists = split_texts(texts).to_pylist()
    assert lists == [_reference_lines(text) for text in texts]
    assert [len(lines) for lines in lists] == [count_lines(text) for text in texts]


def test_cap_lines_cuts_by_characters_and_flags() -> None:
    lines = pa.array(["short", "é" * 5, "x" * 6, "😀" * 7], pa.string())
    content, truncated = cap_lines(lines, 5)
    assert content.to_pylist() == ["short", "é" * 5, "x" * 5, "😀" * 5]
    assert truncated.to_pylist() == [False, False, True, True]
