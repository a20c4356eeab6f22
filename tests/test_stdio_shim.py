"""The shim's own behaviour: transparency, bad input, lifecycle, fail-closed."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from firewall import errors

from support import RECORDER, everything_server, shim_command


class RawClient:
    """Writes raw lines to a shim and reads its raw output lines, with timeouts."""

    def __init__(self, command: list[str], **kw) -> None:
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, **kw)
        self._buf = b""

    def send(self, raw: bytes) -> None:
        self.proc.stdin.write(raw if raw.endswith(b"\n") else raw + b"\n")

    def recv(self, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise TimeoutError(f"no line from the shim; stderr: {self.proc.stderr.read1(4096) if self.proc.poll() is not None else ''}")
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                raise EOFError("shim closed stdout")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def recv_json(self, timeout: float = 10.0):
        return json.loads(self.recv(timeout))

    def recv_reply(self, msg_id, timeout: float = 10.0):
        """The next message answering ``msg_id``, skipping the server's notifications."""
        while True:
            msg = self.recv_json(timeout)
            if isinstance(msg, dict) and "method" not in msg and msg.get("id") == msg_id:
                return msg

    def close(self, timeout: float = 15.0) -> int:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(timeout=timeout)


def rows(db: Path, where: str = "true") -> list[dict]:
    with duckdb.connect(str(db), read_only=True) as con:
        cur = con.execute(f"SELECT * FROM decisions WHERE {where} ORDER BY ts, decision_id")
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]


@pytest.fixture
def recorder(tmp_path, audit_db):
    log = tmp_path / "received.log"
    client = RawClient(shim_command(audit_db, server=[sys.executable, str(RECORDER), str(log)]))
    yield client, log
    client.close()


def test_allowed_messages_pass_byte_for_byte(recorder):
    client, log = recorder
    lines = [
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}',
        b'{"jsonrpc": "2.0", "method": "notifications/initialized"}',
        b'{ "id" : "abc-\\u00e9", "jsonrpc":"2.0","method":"tools/call","params":{"name":"echo","arguments":{"x":1.50,"y":"\\ud83d\\ude00"},"_meta":{"progressToken":9,"vendor/extra":{"k":[1,2]}}},"x-unknown":true}',
        b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"abc-\\u00e9","reason":"user"}}',
        b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":9,"progress":1,"total":2}}',
    ]
    for line in lines:
        client.send(line)
    assert client.recv_json()["id"] == 1
    assert client.recv_json()["id"] == "abc-\u00e9"
    client.send(b'{"jsonrpc":"2.0","id":99,"method":"ping"}')
    assert client.recv_json()["id"] == 99
    received = log.read_bytes().splitlines()
    assert received[: len(lines)] == lines


def test_bad_input_gets_clear_errors_and_never_reaches_server(recorder, audit_db):
    client, log = recorder
    cases = [
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call"', errors.PARSE_ERROR, None),
        (b"[1,2", errors.PARSE_ERROR, None),
        (b"42", errors.INVALID_REQUEST, None),
        (b'"just a string"', errors.INVALID_REQUEST, None),
        (b'{"jsonrpc":"2.0","id":7,"method":"ping\xff\xfe"}', errors.PARSE_ERROR, None),
        # Well-formed but refused unread: answered with the id the client waits on.
        (b'{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"a","name":"b"}}', errors.INVALID_REQUEST, 8),
        (b'{"jsonrpc":"2.0","id":9,"method":"x","params":{"a":' + b"[" * 100 + b"]" * 100 + b"}}", errors.INVALID_REQUEST, 9),
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', errors.INVALID_REQUEST, None),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', errors.INVALID_REQUEST, None),
        (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', errors.INVALID_REQUEST, None),
        (b'{"jsonrpc":"2.0","id":"s1","method":12}', errors.INVALID_REQUEST, "s1"),
        (b'{"jsonrpc":"2.0","id":3,"method":"x","params":{"n":1e999999}}', None, 3),  # inf: allowed? see below
    ]
    for raw, code, expect_id in cases[:-1]:
        client.send(raw)
        reply = client.recv_json()
        assert reply["error"]["code"] == code, (raw, reply)
        assert reply["id"] == expect_id
        assert reply["error"]["data"]["decision_id"]
    # Nothing of that reached the server; a valid request afterwards still works.
    client.send(b'{"jsonrpc":"2.0","id":"after","method":"ping"}')
    assert client.recv_json()["id"] == "after"
    assert log.read_bytes().splitlines() == [b'{"jsonrpc":"2.0","id":"after","method":"ping"}']
    client.close()
    audited = rows(audit_db, "decision = 'deny'")
    assert len(audited) == len(cases) - 1
    assert all(r["error"] for r in audited)


