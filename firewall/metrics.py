"""Prometheus metrics: what every firewall process decided, summed over processes.

Each process counts its decisions in memory (a few dictionary updates per message, from the
same rows the audit log records) and writes a snapshot to the metrics directory about once a
second, off the hot path. ``/metrics`` (``mcpfw metrics serve``, or ``metrics.listen`` of
``mcpfw proxy``) sums the snapshots of every process that shares the directory: stdio shims
(one process per server), the proxy's workers, restarted processes. Counters of processes
that have ended stay in the sum (folded into one file), so they never go backwards; gauges
count only processes that are still writing.

Labels are bounded, so a client cannot grow the number of series: methods outside the MCP
specification are ``other``, and tools, reason codes and tags beyond the first few hundred
values a process saw are ``other`` too. Tenants and subjects are not labels (they are in the
audit log).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson


__all__ = ["METRICS", "MeteredAudit", "MetricsRecorder", "exposition", "merged_snapshot", "metrics_dir"]

# name -> (type, help, label names, histogram buckets)
METRICS: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...]]] = {
    "mcpfw_messages_total": (
        "counter", "Messages judged, by server, transport, direction, kind, method and decision",
        ("server", "transport", "direction", "kind", "method", "decision"), ()),
    "mcpfw_denials_total": (
        "counter", "Denied messages by reason code (a message with several reasons counts once for each)",
        ("server", "reason"), ()),
    "mcpfw_tool_calls_total": ("counter", "tools/call requests by tool and decision", ("server", "tool", "decision"), ()),
    "mcpfw_tags_total": ("counter", "Tags the policy put on messages (detector verdicts and the like)", ("server", "tag"), ()),
    "mcpfw_policy_eval_seconds": (
        "histogram", "Time to judge a message: enrichers, detectors and the policy", ("engine",),
        (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)),
    "mcpfw_upstream_seconds": (
        "histogram", "Time from forwarding a request to its answer", ("server",),
        (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)),
    "mcpfw_audit_rows_written_total": ("counter", "Audit rows written to the DuckDB file", (), ()),
    "mcpfw_audit_rows_spilled_total": ("counter", "Audit rows written to the spill file while the database was unavailable", (), ()),
    "mcpfw_audit_rows_pending": ("gauge", "Audit rows recorded but not yet written, over live processes", (), ()),
    "mcpfw_audit_unhealthy_processes": ("gauge", "Live processes whose audit log cannot write its database", (), ()),
    "mcpfw_processes": ("gauge", "Live firewall processes writing metrics to this directory", (), ()),
}

MCP_METHODS = frozenset({
    "initialize", "ping", "server/discover", "tools/list", "tools/call", "prompts/list", "prompts/get",
    "resources/list", "resources/read", "resources/templates/list", "resources/subscribe", "resources/unsubscribe",
    "subscriptions/listen", "logging/setLevel", "completion/complete", "sampling/createMessage", "elicitation/create",
    "roots/list", "tasks/get", "tasks/result", "tasks/list", "tasks/cancel",
    "notifications/initialized", "notifications/cancelled", "notifications/progress", "notifications/message",
    "notifications/resources/updated", "notifications/resources/list_changed", "notifications/tools/list_changed",
    "notifications/prompts/list_changed", "notifications/roots/list_changed", "notifications/tasks/status",
    "notifications/elicitation/complete",
})
_CAP = {"tool": 512, "reason": 256, "tag": 256, "server": 256}
_MAX_LABEL = 128
_LIVE_SECONDS = 15.0  # a snapshot older than this is a process that stopped writing
_HEARTBEAT_SECONDS = 5.0
_RETIRED = "retired.json"
_LABELS = "labels.json"  # label values admitted to the merged series, per metric and label


def metrics_dir(config: Any) -> Path:
    """Where a configuration's processes write their counts: ``metrics.directory``, else a
    ``metrics`` folder next to the audit file (processes that share an audit log share it)."""
    return config.metrics.directory or Path(config.audit.path).expanduser().parent / "metrics"


class _Vocabulary:
    """Label values of one kind, at most ``cap`` distinct ones; later newcomers are 'other'."""

    __slots__ = ("_cap", "seen")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self.seen: set[str] = set()  # the values admitted (a str in here is its own label)

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str):
            return "" if value is None else "other"
        if value in self.seen:
            return value
        if len(self.seen) >= self._cap or len(value) > _MAX_LABEL or _holds_secret(value):
            return "other"
        self.seen.add(value)
        return value


def _holds_secret(value: str) -> bool:
    """Whether a credential rule finds something in ``value`` (a token sent as a tool name)."""
    from .audit.redact import redact_text

    return redact_text(value) != value


class MetricsRecorder:
    """The counters and histograms of this process, fed with audit rows."""

    def __init__(self, audit: Any | None = None) -> None:
        self._audit = audit  # an AuditLog, read for its gauges at snapshot time
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[str, ...], float]] = {
            name: {} for name, spec in METRICS.items() if spec[0] == "counter"}
        self._histograms: dict[str, dict[tuple[str, ...], list[float]]] = {
            name: {} for name, spec in METRICS.items() if spec[0] == "histogram"}
        self._names = {kind: _Vocabulary(cap) for kind, cap in _CAP.items()}
        self.changes = 0

    def record(self, row: dict[str, Any]) -> None:
        """Count one decision (an audit row as the pipeline records it)."""
        names = self._names
        server = row.get("server")
        if type(server) is not str or server not in names["server"].seen:  # (a call less on the common path)
            server = names["server"](server)
        decision = row.get("decision") or ""
        kind = row.get("kind") or "invalid"
        method = row.get("method")
        method = "" if method is None else method if method in MCP_METHODS else "other"
        counters = self._counters
        with self._lock:
            self.changes += 1
            _add(counters["mcpfw_messages_total"],
                 (server, row.get("transport") or "", row.get("direction") or "", kind, method, decision))
            if decision == "deny":
                for code in row.get("reason_codes") or ("(none)",):
                    _add(counters["mcpfw_denials_total"], (server, names["reason"](code)))
            for tag in row.get("tags") or ():
                _add(counters["mcpfw_tags_total"], (server, names["tag"](tag)))
            if kind == "request" and method == "tools/call" and row.get("direction") == "client_to_server":
                tool = row.get("tool")
                if type(tool) is not str or tool not in names["tool"].seen:
                    tool = names["tool"](tool)
                _add(counters["mcpfw_tool_calls_total"], (server, tool, decision))
            eval_ms = row.get("eval_ms")
            if eval_ms:
                self._observe("mcpfw_policy_eval_seconds", (str(row.get("engine") or ""),), eval_ms / 1000.0)
            upstream_ms = row.get("upstream_ms")
            if upstream_ms is not None:
                self._observe("mcpfw_upstream_seconds", (server,), upstream_ms / 1000.0)

    def _observe(self, name: str, labels: tuple[str, ...], value: float) -> None:
        buckets = METRICS[name][3]
        series = self._histograms[name].get(labels)
        if series is None:
            series = self._histograms[name][labels] = [0.0] * (len(buckets) + 3)  # buckets, +Inf, sum, count
        series[bisect_left(buckets, value)] += 1
        series[-2] += value
        series[-1] += 1

    def snapshot(self) -> dict[str, Any]:
        """This process's values, as written to the metrics directory."""
        with self._lock:
            counters = {name: [[*k, v] for k, v in series.items()] for name, series in self._counters.items()}
            histograms = {name: [[*k, list(v)] for k, v in series.items()] for name, series in self._histograms.items()}
        gauges: dict[str, float] = {"mcpfw_processes": 1}
        audit = self._audit
        if audit is not None:
            stats = audit.stats
            counters["mcpfw_audit_rows_written_total"] = [[float(stats.rows_written)]]
            counters["mcpfw_audit_rows_spilled_total"] = [[float(stats.rows_spilled)]]
            gauges["mcpfw_audit_rows_pending"] = float(audit.pending)
            gauges["mcpfw_audit_unhealthy_processes"] = 0.0 if audit.healthy else 1.0
        return {"pid": os.getpid(), "written": time.time(), "counters": counters, "histograms": histograms,
                "gauges": gauges}


