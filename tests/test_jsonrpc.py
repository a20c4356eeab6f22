"""Strict framing: every malformed or ambiguous frame gets a deliberate answer."""

import pytest

from firewall import errors
from firewall.jsonrpc import Invalid, Kind, Message, parse_frame


def parse(raw: bytes, **kw):
    opts = {"max_bytes": 1 << 20, "max_depth": 64, "max_batch": 10} | kw
    return parse_frame(raw, **opts)


def only(raw: bytes, **kw):
    frame = parse(raw, **kw)
    assert not frame.batch and len(frame.items) == 1
    return frame.items[0]


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', Kind.REQUEST),
        (b'{"jsonrpc":"2.0","id":"a-1","method":"ping","params":{}}', Kind.REQUEST),
        (b'{"jsonrpc":"2.0","method":"notifications/initialized"}', Kind.NOTIFICATION),
        (b'{"jsonrpc":"2.0","id":1,"result":{}}', Kind.RESPONSE),
        (b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}', Kind.ERROR_RESPONSE),
        (b'{"jsonrpc":"2.0","id":-7,"error":{"code":1,"message":"x","data":[1]}}\r\n', Kind.ERROR_RESPONSE),
        # No id at all: taken as id null (the TypeScript SDK's transport writes it so)
        (b'{"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: No valid session ID provided"}}', Kind.ERROR_RESPONSE),
    ],
)
def test_valid_messages(raw, kind):
    item = only(raw)
    assert isinstance(item, Message) and item.kind is kind


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":', errors.PARSE_ERROR, "malformed JSON"),
        (b"not json", errors.PARSE_ERROR, "malformed JSON"),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":NaN}}', errors.PARSE_ERROR, "malformed"),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping\xff"}', errors.PARSE_ERROR, "invalid UTF-8"),
        (b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"ping"}', errors.PARSE_ERROR, "byte order mark"),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"s":"\\ud800"}}', errors.PARSE_ERROR, "faithful"),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"n":123456789012345678901234567890}}', errors.PARSE_ERROR, "faithful"),
        # Out of range: the policy would read null, the server Infinity.
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"amount":1e999}}', errors.PARSE_ERROR, "out of range"),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"amount":-1E400}}', errors.PARSE_ERROR, "out of range"),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"amount":1' + b"0" * 400 + b'.5}}', errors.PARSE_ERROR, "out of range"),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping"}', errors.INVALID_REQUEST, "duplicate key 'method'"),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":{"p":"/ok","p":"/etc"}}}', errors.INVALID_REQUEST, "duplicate key 'p'"),
        (b"42", errors.INVALID_REQUEST, "must be an object"),
        (b'"hello"', errors.INVALID_REQUEST, "must be an object"),
        (b"[]", errors.INVALID_REQUEST, "empty batch"),
        (b'{"id":1,"method":"ping"}', errors.INVALID_REQUEST, "jsonrpc"),
        (b'{"jsonrpc":"1.0","id":1,"method":"ping"}', errors.INVALID_REQUEST, "jsonrpc"),
        (b'{"jsonrpc":"2.0","id":1,"method":5}', errors.INVALID_REQUEST, "method"),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":"str"}', errors.INVALID_REQUEST, "params"),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","result":1}', errors.INVALID_REQUEST, "both"),
        (b'{"jsonrpc":"2.0","id":1}', errors.INVALID_REQUEST, "exactly one"),
        (b'{"jsonrpc":"2.0","result":{}}', errors.INVALID_REQUEST, "string or integer id"),
        (b'{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"m"}}', errors.INVALID_REQUEST, "integer code"),
    ],
)
def test_invalid_frames(raw, code, fragment):
    item = only(raw)
    assert isinstance(item, Invalid)
    assert item.code == code
    assert fragment in item.reason