def test_oversized_lines_are_refused_and_the_stream_recovers(tmp_path, audit_db):
    log = tmp_path / "received.log"
    config = tmp_path / "fw.yaml"
    config.write_text("limits:\n  max_message_bytes: 4096\n")
    client = RawClient(shim_command(audit_db, "--config", str(config), server=[sys.executable, str(RECORDER), str(log)]))
    try:
        big = b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x","arguments":{"blob":"' + b"A" * 200_000 + b'"}},"id":77}'
        client.send(big)
        reply = client.recv_json()
        assert reply["error"]["code"] == errors.MESSAGE_TOO_LARGE
        assert reply["id"] == 77  # recovered from the tail where serialisers put it
        client.send(b'{"jsonrpc":"2.0","id":2,"method":"ping"}')
        assert client.recv_json()["id"] == 2
    finally:
        client.close()
    assert b"AAAA" not in log.read_bytes()
    assert rows(audit_db, f"error_code = {errors.MESSAGE_TOO_LARGE}")


def test_batches_are_judged_per_element(recorder):
    client, log = recorder
    client.send(b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"run_command","arguments":{"command":"ls; rm -rf /"}}},7]')
    replies = {}
    for _ in range(2):
        msg = client.recv_json()
        for item in msg if isinstance(msg, list) else [msg]:
            replies[item["id"]] = item
    assert "result" in replies[1]
    assert replies[2]["error"]["code"] == errors.POLICY_DENIED
    assert replies[None]["error"]["code"] == errors.INVALID_REQUEST
    forwarded = json.loads(log.read_bytes().splitlines()[0])
    assert forwarded == [{"jsonrpc": "2.0", "id": 1, "method": "ping"}]


