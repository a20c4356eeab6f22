"""The SSE parser: the HTML standard's line rules, whatever the chunking."""

from __future__ import annotations

import time

import pytest

from firewall.transports.http.sse import OversizedEvent, SseEvent, SseParser, format_event, format_id_only

BOM = b"\xef\xbb\xbf"

STREAMS = [
    # Python SDK servers: CRLF, a BOM first; a comment; a CR-only block; multi-line data
    b"\xef\xbb\xbfid: 1\r\ndata: {\"a\":1}\r\n\r\n: keep-alive\r\n\r\nevent: endpoint\rdata: /m?x=1\r\r"
    b"data: a\ndata: b\n\nretry: 100\nid\n\n",
    # TypeScript servers: LF, a priming event (id and empty data)
    b"id: 7\ndata: \n\ndata:x\n\ndata\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\"}\n\n",
]


def parse(stream: bytes, cuts: list[int], limit: int = 1000) -> list[SseEvent | OversizedEvent]:
    parser = SseParser(limit)
    out: list[SseEvent | OversizedEvent] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        out += parser.feed(stream[previous:cut])
        previous = cut
    return out


def fields(events: list[SseEvent | OversizedEvent]) -> list[tuple]:
    return [
        (type(e).__name__, getattr(e, "data", None), getattr(e, "event", None), getattr(e, "id", None), getattr(e, "retry", None))
        for e in events
    ]


def blocks(events: list[SseEvent | OversizedEvent]) -> list[tuple]:
    return [(e.raw, *f[1:]) if isinstance(e, SseEvent) else (e.size, e.head, e.tail) for e, f in zip(events, fields(events))]


def expected(stream: bytes, cuts: list[int]) -> list[tuple]:
    """The blocks of the whole stream; a block ending in a lone CR that a cut follows gets an LF."""
    out, offset = [], len(BOM) if stream.startswith(BOM) else 0  # (a leading BOM is no block's)
    for block in blocks(parse(stream, [])):
        offset += len(block[0])
        if offset in cuts and stream[offset - 1 : offset + 1] != b"\r\n" and block[0].endswith(b"\r"):
            block = (block[0] + b"\n", *block[1:])
        out.append(block)
    return out


@pytest.mark.parametrize("stream", STREAMS)
def test_every_split_gives_the_same_events(stream):
    for i in range(len(stream) + 1):
        assert blocks(parse(stream, [i])) == expected(stream, [i]), i
        for j in range(i, min(len(stream), i + 5) + 1):
            assert blocks(parse(stream, [i, j])) == expected(stream, [i, j]), (i, j)


def test_a_crlf_split_after_a_blank_line_stays_with_its_block():
    stream = b"data: a\r\n\r\ndata: b\n\n"
    for cuts in ([], [10], list(range(1, len(stream)))):
        assert [e.raw for e in parse(stream, cuts)] == [b"data: a\r\n\r\n", b"data: b\n\n"], cuts
    # A lone CR ending a block is passed on at once as CRLF: a client reads the same line end.
    assert [e.raw for e in parse(b"data: a\r\rdata: b\r\r", [9])] == [b"data: a\r\r\n", b"data: b\r\r\n"]
    assert [e.raw for e in parse(b"data: a\r\r\ndata: b\r\r", [9])] == [b"data: a\r\r\n", b"data: b\r\r\n"]


def test_field_rules():
    events = parse(STREAMS[0], [])
    assert fields(events) == [
        ("SseEvent", '{"a":1}', None, "1", None),
        ("SseEvent", None, None, None, None),  # a comment dispatches nothing
        ("SseEvent", "/m?x=1", "endpoint", None, None),
        ("SseEvent", "a\nb", None, None, None),
        ("SseEvent", None, None, "", 100),
    ]
    lf = fields(parse(STREAMS[1], []))
    assert lf[0] == ("SseEvent", "", None, "7", None)  # priming: id with empty data
    assert lf[1][1] == "x" and lf[2][1] == ""  # no space after the colon; a bare field name


