"""HTTP reverse-mode benchmark: the firewall against direct, in the same run.

Scenarios (tools/call with a small argument; audit on; the default policy bundle and a
trivial one that allows everything):

* ``instant``: an upstream that answers at once with a fixed JSON result, the firewall's
  own ceiling - throughput at concurrency 32 and median latency at concurrency 1;
* ``everything``: server-everything (streamableHttp, SSE answers, one MCP session per
  connection, ended with DELETE as the SDK clients do) - throughput at concurrency 32 and
  latency at concurrency 1. The server keeps every event of a session in memory until the
  session ends, so sessions left open would grow its heap by about 100 MB per 5-second run
  and slow every run after; ``upstream_rss_mb_at_start`` shows that it stays flat;
* ``instant_mitmproxy``: the instant upstream behind the mitmproxy engine (reverse mode),
  to show why reverse mode defaults to the lean listener.

The load generator is a separate process: keep-alive connections, one request in flight
per connection. Each round runs direct and then through every firewall (every other round
the other way round, so a drift of the host or the upstream hits both alike), and the report
gives medians over the rounds (the machine is shared, so only figures from one run
compare). CPU per request is the firewall processes' own (supervisor and workers, from
/proc), the upstream's and the load generator's, over every request of a load run.
Prints one JSON document. Usage: python bench/bench_http.py [--seconds S] [--repeat R]
[--workers 1,2] [--scenarios instant,everything,mitmproxy] [--bundles trivial,default]
[--baseline DIR] [--other-python PYTHON] [--vary]

``--vary`` makes every request's argument different ("hello from the load generator,
connection 3, request 1234"): the decision cache and the detectors' memos then never answer,
and the argument is long enough for the detectors to read it, as in real traffic. Without
it the argument is the one word "hello", as the issue's benchmark asks.

``--baseline DIR`` adds, in every round, the same firewall run from another source tree:
changes are then compared in one run, against the same upstream, with the same load
generator. ``--other-python PYTHON`` does the same with this tree under another interpreter
(the tree's dependencies installed for it): how much the interpreter's build matters, say one
built with ``--enable-optimizations --with-lto`` against one without. The load generator and
the instant upstream keep the interpreter the benchmark runs on, so both firewalls face the
same peers. ``python bench/bench_http.py --make-baseline REF DIR`` makes such a tree: this
one as it is, except ``firewall/transports/http/`` as of the git commit REF (so only the
HTTP layer differs, even while other parts are being changed).

The load generator: Python on uvloop with raw sockets (no HTTP library), one process,
about 0.03-0.05 ms of CPU per request, a tenth of what server-everything spends; its CPU per
request is reported next to the others, so a run where it dominated would show.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVERYTHING = ROOT / "node_modules/@modelcontextprotocol/server-everything/dist/index.js"
TRIVIAL_POLICY = 'package mcpfw\n\ndecision := {"allow": true}\n'
CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"}}}'
INIT = (b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
        b'"capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}')
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'


# -- the instant upstream ---------------------------------------------------------------

RESULT = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello"}],"isError":false}}'
INSTANT = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(RESULT), RESULT)


class Instant(asyncio.Protocol):
    """Answers every request on the connection with the same small JSON-RPC result."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            self.transport.write(INSTANT)  # type: ignore[attr-defined]


async def serve_instant(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Instant, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


# -- the load generator -----------------------------------------------------------------


def _request(host: str, path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"accept: application/json, text/event-stream\r\n%scontent-length: %d\r\n\r\n%s"
            % (path.encode(), host.encode(), extra, len(body), body))


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    at = lower.find(b"content-length:")
    if at >= 0:
        return head, await reader.readexactly(int(lower[at + 15:].split(b"\r\n", 1)[0]))
    if b"transfer-encoding: chunked" not in lower:
        return head, b""
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return head, body
        body += chunk[:-2]


class Counter:
    """Requests answered by one load run, warm-up included (the CPU figures cover them all)."""

    def __init__(self) -> None:
        self.all = 0


def _varied_call(connection: int, n: int) -> bytes:
    """A tools/call whose argument differs every time (``--vary``): no cache can answer it, and
    it is long enough for the detectors to read."""
    return (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":'
            b'{"message":"hello from the load generator, connection %d, request %d"}}}' % (connection, n))


async def _connection(host: str, port: int, path: str, session: bool, deadline: float, warmup: float,
                      latencies: list[float], counter: Counter, vary: int | None = None) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    extra = b""
    if session:
        writer.write(_request(f"{host}:{port}", path, INIT))
        head, _ = await _response(reader)
        sid = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"mcp-session-id:")][0]
        extra = b"mcp-session-id: %s\r\nmcp-protocol-version: 2025-11-25\r\n" % sid
        writer.write(_request(f"{host}:{port}", path, INITIALIZED, extra))
        await _response(reader)
        counter.all += 2
    request = _request(f"{host}:{port}", path, CALL, extra)
    n = 0
    while (now := time.perf_counter()) < deadline:
        if vary is not None:
            n += 1
            request = _request(f"{host}:{port}", path, _varied_call(vary, n), extra)
        writer.write(request)
        head, body = await _response(reader)
        if not head.startswith(b"HTTP/1.1 200") or b'"result"' not in body:
            raise RuntimeError(f"unexpected answer: {head[:40]!r} {body[:200]!r}")
        counter.all += 1
        if now >= warmup:
            latencies.append(time.perf_counter() - now)
    if session:
        # End the session as the SDK clients do on exit: server-everything keeps every event
        # of a session in memory until then (100 MB more per 5-second run without this, and
        # every later run, direct or not, paid for the bigger heap).
        writer.write(b"DELETE %s HTTP/1.1\r\nhost: %s:%d\r\n%scontent-length: 0\r\n\r\n"
                     % (path.encode(), host.encode(), port, extra))
        await _response(reader)
        counter.all += 1
    writer.close()


