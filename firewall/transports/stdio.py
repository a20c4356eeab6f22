"""The stdio shim: run the real server as a child and relay newline-delimited JSON-RPC.

One relay thread serves both directions. It waits (``poll``) on the client's input and
the server's output, splits what arrives into lines, asks the
:class:`~firewall.pipeline.Inspector` and writes what it says. Each direction keeps its
order. Writes never block the relay: what a pipe does not take at once waits in that
output's buffer until the pipe can take more, and an input whose destination already holds
``_BACKLOG`` bytes is not read meanwhile, so a client that writes many requests before
reading any answer does not stall client, shim and server (two threads blocking on full
pipes did). One thread rather than one per direction also because two threads taking turns
wake on different CPUs and find their caches cold: +0.52-0.55 ms median added latency a
call with two, +0.35-0.39 ms with one (bench/bench_stdio.py, 2 cores). The child's stderr is
the shim's own, so it passes through untouched.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import stat
import subprocess
import sys
import threading
from typing import BinaryIO

from ..pipeline import C2S, S2C, Inspector
from ..runtime import settle_heap
from ..session import Session

_READ_CHUNK = 1 << 16
_BACKLOG = 16 << 20  # bytes waiting for one output beyond which its sources are not read
_READABLE = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
_WRITABLE = select.POLLOUT | select.POLLHUP | select.POLLERR


class _Output:
    """A pipe end the relay writes whole messages to; what the pipe does not take at once
    waits in ``pending``. The relay thread writes; the lock only keeps a close from another
    thread (the end of :meth:`StdioShim.run`) from racing a write."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = bytearray()
        self._lock = threading.Lock()
        self.broken = False  # the reader is gone (EPIPE and friends)
        self.closed = False
        # Pipes and sockets are written without blocking; a terminal or a file (a person
        # trying the shim by hand) keeps blocking writes, which never wait for long.
        mode = os.fstat(fd).st_mode
        self._was_blocking: bool | None = None
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            self._was_blocking = os.get_blocking(fd)
            os.set_blocking(fd, False)

    def send(self, data: bytes) -> bool:
        """Write ``data`` (newline-terminated), or queue what the pipe cannot take now.
        False when the reader is gone or the output is closed."""
        if not data.endswith(b"\n"):
            data += b"\n"
        with self._lock:
            if self.broken or self.closed:
                return False
            if self.pending:
                self.pending += data
                return True
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                self.broken = True
                return False
            if written < len(data):
                self.pending += memoryview(data)[written:]
            return True

    def flush(self) -> None:
        """Write what is pending, as far as the pipe takes it now."""
        with self._lock:
            while self.pending and not self.broken and not self.closed:
                try:
                    written = os.write(self.fd, self.pending)
                except BlockingIOError:
                    return
                except OSError:
                    self.broken = True
                    self.pending.clear()
                    return
                del self.pending[:written]

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.pending.clear()
            with contextlib.suppress(OSError):
                if self._was_blocking:
                    os.set_blocking(self.fd, True)  # the description may be shared (our stdout)
                os.close(self.fd)


