"""The stdio shim: run the real server as a child and relay newline-delimited JSON-RPC.

One thread per direction reads a line, asks the :class:`~firewall.pipeline.Inspector`, and
writes what it says. Blocking reads on pipes wake faster than an event loop, and each
direction keeps its order while never waiting on the other. The child's stderr is the
shim's own, so it passes through untouched.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from typing import BinaryIO

from ..pipeline import C2S, S2C, Inspector
from ..session import Session

_READ_CHUNK = 1 << 16
_TAIL_ID = re.compile(rb'"id"\s*:\s*(-?\d{1,18}|"(?:[^"\\]|\\.){0,256}")\s*}\s*$')
_HEAD_ID = re.compile(rb'^\s*\{\s*"jsonrpc"\s*:\s*"2\.0"\s*,\s*"id"\s*:\s*(-?\d{1,18}|"(?:[^"\\]|\\.){0,256}")')


class _Writer:
    """A pipe end written whole-message-at-a-time by several threads."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self.broken = False

    def write(self, data: bytes) -> bool:
        if not data.endswith(b"\n"):
            data += b"\n"
        with self._lock:
            if self.broken:
                return False
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError:  # EPIPE and friends: the peer is gone
                self.broken = True
                return False
        return True

    def close(self) -> None:
        with self._lock:
            self.broken = True
            try:
                os.close(self.fd)
            except OSError:
                pass


class StdioShim:
    """Runs ``command`` as the MCP server and relays between our stdio and its stdio."""

    def __init__(
        self,
        command: list[str],
        inspector: Inspector,
        session: Session,
        *,
        max_message_bytes: int,
        shutdown_grace: float = 5.0,
        client_in: BinaryIO | None = None,
        client_out_fd: int | None = None,
    ) -> None:
        self._command = command
        self._inspector = inspector
        self._session = session
        self._limit = max_message_bytes
        self._grace = shutdown_grace
        self._client_in = client_in or os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=_READ_CHUNK)
        self._client_out = _Writer(client_out_fd if client_out_fd is not None else os.dup(sys.stdout.fileno()))
        self._child: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()

    def run(self) -> int:
        """Relay until the server exits; return the exit status to pass on."""
        try:
            child = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        except OSError as exc:
            print(f"mcpfw: cannot start {self._command[0]!r}: {exc.strerror or exc}", file=sys.stderr)
            return 127 if isinstance(exc, FileNotFoundError) else 126
        self._child = child
        assert child.stdin is not None and child.stdout is not None
        server_in = _Writer(os.dup(child.stdin.fileno()))
        child.stdin.close()
        server_out = os.fdopen(os.dup(child.stdout.fileno()), "rb", buffering=_READ_CHUNK)
        child.stdout.close()

        from_client = threading.Thread(
            target=self._relay, args=(self._client_in, C2S, server_in, self._client_out), name="mcpfw-c2s", daemon=True
        )
        from_server = threading.Thread(
            target=self._relay, args=(server_out, S2C, self._client_out, server_in), name="mcpfw-s2c", daemon=True
        )
        previous = {sig: signal.signal(sig, self._forward_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            from_client.start()
            from_server.start()
            returncode = child.wait()
            # Deliver what the server wrote before it exited.
            from_server.join(timeout=2.0)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        server_in.close()
        self._client_out.close()
        if returncode < 0:
            return 128 - returncode
        return returncode

    # -- relaying ------------------------------------------------------------------

    def _relay(self, source: BinaryIO, direction: str, forward_to: _Writer, reply_to: _Writer) -> None:
        inspector, session, limit = self._inspector, self._session, self._limit
        try:
            while True:
                line = source.readline(limit + 1)
                if not line:
                    break
                if len(line) > limit and not line.endswith(b"\n"):
                    self._refuse_oversized(source, line, direction, reply_to, forward_to)
                    continue
                if not line.strip():
                    continue
                outcome = inspector.inspect(line, direction, session)
                if outcome.reply is not None:
                    reply_to.write(outcome.reply)
                if outcome.forward is not None and not forward_to.write(outcome.forward):
                    break
        except (OSError, ValueError):
            pass
        finally:
            if direction == C2S:
                self._client_closed(forward_to)
            else:
                # The server closed its output: it is done, so the client's side ends too.
                self._client_out.close()
                self._stop_child()

    def _refuse_oversized(self, source: BinaryIO, head: bytes, direction: str, reply_to: _Writer, forward_to: _Writer) -> None:
        size = len(head)
        tail = head[-512:]
        while not tail.endswith(b"\n"):
            chunk = source.readline(_READ_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            tail = (tail + chunk)[-512:]
        reply = self._inspector.refuse_oversized(size, self._limit, direction, self._session)
        msg_id = _recover_id(head, tail)
        if direction == S2C:
            # The client is waiting for an answer to this id: give it the error instead.
            if msg_id is not None and reply is not None:
                forward_to.write(reply.replace(b'"id":null', b'"id":' + msg_id, 1))
            return
        if reply is not None:
            if msg_id is not None:
                reply = reply.replace(b'"id":null', b'"id":' + msg_id, 1)
            reply_to.write(reply)

    # -- shutting down -------------------------------------------------------------

    def _client_closed(self, server_in: _Writer) -> None:
        """The client hung up: close the server's stdin, then make sure it exits."""
        server_in.close()
        threading.Thread(target=self._stop_child, name="mcpfw-reaper", daemon=True).start()

    def _stop_child(self) -> None:
        child = self._child
        if child is None or self._stopping.is_set():
            return
        self._stopping.set()
        for step in (None, child.terminate, child.kill):
            if step is not None:
                try:
                    step()
                except ProcessLookupError:
                    return
            try:
                child.wait(timeout=self._grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def _forward_signal(self, signum: int, _frame: object) -> None:
        child = self._child
        if child is not None and child.poll() is None:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass
            threading.Thread(target=self._stop_child, name="mcpfw-reaper", daemon=True).start()


def _recover_id(head: bytes, tail: bytes) -> bytes | None:
    """The id of a message too large to parse, when it sits where serialisers put it."""
    for pattern, text in ((_TAIL_ID, tail), (_HEAD_ID, head[:512])):
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None