@pytest.mark.parametrize("bad_id", [b"null", b"true", b"1.5", b"[1]", b'{"a":1}'])
def test_unusual_request_ids_are_refused(bad_id):
    item = only(b'{"jsonrpc":"2.0","id":' + bad_id + b',"method":"ping"}')
    assert isinstance(item, Invalid) and item.code == errors.INVALID_REQUEST
    assert item.id is None  # never echo an unusable id back


def test_id_is_recovered_for_replies_when_usable():
    item = only(b'{"jsonrpc":"2.0","id":"abc","method":""}')
    assert isinstance(item, Invalid) and item.id == "abc"


def test_size_limit():
    item = only(b'{"jsonrpc":"2.0","id":1,"method":"ping"}', max_bytes=10)
    assert isinstance(item, Invalid) and item.code == errors.MESSAGE_TOO_LARGE


def test_depth_limit_and_deep_bombs():
    nested = b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":' + b"[" * 80 + b"]" * 80 + b"}}"
    item = only(nested, max_depth=64)
    assert isinstance(item, Invalid) and "nesting" in item.reason
    for levels in (255, 256, 300, 900):  # orjson's own limit (255) must not change the answer
        deep = b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":' + b'{"b":' * levels + b"1" + b"}" * levels + b"}}"
        item = only(deep, max_depth=64)
        assert isinstance(item, Invalid) and item.code == errors.INVALID_REQUEST and "nesting" in item.reason
    bomb = b"[" * 200_000 + b"]" * 200_000
    item = only(bomb, max_bytes=1 << 20)
    assert isinstance(item, Invalid) and item.code == errors.INVALID_REQUEST


def test_batches_judge_each_element():
    frame = parse(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}, 5, {"jsonrpc":"2.0","method":"n"}]')
    assert frame.batch
    kinds = [type(i).__name__ for i in frame.items]
    assert kinds == ["Message", "Invalid", "Message"]
    too_many = b"[" + b",".join([b'{"jsonrpc":"2.0","method":"n"}'] * 11) + b"]"
    assert isinstance(only(too_many), Invalid)


# Frames in compact form (what the SDKs send) take orjson's fast path; everything it cannot
# read exactly as written must get the strict path's answer, to the letter.
AGREEMENT = [
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":[1,2.5,null,true]}}}',
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","name":"y"}}',  # duplicate key
    b'{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}',
    b'{"jsonrpc":"2.0","id":12345678901234567890123,"method":"ping"}',  # beyond 64 bits
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"s":"\\ud800"}}',  # lone surrogate
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":NaN}}',
    b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping"} trailing',
    b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"n"}]',
    b"[]",
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":' + b'[' * 80 + b']' * 80 + b'}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"k":"caf\xc3\xa9 \\u00e9 \\n"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"bad":"\xff"}}',
    b'{"jsonrpc":"2.0","id":-0,"method":"ping","params":{"f":1E5,"g":-0.0}}\n',
    b'  {"jsonrpc":"2.0","id":1,"method":"ping"}\r\n',
]


@pytest.mark.parametrize("raw", AGREEMENT)
def test_fast_path_agrees_with_the_strict_decoder(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    from firewall import jsonrpc

    def summary(frame):
        return frame.batch, [
            (type(i).__name__, getattr(i, "code", None), getattr(i, "reason", None), i.body) for i in frame.items
        ]

    fast = summary(parse(raw))
    monkeypatch.setattr(jsonrpc, "_compact_value", lambda _raw: jsonrpc._SLOW)
    assert summary(parse(raw)) == fast


def test_compact_frames_take_the_fast_path() -> None:
    from firewall import jsonrpc

    assert jsonrpc._compact_value(AGREEMENT[0]) is not jsonrpc._SLOW
    assert jsonrpc._compact_value(AGREEMENT[0] + b"\n") is not jsonrpc._SLOW
    for raw in AGREEMENT[1:8]:
        assert jsonrpc._compact_value(raw) is jsonrpc._SLOW, raw