class _Input:
    """A pipe end the relay reads, with the partial line it holds."""

    def __init__(self, fd: int, direction: str, forward: _Output, reply: _Output) -> None:
        self.fd = fd
        self.direction = direction
        self.forward = forward  # where allowed messages go
        self.reply = reply  # where the firewall's own answers go (back to the sender)
        self.partial = bytearray()
        self.ended = False  # end of input, or its destination is gone
        self.finished = False
        # An oversized line being skipped: its size so far and where ids usually sit.
        self.skipping = False
        self.skipped = 0
        self.head = b""
        self.tail = b""

    @property
    def held_back(self) -> bool:
        """Whether its destinations hold so much that reading more would only pile up."""
        return len(self.forward.pending) > _BACKLOG or len(self.reply.pending) > _BACKLOG


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
        self._client_in = os.dup(client_in.fileno() if client_in is not None else sys.stdin.fileno())
        self._client_out = _Output(client_out_fd if client_out_fd is not None else os.dup(sys.stdout.fileno()))
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
        server_in = _Output(os.dup(child.stdin.fileno()))
        child.stdin.close()
        server_out = os.dup(child.stdout.fileno())
        child.stdout.close()
        inputs = [
            _Input(self._client_in, C2S, forward=server_in, reply=self._client_out),
            _Input(server_out, S2C, forward=self._client_out, reply=server_in),
        ]
        relay = threading.Thread(target=self._relay, args=(inputs, [server_in, self._client_out]), name="mcpfw-relay", daemon=True)
        previous = {sig: signal.signal(sig, self._forward_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            relay.start()
            returncode = child.wait()
            # Deliver what the server wrote before it exited.
            relay.join(timeout=2.0)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            # Calls still open when the client left or the server exited will not be
            # answered: what they hold in shared stores (Redis slots) is given back now.
            self._inspector.end_session(self._session)
        server_in.close()
        self._client_out.close()
        if returncode < 0:
            return 128 - returncode
        return returncode

    # -- relaying ------------------------------------------------------------------

    def _relay(self, inputs: list[_Input], outputs: list[_Output]) -> None:
        # Ready before the client's first message (the child server is still starting).
        self._inspector.prepare()
        settle_heap()
        poller = select.poll()
        watched: dict[int, int] = {}
        by_fd = {inp.fd: inp for inp in inputs}
        out_by_fd = {out.fd: out for out in outputs}
        server = inputs[1]
        try:
            while not server.finished:
                for inp in inputs:
                    if inp.ended and not inp.finished and (not inp.forward.pending or inp.forward.broken):
                        self._finish(inp)
                wanted: dict[int, int] = {}
                for inp in inputs:
                    if not inp.ended and not inp.held_back:
                        wanted[inp.fd] = _READABLE
                for out in outputs:
                    if out.pending and not out.broken and not out.closed:
                        wanted[out.fd] = wanted.get(out.fd, 0) | _WRITABLE
                for fd in watched.keys() - wanted.keys():
                    poller.unregister(fd)
                for fd, mask in wanted.items():
                    if watched.get(fd) != mask:
                        poller.register(fd, mask)  # registers or modifies
                watched = wanted
                if server.finished:
                    break
                if not wanted:
                    return  # nothing can move any more (every destination is gone)
                for fd, events in poller.poll():
                    out = out_by_fd.get(fd)
                    if out is not None and events & _WRITABLE:
                        out.flush()
                    inp = by_fd.get(fd)
                    if inp is not None and events & _READABLE and not inp.ended:
                        self._read(inp)
        except Exception as exc:  # a bug must end the session, not leave the client hanging
            if not isinstance(exc, (OSError, ValueError)):
                print(f"mcpfw: the relay failed ({type(exc).__name__}: {exc}); stopping the server", file=sys.stderr)
            for inp in inputs:
                if not inp.finished:
                    self._finish(inp)

    def _read(self, inp: _Input) -> None:
        try:
            data = os.read(inp.fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._take(inp, data)
            return
        inp.ended = True
        if inp.partial and not inp.skipping:
            # The last line, without its newline: judged as it is.
            line = bytes(inp.partial)
            inp.partial.clear()
            if line.strip():
                self._judge(inp, line)
        elif inp.skipping:
            self._refuse(inp)

    def _take(self, inp: _Input, data: bytes) -> None:
        """Judge every complete line of what arrived; keep the partial one.

        A line that spans reads grows in a bytearray (no copy of what came before), so
        a large message costs one copy however many reads it takes.
        """
        limit = self._limit
        start = 0
        if inp.partial or inp.skipping:
            end = data.find(b"\n")
            if end < 0:
                self._hold(inp, data)
                return
            if inp.skipping:
                inp.skipped += end + 1
                inp.tail = (inp.tail + data[max(0, end + 1 - 512) : end + 1])[-512:]
                self._refuse(inp)
            elif len(inp.partial) + end + 1 > limit:  # (the line with its newline, as the parser counts it)
                inp.head = bytes(inp.partial[:512])
                inp.tail = (bytes(inp.partial[-512:]) + data[: end + 1])[-512:]
                inp.skipped = len(inp.partial) + end + 1
                inp.partial.clear()
                self._refuse(inp)
            else:
                inp.partial += memoryview(data)[: end + 1]
                line = bytes(inp.partial)
                inp.partial.clear()
                if line.strip():
                    self._judge(inp, line)
            start = end + 1
        while not inp.ended:
            end = data.find(b"\n", start)
            if end < 0:
                break
            if end + 1 - start > limit:
                inp.head = data[start : start + 512]
                inp.tail = data[max(start, end + 1 - 512) : end + 1]
                inp.skipped = end + 1 - start
                self._refuse(inp)
            else:
                line = data if start == 0 and end + 1 == len(data) else data[start : end + 1]
                if line.strip():
                    self._judge(inp, line)
            start = end + 1
        if not inp.ended and start < len(data):
            self._hold(inp, data[start:] if start else data)

    def _hold(self, inp: _Input, data: bytes) -> None:
        """Keep the start of a line, or count it as skipped once it passes the limit."""
        if inp.skipping:
            inp.skipped += len(data)
            inp.tail = (inp.tail + data[-512:])[-512:]
            return
        inp.partial += data
        if len(inp.partial) > self._limit:
            inp.skipping = True
            inp.head = bytes(inp.partial[:512])
            inp.tail = bytes(inp.partial[-512:])
            inp.skipped = len(inp.partial)
            inp.partial.clear()

    def _judge(self, inp: _Input, line: bytes) -> None:
        outcome = self._inspector.inspect(line, inp.direction, self._session)
        if outcome.reply is not None:
            inp.reply.send(outcome.reply)
        if outcome.forward is not None and not inp.forward.send(outcome.forward):
            inp.ended = True  # its destination is gone: this direction is over

    def _refuse(self, inp: _Input) -> None:
        """Answer an oversized line, now skipped to its end, with an error for its id."""
        size, head, tail = inp.skipped, inp.head, inp.tail
        inp.skipping, inp.skipped, inp.head, inp.tail = False, 0, b"", b""
        outcome = self._inspector.refuse_oversized(size, self._limit, inp.direction, self._session, head + tail)
        if outcome.reply is not None:
            inp.reply.send(outcome.reply)
        if outcome.forward is not None:  # the client's request the server's answer was for
            inp.forward.send(outcome.forward)

    def _finish(self, inp: _Input) -> None:
        """A direction is over and what it forwarded has been written (or cannot be)."""
        inp.finished = True
        with contextlib.suppress(OSError):
            os.close(inp.fd)
        if inp.direction == C2S:
            self._client_closed(inp.forward)
        else:
            # The server closed its output: it is done, so the client's side ends too.
            self._client_out.close()
            self._stop_child()

    # -- shutting down -------------------------------------------------------------

    def _client_closed(self, server_in: _Output) -> None:
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