async def load(url: str, concurrency: int, seconds: float, session: bool, vary: bool = False) -> dict[str, float]:
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    latencies: list[float] = []
    counter = Counter()
    cpu = time.process_time()
    start = time.perf_counter()
    warmup = start + min(1.0, seconds / 4)
    deadline = warmup + seconds
    await asyncio.gather(*(_connection(host, int(port), "/" + path, session, deadline, warmup, latencies, counter,
                                       k if vary else None)
                           for k in range(concurrency)))
    latencies.sort()
    return {
        "requests": len(latencies),
        "all_requests": counter.all,
        "throughput_rps": round(len(latencies) / seconds, 1),
        "median_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
        "client_cpu_ms_per_request": round((time.process_time() - cpu) * 1000 / max(counter.all, 1), 4),
    }


def run_load(url: str, concurrency: int, seconds: float, session: bool, cpu_of: dict[str, list[int]],
             vary: bool = False) -> dict[str, float]:
    """The load generator in its own process (its CPU is not the firewall's).

    ``cpu_of`` names processes whose CPU per request is reported (process and children).
    """
    before = {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in cpu_of.items()}
    done = subprocess.run([sys.executable, __file__, "--load", url, str(concurrency), str(seconds), str(int(session)),
                           str(int(vary))],
                          capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    result = json.loads(done.stdout)
    for name, pids in cpu_of.items():
        spent = sum(cpu_seconds(pid) for pid in pids) - before[name]
        result[f"{name}_cpu_ms_per_request"] = round(spent * 1000 / max(result["all_requests"], 1), 4)
    return result


# -- processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


def start(cmd: list[str], port: int, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True, cwd=cwd)
    wait_port(port)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def children(pid: int) -> list[int]:
    """The child processes of a process (the firewall's workers)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and its children (the workers)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in [pid, *children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
    return total


def rss_mb(pid: int) -> float:
    """Resident memory of a process (an upstream whose heap grows gets slower for every run after)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def firewall(upstream: str, bundle: Path | None, workers: int, audit: Path, listener: str,
             src: Path | None = None, config: Path | None = None,
             python: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [python or sys.executable, "-m", "firewall.cli", "proxy", "--upstream", upstream, "--listen", f"127.0.0.1:{port}",
           "--workers", str(workers), "--audit", str(audit), "--listener", listener]
    if bundle is not None:
        cmd += ["--policy", str(bundle)]
    if config is not None:
        cmd += ["--config", str(config)]
    # A state directory of its own: the tool registry's learned state must not leak in from other runs.
    env = {"MCPFW_HOME": str(audit.parent / f"home-{port}")}
    if src is not None:  # another source tree (the workers start with the same PYTHONPATH)
        env["PYTHONPATH"] = str(src)
    proc = start(cmd, port, env=env, cwd=src)
    time.sleep(0.5 if workers == 1 else 1.5)  # every worker listening
    return proc, f"http://127.0.0.1:{port}/mcp"


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def _summary(runs: list[dict[str, float]], keys: tuple[str, ...]) -> dict[str, float]:
    return {key: _median([run[key] for run in runs]) for key in keys if key in runs[0]}


def measure(upstream: str, upstream_pid: int, *, session: bool, bundles: dict[str, Path | None], workers: tuple[int, ...],
            seconds: float, repeat: int, tmp: Path, concurrencies: tuple[int, ...],
            listener: str = "lean", baseline: Path | None = None, config: Path | None = None,
            vary: bool = False, other_python: str | None = None) -> list[dict[str, object]]:
    """Direct and through each firewall (bundle x worker count, and the baseline tree's),
    interleaved in every round; medians over the rounds."""
    firewalls: dict[tuple[str, int, str], tuple[subprocess.Popen[bytes], str]] = {}
    trees: dict[str, Path | None] = {"current": None}
    if baseline is not None:
        trees["baseline"] = baseline
    if other_python is not None:
        trees["other_python"] = None
    setups = [(name, w, tree) for name in bundles for w in workers for tree in trees]
    try:
        for name, w, tree in setups:
            audit = tmp / f"audit-{name}-{w}-{tree}-{time.monotonic_ns()}.duckdb"
            firewalls[(name, w, tree)] = firewall(upstream, bundles[name], w, audit, listener, trees[tree], config,
                                                  other_python if tree == "other_python" else None)
        direct: dict[int, list[dict[str, float]]] = {c: [] for c in concurrencies}
        through: dict[tuple[str, int, str, int], list[dict[str, float]]] = {
            (*setup, c): [] for setup in setups for c in concurrencies}
        for round_ in range(repeat):
            for c in concurrencies:
                runs: list[tuple[Any, str, dict[str, list[int]]]] = [(None, upstream, {"upstream": [upstream_pid]})]
                runs += [(setup, url, {"firewall": [proc.pid], "upstream": [upstream_pid]})
                         for setup, (proc, url) in firewalls.items()]
                if round_ % 2:  # every other round the other way round: drift of the host hits both alike
                    runs.reverse()
                for setup, url, cpu_of in runs:
                    rss = rss_mb(upstream_pid)
                    result = run_load(url, c, seconds, session, cpu_of, vary)
                    result["upstream_rss_mb_at_start"] = rss
                    (direct[c] if setup is None else through[(*setup, c)]).append(result)
    finally:
        for proc, _ in firewalls.values():
            stop(proc)
    keys = ("throughput_rps", "median_ms", "p99_ms", "firewall_cpu_ms_per_request", "upstream_cpu_ms_per_request",
            "client_cpu_ms_per_request", "upstream_rss_mb_at_start")
    out: list[dict[str, object]] = []
    for name, w, tree in setups:
        for c in concurrencies:
            pairs = list(zip(direct[c], through[(name, w, tree, c)], strict=True))
            out.append({
                "listener": listener, "tree": tree, "workers": w, "bundle": name, "concurrency": c,
                "direct": _summary(direct[c], keys), "firewall": _summary(through[(name, w, tree, c)], keys),
                "ratio": _median([f["throughput_rps"] / d["throughput_rps"] for d, f in pairs]),
                "added_median_ms": _median([f["median_ms"] - d["median_ms"] for d, f in pairs]),
                "runs": [{"direct_rps": d["throughput_rps"], "firewall_rps": f["throughput_rps"],
                          "added_median_ms": round(f["median_ms"] - d["median_ms"], 3),
                          "firewall_cpu_ms_per_request": f["firewall_cpu_ms_per_request"]} for d, f in pairs],
            })
    return out


def verdicts(scenarios: dict[str, list[dict[str, object]]]) -> dict[str, object]:
    """The issue's targets, checked per bundle and worker count (current tree)."""
    out: dict[str, object] = {}
    checks = (
        ("instant", 32, "instant_c32_rps_at_least_1500", lambda r: r["firewall"]["throughput_rps"], lambda v: v >= 1500),
        ("instant", 1, "instant_c1_added_median_at_most_1ms", lambda r: r["added_median_ms"], lambda v: v <= 1.0),
        ("everything", 32, "everything_c32_ratio_at_least_0.8", lambda r: r["ratio"], lambda v: v >= 0.8),
    )
    for scenario, c, label, value_of, met in checks:
        for r in scenarios.get(scenario, []):
            if r["concurrency"] == c and r.get("tree", "current") == "current":
                value = value_of(r)
                out[f"{label} (bundle={r['bundle']}, workers={r['workers']})"] = {"value": value, "met": met(value)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of direct and firewall runs; medians are reported")
    cores = os.cpu_count() or 1
    parser.add_argument("--workers", default="1" if cores == 1 else f"1,{cores}",
                        help="lean worker counts to compare, e.g. 1,2 (each is measured in every round)")
    parser.add_argument("--scenarios", default="instant,everything,mitmproxy")
    parser.add_argument("--bundles", default="trivial,default", help="policy bundles: trivial, default, or a bundle's path")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another source tree whose firewall is measured in the same rounds (lean scenarios)")
    parser.add_argument("--other-python", default=None,
                        help="also run this tree's firewall under another interpreter, in the same rounds (lean scenarios)")
    parser.add_argument("--config", type=Path, default=None, help="mcpfw configuration file for every firewall run")
    parser.add_argument("--vary", action="store_true",
                        help="a different tools/call argument on every request, long enough for the detectors "
                             "(no decision or detector cache answers; closer to real traffic)")
    args = parser.parse_args()
    workers = tuple(int(w) for w in str(args.workers).split(","))
    tmp = Path(tempfile.mkdtemp(prefix="mcpfw-bench-http-"))
    trivial = tmp / "trivial"
    (trivial / "mcpfw").mkdir(parents=True)
    (trivial / "mcpfw" / "decision.rego").write_text(TRIVIAL_POLICY)
    known: dict[str, Path | None] = {"default": None, "trivial": trivial}
    bundles = {name: known[name] if name in known else Path(name) for name in args.bundles.split(",")}
    report: dict[str, object] = {
        "cores": cores, "workers": list(workers), "seconds": args.seconds, "repeat": args.repeat,
        "load_average_at_start": os.getloadavg()[0], "messages": "varied" if args.vary else "repeated",
        "python": sys.version.split()[0], "other_python": args.other_python, "scenarios": {},
    }
    scenarios: dict[str, list[dict[str, object]]] = {}
    common = {"bundles": bundles, "seconds": args.seconds, "repeat": args.repeat, "tmp": tmp, "concurrencies": (1, 32),
              "config": args.config.resolve() if args.config else None, "vary": args.vary}
    baseline = args.baseline.resolve() if args.baseline else None
    if "instant" in args.scenarios:
        port = free_port()
        upstream = start([sys.executable, __file__, "--instant", str(port)], port)
        try:
            scenarios["instant"] = measure(f"http://127.0.0.1:{port}/mcp", upstream.pid, session=False,
                                           workers=workers, baseline=baseline, other_python=args.other_python,
                                           **common)  # type: ignore[arg-type]
        finally:
            stop(upstream)
    if "mitmproxy" in args.scenarios:
        # The same instant upstream behind mitmproxy in reverse mode (one process), for comparison.
        port = free_port()
        upstream = start([sys.executable, __file__, "--instant", str(port)], port)
        try:
            scenarios["instant_mitmproxy"] = measure(f"http://127.0.0.1:{port}/mcp", upstream.pid, session=False,
                                                     workers=(1,), listener="mitmproxy", **common)  # type: ignore[arg-type]
        finally:
            stop(upstream)
    if "everything" in args.scenarios:
        port = free_port()
        upstream = start(["node", str(EVERYTHING), "streamableHttp"], port, env={"PORT": str(port)})
        try:
            scenarios["everything"] = measure(f"http://127.0.0.1:{port}/mcp", upstream.pid, session=True,
                                              workers=workers, baseline=baseline, other_python=args.other_python,
                                           **common)  # type: ignore[arg-type]
        finally:
            stop(upstream)
    report["scenarios"] = scenarios
    report["load_average_at_end"] = os.getloadavg()[0]
    report["targets"] = verdicts(scenarios)
    print(json.dumps(report, indent=2))
    return 0


def _run(coro: Any) -> Any:
    try:
        import uvloop  # the load generator and the instant upstream steal less CPU from the firewall
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def make_baseline(ref: str, target: Path) -> None:
    """A copy of this tree (large data directories linked) with the HTTP layer of ``ref``."""
    import shutil

    target.mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.name in ("firewall", "detectors", "bench"):
            shutil.copytree(entry, target / entry.name, ignore=shutil.ignore_patterns("__pycache__"))
        elif not entry.name.startswith("."):
            (target / entry.name).symlink_to(entry)
    http_dir = target / "firewall/transports/http"
    shutil.rmtree(http_dir)
    http_dir.mkdir()
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", ref, "firewall/transports/http/"],
                           capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:{name}"], capture_output=True, check=True).stdout
        (target / name).write_bytes(blob)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--make-baseline":
        make_baseline(sys.argv[2], Path(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--instant":
        _run(serve_instant(int(sys.argv[2])))
    elif len(sys.argv) > 1 and sys.argv[1] == "--load":
        url, concurrency, seconds, session = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5] == "1"
        vary = len(sys.argv) > 6 and sys.argv[6] == "1"
        print(json.dumps(_run(load(url, concurrency, seconds, session, vary))))
    else:
        sys.exit(main())