def _add(series: dict[tuple[str, ...], float], key: tuple[str, ...]) -> None:
    series[key] = series.get(key, 0.0) + 1.0


class MeteredAudit:
    """An audit sink that counts every row for the metrics, then hands it to the audit log."""

    def __init__(self, audit: Any, recorder: MetricsRecorder) -> None:
        self._audit = audit
        self._recorder = recorder

    @property
    def accepting(self) -> bool:
        return bool(self._audit.accepting)

    def record(self, row: dict[str, Any]) -> None:
        self._recorder.record(row)
        self._audit.record(row)


class SnapshotWriter:
    """Writes a recorder's snapshot to ``directory`` when it changed (at most every
    ``interval`` seconds, and every few seconds regardless, as a sign of life) and at exit."""

    def __init__(self, recorder: MetricsRecorder, directory: Path, interval: float = 1.0) -> None:
        self._recorder = recorder
        self._directory = directory
        self._interval = interval
        self._path = directory / f"{os.getpid()}-{time.time_ns()}.json"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mcpfw-metrics", daemon=True)
        self._written_changes = -1
        self._written_at = 0.0

    @property
    def path(self) -> Path:
        return self._path

    def start(self) -> None:
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.write()
        self._thread.start()
        atexit.register(self.close)

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self.write(closed=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._recorder.changes != self._written_changes or time.time() - self._written_at >= _HEARTBEAT_SECONDS:
                self.write()

    def write(self, *, closed: bool = False) -> None:
        changes = self._recorder.changes
        document = orjson.dumps({**self._recorder.snapshot(), "closed": closed})
        temporary = self._path.with_suffix(".tmp")
        try:
            temporary.write_bytes(document)
            os.replace(temporary, self._path)
        except OSError:
            return  # the next round tries again; metrics never stop the firewall
        self._written_changes = changes
        self._written_at = time.time()


def merged_snapshot(directory: Path, *, now: float | None = None) -> dict[str, Any]:
    """Every process's values in ``directory`` summed: counters and histograms of all,
    gauges of the live ones. Snapshots of processes that ended are folded into one file."""
    now = time.time() if now is None else now
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    total: dict[str, Any] = {"counters": {}, "histograms": {}, "gauges": {}}
    # Under the lock: a file folded by another reader between two reads here would be
    # counted twice or not at all, and a counter that dips looks like a reset to Prometheus.
    with _locked(directory):
        labels_path = directory / _LABELS
        admitted = _read(labels_path) or {}
        before = sum(map(len, admitted.values()))
        _retire(directory, now, admitted)
        for path in sorted(directory.glob("*.json")):
            if path.name == _LABELS:
                continue
            document = _read(path)
            if document is None:
                continue
            live = (path.name != _RETIRED and not document.get("closed")
                    and now - float(document.get("written", 0)) <= _LIVE_SECONDS)
            _merge(total, document, gauges=live)
        _cap_series(total, admitted)
        if sum(map(len, admitted.values())) != before:
            _write_atomically(labels_path, orjson.dumps(admitted))
    return total


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(".tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError:
        pass  # (labels: admitted again next time; counts: the snapshots stay as they are)


def _cap_series(total: dict[str, Any], admitted: dict[str, list[str]]) -> None:
    """Each process bounds its labels, but processes come and go: over the merged counts, a
    capped label shows the values ``admitted`` (per metric and label) and sums the rest as
    'other'. Values are admitted while there is room, most frequent first, and never leave,
    so no series ever shrinks (Prometheus would read a reset)."""
    for kind in ("counters", "histograms"):
        for name, series in total[kind].items():
            for position, label in enumerate(METRICS[name][2]):
                cap = _CAP.get(label)
                if cap is None:
                    continue
                known = admitted.setdefault(f"{name}:{label}", [])
                kept = set(known)
                weight: dict[str, float] = {}
                for key, values in series.items():
                    if key[position] not in kept and key[position] != "other":
                        amount = values if kind == "counters" else values[-1]
                        weight[key[position]] = weight.get(key[position], 0.0) + amount
                room = cap - 1 - len(known)
                if weight and room > 0:
                    newcomers = sorted(weight, key=lambda v: (-weight[v], v))[:room]
                    known += newcomers
                    kept.update(newcomers)
                if all(key[position] in kept or key[position] == "other" for key in series):
                    continue
                capped: dict[tuple[str, ...], Any] = {}
                for key, values in series.items():
                    if key[position] not in kept:
                        key = (*key[:position], "other", *key[position + 1:])
                    current = capped.get(key)
                    if current is None:
                        capped[key] = values if kind == "counters" else list(values)
                    elif kind == "counters":
                        capped[key] = current + values
                    else:
                        capped[key] = [a + b for a, b in zip(current, values, strict=True)]
                series.clear()
                series.update(capped)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        document = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return document if isinstance(document, dict) else None


def _merge(total: dict[str, Any], document: dict[str, Any], *, gauges: bool) -> None:
    for name, rows in (document.get("counters") or {}).items():
        if name in METRICS:
            series = total["counters"].setdefault(name, {})
            for row in rows:
                key = tuple(row[:-1])
                series[key] = series.get(key, 0.0) + float(row[-1])
    for name, rows in (document.get("histograms") or {}).items():
        if name in METRICS:
            series = total["histograms"].setdefault(name, {})
            for row in rows:
                key, values = tuple(row[:-1]), row[-1]
                current = series.get(key)
                series[key] = list(values) if current is None else [a + b for a, b in zip(current, values, strict=True)]
    if gauges:
        for name, value in (document.get("gauges") or {}).items():
            if name in METRICS:
                total["gauges"][name] = total["gauges"].get(name, 0.0) + float(value)


def _retire(directory: Path, now: float, admitted: dict[str, list[str]]) -> None:
    """Fold the snapshots of processes that ended into ``retired.json``, so a directory
    shared by many short-lived shims stays small. The caller holds the directory's lock."""
    stale = [p for p in directory.glob("*.json") if p.name not in (_RETIRED, _LABELS) and _stale(p, now)]
    if not stale:
        return
    retired_path = directory / _RETIRED
    retired: dict[str, Any] = {"counters": {}, "histograms": {}, "gauges": {}}
    previous = _read(retired_path)
    if previous is not None:
        _merge(retired, previous, gauges=False)
    folded = []
    for path in stale:
        document = _read(path)
        if document is not None:
            _merge(retired, document, gauges=False)
            folded.append(path)
    if not folded:
        return
    _cap_series(retired, admitted)  # (values not admitted are kept as 'other': the file stays small)
    out = {"written": 0, "counters": {n: [[*k, v] for k, v in s.items()] for n, s in retired["counters"].items()},
           "histograms": {n: [[*k, v] for k, v in s.items()] for n, s in retired["histograms"].items()}}
    temporary = retired_path.with_suffix(".tmp")
    try:
        temporary.write_bytes(orjson.dumps(out))
        os.replace(temporary, retired_path)
    except OSError:
        return  # nothing folded: the snapshots stay and count as they are
    for path in folded:
        with contextlib.suppress(OSError):
            path.unlink()


def _stale(path: Path, now: float) -> bool:
    """A snapshot whose process has ended: it said so, or it stopped writing and is gone. (A
    live process keeps its file: folding it would count its totals twice at its next write.)"""
    try:
        age = now - path.stat().st_mtime
    except OSError:
        return False
    pid = path.name.split("-", 1)[0]
    if age > _LIVE_SECONDS and pid.isdigit() and not Path(f"/proc/{pid}").exists():
        return True
    document = _read(path)
    return document is not None and bool(document.get("closed"))


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def exposition(total: dict[str, Any]) -> bytes:
    """A merged snapshot in the Prometheus text format."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(total))
    return generate_latest(registry)


class _Families:
    """A prometheus_client collector over a merged snapshot."""

    def __init__(self, total: dict[str, Any]) -> None:
        self._total = total

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        for name, (kind, doc, labels, buckets) in METRICS.items():
            if kind == "counter":
                family = CounterMetricFamily(name.removesuffix("_total"), doc, labels=labels)
                for key, value in sorted(self._total["counters"].get(name, {}).items()):
                    family.add_metric(list(key), value)
            elif kind == "gauge":
                family = GaugeMetricFamily(name, doc, labels=labels)  # (the gauges have no labels)
                family.add_metric([], self._total["gauges"].get(name, 0.0))
            else:
                family = HistogramMetricFamily(name, doc, labels=labels)
                for key, values in sorted(self._total["histograms"].get(name, {}).items()):
                    cumulative, running = [], 0.0
                    for bound, count in zip((*map(str, buckets), "+Inf"), values[:-2], strict=True):
                        running += count
                        cumulative.append((bound, running))
                    family.add_metric(list(key), cumulative, sum_value=values[-2])
            yield family


class DirectoryCollector:
    """Collects, at every scrape, the merged snapshot of a metrics directory."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Any]:
        return _Families(merged_snapshot(self._directory)).collect()


def serve_metrics(listen: str, directory: Path) -> Any:
    """Serve ``/metrics`` for ``directory`` on ``HOST:PORT`` from a daemon thread; returns
    the server (``shutdown()`` stops it). Raises OSError when the address is taken."""
    from prometheus_client import CollectorRegistry, start_http_server

    host, _, port = listen.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics.listen: expected HOST:PORT, got {listen!r}")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DirectoryCollector(directory))
    server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    return server
