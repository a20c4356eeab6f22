"""What the audit writer costs per row, by batching settings and staging path.

Usage: python bench/bench_audit.py [--rate ROWS_PER_S] [--seconds S]
       [--settings 200:500,500:5000] [--paths arrow,json] [--prefill ROWS]

The rows are the real pipeline's: a firewall built on the default configuration inspects
tools/call requests and responses with varied messages (server-everything's echo shape),
and the audit rows it records are kept. They are then fed to a fresh ``AuditLog`` at a
steady rate, as a busy firewall would (the HTTP benchmark's 1,800 requests/s are 3,600
rows/s), and the writer thread's own CPU time is read from /proc. Each setting is
``flush_interval_ms:batch_size``; ``--prefill`` first fills the file with that many
rows, to see whether a fuller table costs more. Prints one JSON document with
microseconds of writer CPU per row and per phase (stage, attach, insert incl. COMMIT and
checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from firewall.audit import store as store_module  # noqa: E402
from firewall.audit.log import AuditLog  # noqa: E402
from firewall.audit.schema import ensure_schema  # noqa: E402
from firewall.config import Config  # noqa: E402
from firewall.runtime import build_firewall  # noqa: E402
from firewall.session import ServerIdentity, Session  # noqa: E402

PHASES = ("_stage", "_attach", "_insert")


def pipeline_rows(n: int) -> list[dict[str, Any]]:
    """Audit rows as the pipeline records them for ``n`` varied echo calls."""
    home = tempfile.mkdtemp(prefix="mcpfw-bench-audit-home-")
    os.environ["MCPFW_HOME"] = home
    config = Config.model_validate({"audit": {"path": f"{home}/unused.duckdb"}})
    firewall = build_firewall(config)
    rows: list[dict[str, Any]] = []
    firewall.inspector._audit = type("Keep", (), {"accepting": True, "record": staticmethod(rows.append)})()
    session = Session(ServerIdentity(name="server-everything", command=["node", "index.js"]), transport="stdio",
                      cwd=os.getcwd(), resolve_symlinks=False)
    inspect = firewall.inspector.inspect
    inspect(b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
            b'"capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}', "client_to_server", session)
    for i in range(1, n + 1):
        text = f"hello from the benchmark, message {i}"
        call = {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": text}}}
        result = {"jsonrpc": "2.0", "id": i, "result": {"content": [{"type": "text", "text": f"Echo: {text}"}]}}
        inspect(json.dumps(call).encode(), "client_to_server", session)
        inspect(json.dumps(result).encode(), "server_to_client", session)
    firewall.close()
    return [row for row in rows if row.get("method") == "tools/call"]


def thread_cpu(native_id: int) -> float:
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PhaseTimer:
    """Thread CPU spent in each DuckDBStore phase (patched in for the run)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._originals = {name: getattr(store_module.DuckDBStore, name) for name in PHASES}
        for name, original in self._originals.items():
            setattr(store_module.DuckDBStore, name, self._timed(name, original))

    def _timed(self, name: str, original: Any) -> Any:
        def timed(store: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return original(store, *args, **kwargs)
            finally:
                self.seconds[name] += time.thread_time() - started
        return timed

    def restore(self) -> None:
        for name, original in self._originals.items():
            setattr(store_module.DuckDBStore, name, original)


def prefill(path: Path, rows: int) -> None:
    with duckdb.connect(str(path)) as db:
        ensure_schema(db)
        db.execute(
            "INSERT INTO decisions (ts, decision_id, direction, method, tool, arguments, decision, findings) "
            "SELECT now(), 'prefill-' || i, 'client_to_server', 'tools/call', 'echo', '{\"message\":\"hello\"}', "
            "'allow', '{}' FROM range(?) t(i)", [rows])
        db.execute("CHECKPOINT")


def measure(rows: list[dict[str, Any]], *, flush_ms: int, batch: int, path_name: str, rate: float, seconds: float,
            prefill_rows: int) -> dict[str, Any]:
    db = Path(tempfile.mkdtemp(prefix="mcpfw-bench-audit-")) / "audit.duckdb"
    if prefill_rows:
        prefill(db, prefill_rows)
    original_arrow = store_module._arrow_table
    if path_name == "json":
        store_module._arrow_table = lambda rows, yielder: None
    timer = PhaseTimer()
    try:
        log = AuditLog(db, flush_interval=flush_ms / 1000, batch_size=batch)
        writer = log._thread.native_id
        assert writer is not None
        time.sleep(0.3)
        cpu0, start, sent = thread_cpu(writer), time.perf_counter(), 0
        while (elapsed := time.perf_counter() - start) < seconds:
            while sent < int(elapsed * rate):
                row = dict(rows[sent % len(rows)])
                row.pop("ts", None)
                row["decision_id"] = f"bench-{sent}"
                log.record(row)
                sent += 1
            time.sleep(0.001)
        assert log.flush(60)
        cpu = thread_cpu(writer) - cpu0
        stats = log.stats
        log.close()
    finally:
        timer.restore()
        store_module._arrow_table = original_arrow
    with duckdb.connect(str(db), read_only=True) as con:
        stored = con.execute("SELECT count(*) FROM decisions WHERE decision_id LIKE 'bench-%'").fetchone()[0]
    return {
        "flush_interval_ms": flush_ms, "batch_size": batch, "staging": path_name, "rows": sent, "rows_stored": stored,
        "batches": stats.batches_written, "checkpoints": stats.checkpoints,
        "writer_cpu_us_per_row": round(cpu / sent * 1e6, 1),
        "phase_cpu_us_per_row": {name.lstrip("_"): round(s / sent * 1e6, 1) for name, s in timer.seconds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=3600.0, help="rows per second fed to the log")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--settings", default="200:500,500:5000", help="flush_interval_ms:batch_size, comma-separated")
    parser.add_argument("--paths", default="arrow,json", help="staging paths to compare")
    parser.add_argument("--prefill", type=int, default=0, help="rows in the file before the run")
    opts = parser.parse_args()
    rows = pipeline_rows(1000)
    results = []
    for setting in opts.settings.split(","):
        flush_ms, batch = (int(v) for v in setting.split(":"))
        for path_name in opts.paths.split(","):
            results.append(measure(rows, flush_ms=flush_ms, batch=batch, path_name=path_name, rate=opts.rate,
                                   seconds=opts.seconds, prefill_rows=opts.prefill))
    print(json.dumps({
        "benchmark": "audit writer CPU per row", "rate_rows_per_s": opts.rate, "seconds": opts.seconds,
        "prefill_rows": opts.prefill, "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
