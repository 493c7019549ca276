"""The Python half of the CSV import: the header, and the bytes handed to COPY."""

from collections.abc import AsyncIterator

import pytest

from coupon.households import CopyStream, CsvFormatError, Header, parse_header


def test_header_in_the_spec_order() -> None:
    assert parse_header(b"national_id,province,members,decile") == Header(4, 1, 2, 3, 4, None)


def test_header_in_any_order_with_status_bom_quotes_and_crlf() -> None:
    header = parse_header(b'\xef\xbb\xbf"Status",decile,members,province,national_id\r')
    assert (header.national_id, header.province, header.members, header.decile) == (5, 4, 3, 2)
    assert header.status == 1


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"0084575948,IR-15,3,2",
        b"id,name",
        b"national_id,province,members",
        b"national_id,province,members,decile,decile",
        b"\xff\xfe",
    ],
)
def test_unusable_headers(line: bytes) -> None:
    with pytest.raises(CsvFormatError):
        parse_header(line)


async def blocks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def copy_text(*parts: bytes) -> tuple[Header, bytes]:
    stream = CopyStream(blocks(*parts))
    header = await stream.read_header()
    return header, b"".join([b async for b in stream.lines()])


async def test_copy_stream_splits_off_the_header_across_blocks() -> None:
    header, body = await copy_text(b"national_id,prov", b"ince,members,decile\n1,2", b",3,4\n")
    assert header.width == 4
    assert body == b"1,2,3,4\n"


async def test_copy_stream_escapes_what_copy_text_format_would_interpret() -> None:
    _, body = await copy_text(
        b"national_id,province,members,decile\r\n", b"a\\N,b\x01c\r", b"\nd,e\r\n"
    )
    # backslash doubled, the \x01 delimiter as an octal escape, CR LF split over blocks -> LF
    assert body == b"a\\\\N,b\\001c\nd,e\n"


async def test_copy_stream_rejects_binary_and_non_utf8() -> None:
    for bad in (b"\x00\x01", b"\xff\xfe,1"):
        stream = CopyStream(blocks(b"national_id,province,members,decile\n", bad))
        await stream.read_header()
        with pytest.raises(CsvFormatError):
            _ = [b async for b in stream.lines()]