def test_engine_errors_fail_closed(tmp_path, audit_db):
    bundle = tmp_path / "broken"
    bundle.mkdir()
    # regorus's PyPI build has no crypto.* builtins: evaluating this must deny, not allow.
    (bundle / "p.rego").write_text('package mcpfw\n\ndecision := {"allow": crypto.sha256("x") != ""}\n')
    log = tmp_path / "received.log"
    client = RawClient(shim_command(audit_db, "--policy", str(bundle), server=[sys.executable, str(RECORDER), str(log)]))
    try:
        client.send(b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
        reply = client.recv_json()
        assert reply["error"]["code"] == errors.POLICY_ERROR
    finally:
        client.close()
    assert not log.exists() or log.read_bytes() == b""
    (row,) = rows(audit_db)
    assert row["decision"] == "deny" and row["reason_codes"] == ["policy_error"] and row["error"]


def test_undefined_decision_fails_closed(tmp_path, audit_db):
    bundle = tmp_path / "undefined"
    bundle.mkdir()
    (bundle / "p.rego").write_text('package mcpfw\n\ndecision := {"allow": true} if input.method == "never"\n')
    client = RawClient(shim_command(audit_db, "--policy", str(bundle), server=everything_server()))
    try:
        client.send(b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
        assert client.recv_reply(1)["error"]["code"] == errors.POLICY_ERROR
    finally:
        client.close()


def test_denied_response_reaches_client_as_error(tmp_path, audit_db):
    bundle = tmp_path / "deny-results"
    bundle.mkdir()
    (bundle / "p.rego").write_text(
        "package mcpfw\n\n"
        'default decision := {"allow": true}\n\n'
        'decision := {"allow": false, "reasons": [{"code": "no_echo_results", "message": "echo results are forbidden"}]} if {\n'
        '\tinput.kind == "response"\n\tinput.tool.name == "echo"\n}\n'
    )
    client = RawClient(shim_command(audit_db, "--policy", str(bundle), server=everything_server()))
    try:
        client.send(b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}')
        assert "result" in client.recv_reply(1)
        client.send(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
        client.send(b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}')
        reply = client.recv_reply(2)
        assert reply["id"] == 2 and reply["error"]["code"] == errors.POLICY_DENIED
        assert reply["error"]["data"]["reasons"] == [{"code": "no_echo_results", "message": "echo results are forbidden"}]
    finally:
        client.close()


def test_redacted_result_reaches_client(tmp_path, audit_db):
    bundle = tmp_path / "redact"
    bundle.mkdir()
    (bundle / "p.rego").write_text(
        "package mcpfw\n\n"
        'default decision := {"allow": true}\n\n'
        'decision := {"allow": true, "redact": [{"pointer": "/result/content/0/text", "pattern": "s[e]cret-[0-9]+", "replacement": "[HIDDEN]"}]} if {\n'
        '\tinput.kind == "response"\n\tinput.tool.name == "echo"\n}\n'
    )
    client = RawClient(shim_command(audit_db, "--policy", str(bundle), server=everything_server()))
    try:
        client.send(b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}')
        client.recv_reply(1)
        client.send(b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"the code is secret-1234 ok"}}}')
        reply = client.recv_reply(2)
        assert reply["result"]["content"][0]["text"] == "Echo: the code is [HIDDEN] ok"
    finally:
        client.close()
    (row,) = rows(audit_db, "kind = 'response' AND tool = 'echo'")
    assert row["decision"] == "redact"


def test_exit_status_and_stderr_pass_through(audit_db):
    script = "import sys; sys.stderr.write('server says bye\\n'); sys.exit(3)"
    proc = subprocess.run(shim_command(audit_db, server=[sys.executable, "-c", script]), input=b"", capture_output=True, timeout=30)
    assert proc.returncode == 3
    assert b"server says bye" in proc.stderr


def test_client_eof_shuts_server_down(audit_db):
    client = RawClient(shim_command(audit_db, server=everything_server()))
    client.send(b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}')
    client.recv_reply(1)
    assert client.close(timeout=15) == 0
    assert len(rows(audit_db)) == 2  # flushed on exit


def test_sigterm_stops_server_and_flushes_audit(audit_db):
    client = RawClient(shim_command(audit_db, server=everything_server()))
    client.send(b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}')
    client.recv_reply(1)
    client.send(b'{"jsonrpc":"2.0","id":2,"method":"ping"}')
    client.recv_reply(2)
    client.proc.send_signal(signal.SIGTERM)
    status = client.proc.wait(timeout=15)
    assert status in (0, 128 + signal.SIGTERM, -signal.SIGTERM)
    assert len(rows(audit_db)) == 4


def test_missing_server_command_is_reported(audit_db):
    proc = subprocess.run(shim_command(audit_db, server=["/nonexistent/mcp-server"]), input=b"", capture_output=True, timeout=30)
    assert proc.returncode == 127
    assert b"cannot start" in proc.stderr


def test_removed_list_elements_never_reach_client(tmp_path, audit_db):
    bundle = tmp_path / "hide-echo"
    bundle.mkdir()
    (bundle / "p.rego").write_text(
        "package mcpfw\n\n"
        'decision := {"allow": true, "remove": [sprintf("/result/tools/%d", [i]) |\n'
        '\tinput.kind == "response"\n\tinput.method == "tools/list"\n'
        '\tsome i, tool in input.result.tools\n\ttool.name in {"echo", "get-sum"}\n]}\n'
    )
    client = RawClient(shim_command(audit_db, "--policy", str(bundle), server=everything_server()))
    try:
        client.send(b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}')
        client.recv_reply(1)
        client.send(b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}')
        names = [t["name"] for t in client.recv_reply(2)["result"]["tools"]]
    finally:
        client.close()
    assert names and "echo" not in names and "get-sum" not in names
    assert "get-env" in names


# A server that answers every request with a large result, without waiting to be read.
_BULKY_SERVER = r"""
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if "id" in msg:
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"pad": "x" * 50000}}) + "\n")
        sys.stdout.flush()
"""


def test_a_client_that_writes_everything_before_reading_does_not_deadlock(audit_db):
    # 400 KB of requests and 10 MB of answers: more than the pipes hold both ways, so a
    # relay that blocked on a full pipe would stall client, shim and server for good.
    client = RawClient(shim_command(audit_db, server=[sys.executable, "-c", _BULKY_SERVER]))
    try:
        pad = "y" * 2000
        for i in range(200):
            client.send(json.dumps({"jsonrpc": "2.0", "id": i, "method": "ping", "params": {"_meta": {"pad": pad}}}).encode())
        answered = [client.recv_json(timeout=60)["id"] for _ in range(200)]
        assert answered == list(range(200))
    finally:
        client.close()


# A server that answers its first request, then offers 96 notifications of about
# 0.5 MB (48 MB) and leaves a marker once the last is written.
_FLOODING_SERVER = r"""
import json, sys
first = json.loads(sys.stdin.readline())
sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": first["id"], "result": {}}) + "\n")
sys.stdout.flush()
blob = json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": list(range(70000))}})
for _ in range(96):
    sys.stdout.write(blob + "\n")
sys.stdout.flush()
open(sys.argv[1], "w").close()
sys.stdin.read()
"""


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def test_a_client_that_does_not_read_holds_back_the_server_not_the_shims_memory(tmp_path, audit_db):
    marker = tmp_path / "all-written"
    client = RawClient(shim_command(audit_db, server=[sys.executable, "-c", _FLOODING_SERVER, str(marker)]))
    try:
        client.send(b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
        assert client.recv_reply(1)["result"] == {}
        # The client reads nothing for 7 s. The shim stops reading once 16 MiB wait for the
        # client: the server is held back with most of its 48 MB unsent, and the shim's
        # memory stops growing (what it holds is the backlog and the rows of the messages
        # it relayed, parsed: several times their size, until the audit writer turns them
        # into stored rows).
        time.sleep(4)
        held = _rss_mib(client.proc.pid)
        time.sleep(3)
        assert not marker.exists()
        assert _rss_mib(client.proc.pid) - held < 40
        got = [client.recv_json(timeout=60) for _ in range(96)]
        assert all(m["method"] == "notifications/message" and len(m["params"]["data"]) == 70000 for m in got)
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists()
    finally:
        client.close()


class _LineRecorder:
    """An inspector that records the lines it is asked about and the refusals."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.refused: list[int] = []

    def inspect(self, raw: bytes, direction: str, session: object, identity: object = None):
        from firewall.pipeline import Outcome

        self.lines.append(raw)
        return Outcome(None, None)

    def refuse_oversized(self, size: int, limit: int, direction: str, session: object, ends: bytes = b""):
        from firewall.pipeline import Outcome

        self.refused.append(size)
        return Outcome(None, None)


def test_lines_are_framed_alike_however_the_reads_split_them():
    import random

    from firewall.pipeline import C2S
    from firewall.session import ServerIdentity, Session
    from firewall.transports.stdio import StdioShim, _Input, _Output

    rng = random.Random(7)
    limit = 100
    session = Session(ServerIdentity(name="t"), transport="stdio", cwd="/", resolve_symlinks=False)
    read_end, write_end = os.pipe()
    sink = _Output(write_end)
    try:
        for _ in range(300):
            lines = [bytes(rng.choice(b"ab ") for _ in range(rng.choice((0, 1, 5, 99, 100, 101, 150, 250)))) for _ in range(rng.randint(1, 12))]
            stream = b"\n".join(lines) + b"\n"
            recorder = _LineRecorder()
            with open(os.devnull, "rb") as devnull:
                shim = StdioShim(["true"], recorder, session, max_message_bytes=limit, client_in=devnull, client_out_fd=os.dup(write_end))  # type: ignore[arg-type]
            inp = _Input(-1, C2S, forward=sink, reply=sink)
            at = 0
            while at < len(stream):
                step = rng.choice((1, 2, 7, 64, 101, 4096))
                shim._take(inp, stream[at : at + step])
                at += step
            # The limit counts the newline, as the parser does: a line of exactly ``limit``
            # bytes is refused here, where its id can still be recovered for the reply.
            assert recorder.lines == [line + b"\n" for line in lines if len(line) + 1 <= limit and line.strip()]
            assert recorder.refused == [len(line) + 1 for line in lines if len(line) + 1 > limit]
            assert not inp.partial and not inp.skipping
            os.close(shim._client_in)
            shim._client_out.close()
    finally:
        sink.close()
        os.close(read_end)


BROKEN_ANSWERS = r"""
import sys
for line in sys.stdin:
    if '"method":"tools/call"' in line:
        n = line.split('"id":')[1].split(",")[0].split("}")[0]
        if n == "1":  # an error whose code is not an integer
            sys.stdout.write('{"jsonrpc":"2.0","id":1,"error":{"code":"E","message":"bad"}}\n')
        else:  # a result with a duplicate key
            sys.stdout.write('{"jsonrpc":"2.0","id":%s,"result":{"content":[],"content":[]}}\n' % n)
        sys.stdout.flush()
"""


def test_a_broken_answer_reaches_the_client_as_an_error_for_its_request(tmp_path, audit_db):
    """The firewall cannot pass the server's malformed answer; the client must not wait for it forever."""
    server = tmp_path / "broken.py"
    server.write_text(BROKEN_ANSWERS)
    client = RawClient(shim_command(audit_db, server=[sys.executable, str(server)]))
    try:
        for n in (1, 2):
            client.send(b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"t","arguments":{}}}' % n)
            reply = client.recv_json()
            assert reply["id"] == n and reply["error"]["code"] == errors.INVALID_REQUEST
            assert "answer was refused" in reply["error"]["message"]
    finally:
        client.close()