@pytest.mark.parametrize("stream", STREAMS)
def test_unchanged_events_keep_their_bytes(stream):
    events = parse(stream, [len(stream) // 3, len(stream) // 2])
    assert b"".join(e.raw for e in events) == stream.removeprefix(BOM)  # CRLF, CR and LF kept as they came


@pytest.mark.parametrize("cut", [None, 1, 2, 3, 4])
def test_a_leading_bom_is_no_part_of_the_first_block(cut):
    """The firewall may write an event of its own first (a denial): a BOM kept in the first
    block's bytes would then sit inside the client's stream and spoil the field name, so
    the allowed answer behind the denial was lost to the client."""
    stream = BOM + b"data: {}\n\n"
    (event,) = parse(stream, [] if cut is None else [cut])
    assert event.raw == b"data: {}\n\n" and event.data == "{}"


@pytest.mark.parametrize("cut", [None, -1])
def test_the_limit_is_on_the_bytes_received(cut):
    """A block of exactly the limit ending in a lone CR passed in one read but was refused when a
    read ended at its last CR (the LF the parser adds counted against the limit)."""
    stream = b"data: " + b"x" * 91 + b"\r\r"  # 99 bytes
    stream += b"data: " + b"y" * 92 + b"\r\r"  # exactly the limit: 100
    events = parse(stream, [] if cut is None else [len(stream) + cut], limit=100)
    assert [type(e).__name__ for e in events] == ["SseEvent", "SseEvent"], cut


def test_an_unfinished_block_is_held_back():
    parser = SseParser(1000)
    assert parser.feed(b"data: {\"jsonrpc\"") == []
    assert parser.pending_bytes > 0
    (event,) = parser.feed(b":\"2.0\"}\n\n")
    assert event.data == '{"jsonrpc":"2.0"}'


def test_oversized_blocks_are_dropped_and_parsing_goes_on():
    big = b"data: {\"jsonrpc\":\"2.0\",\"id\":42,\"result\":\"" + b"y" * 5000 + b"\"}\r\n\r\n"
    stream = big + b"data: small\r\n\r\n"
    for cuts in ([], [100], [100, 3000], [len(big) - 1], [len(big) - 2], [len(big) - 3, len(big) - 1]):
        events = parse(stream, cuts)
        assert isinstance(events[0], OversizedEvent) and events[0].size == len(big), cuts
        assert b'"id":42' in events[0].head and events[0].tail == big[-512:]
        assert events[1].raw == b"data: small\r\n\r\n"


def test_a_bom_is_stripped_only_at_the_start_of_the_stream():
    stream = b"event:" + b"x" * 70 + b"\n\n" + b"\xef\xbb\xbfdata: {}\n\n"
    for i in range(len(stream) + 1):
        oversized, event = parse(stream, [i], limit=68)
        assert oversized.size == 78 and (event.data, event.odd) == (None, True), i


def _trickle_cpu(prefix: bytes, pending: int, feeds: int) -> float:
    parser = SseParser(1 << 30)
    parser.feed(prefix + b"data: " + b"x" * pending)
    start = time.process_time()
    for _ in range(feeds):
        parser.feed(b"x")
    return time.process_time() - start


# Plain finds (LF streams) and the regex (once a CR was seen); sizes keep a regression to ~2 s.
@pytest.mark.parametrize(("prefix", "pending", "feeds"), [(b"", 1 << 20, 20000), (b"id: 1\r\n", 1 << 16, 2000)])
def test_bytes_trickling_in_are_searched_once(prefix, pending, feeds):
    """Bytes added one by one to a long unfinished line cost what they cost after a short one
    (a parser that searched the line again on every feed took 30 to 700 times longer)."""
    short = min(_trickle_cpu(prefix, 0, feeds) for _ in range(3))
    assert any(_trickle_cpu(prefix, pending, feeds) < 5 * short + 0.01 for _ in range(3))


def test_format():
    assert format_event(b'{"a":1}', event_id="5") == b'id: 5\ndata: {"a":1}\n\n'
    assert format_event("a\nb", event="endpoint", retry=10) == b"event: endpoint\nretry: 10\ndata: a\ndata: b\n\n"
    (event,) = SseParser(100).feed(format_event("x\ny", event_id="1"))
    assert (event.data, event.id) == ("x\ny", "1")
    assert format_id_only("9") == b"id: 9\n\n"
