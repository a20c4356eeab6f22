"""Read-only SQL over the audit database, for ``mcpfw audit sql``.

The database is opened read-only, queried, and closed before anything is
printed, so the shared lock that blocks the firewall's writers is held only
while the query runs.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import random
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

import duckdb
import orjson

from firewall.audit.store import is_lock_conflict
from firewall.audit.schema import VIEWS, View

Format = Literal["table", "json", "csv"]
FORMATS: tuple[Format, ...] = ("table", "json", "csv")

EXIT_OK = 0
EXIT_SQL_ERROR = 1
EXIT_UNAVAILABLE = 2  # missing, unreadable or locked database; bad arguments

_NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                  "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL")


class QueryError(Exception):
    """A query could not run; ``exit_code`` tells why."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def list_views() -> dict[str, View]:
    """The documented views of the audit database: name -> (description, sql)."""
    return dict(VIEWS)


Columns = list[tuple[str, str]]
"""(name, DuckDB type) of each result column."""


def query(
    db_path: str | Path, sql: str, *, lock_retry_seconds: float = 2.0
) -> tuple[Columns, list[tuple[Any, ...]]]:
    """Run ``sql`` on a read-only connection; return ``([(name, type)], rows)``.

    Raises :class:`QueryError` for a missing/locked database or an SQL error.
    """
    path = Path(db_path).expanduser()
    if not path.is_file():
        raise QueryError(f"audit database not found: {path}", EXIT_UNAVAILABLE)
    con = connect_read_only(path, lock_retry_seconds)
    try:
        result = con.execute(sql)
        if result is None:  # only whitespace, comments or ";"
            raise QueryError("no SQL statement given (try: SELECT * FROM recent_denials)", EXIT_SQL_ERROR)
        if result.description is None:
            return [], []
        columns = [(str(d[0]), str(d[1])) for d in result.description]
        return columns, result.fetchall()
    except duckdb.Error as exc:
        raise QueryError(f"SQL error: {exc}", EXIT_SQL_ERROR) from exc
    finally:
        con.close()


def connect_read_only(path: Path, lock_retry_seconds: float) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the audit file, retrying briefly while a writer holds it."""
    # A writer holds the file for a few milliseconds per batch: retry briefly.
    deadline = time.monotonic() + lock_retry_seconds
    delay = 0.01
    while True:
        try:
            return duckdb.connect(str(path), read_only=True)
        except duckdb.Error as exc:
            remaining = deadline - time.monotonic()
            if not is_lock_conflict(exc) or remaining <= 0:
                first_line = str(exc).splitlines()[0] if str(exc) else repr(exc)
                message = f"cannot open audit database {path}: {first_line}"
                raise QueryError(message, EXIT_UNAVAILABLE) from exc
            time.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))
            delay = min(delay * 2, 0.2)


def run_sql(
    db_path: str | Path,
    sql: str,
    fmt: Format = "table",
    out: TextIO | None = None,
    *,
    err: TextIO | None = None,
    max_width: int = 48,
    lock_retry_seconds: float = 2.0,
) -> int:
    """Run ``sql`` read-only on the audit database and print the result to ``out``.

    ``fmt``: ``"table"`` (aligned text, cells cut at ``max_width``, row count
    last), ``"json"`` (array of objects; JSON columns nested, datetimes as ISO
    8601) or ``"csv"`` (with a header). Errors go to ``err`` (default stderr)
    as one message, without traceback. Returns the exit code: 0 success,
    1 SQL error, 2 database missing/unreadable/locked or unknown format.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    if fmt not in FORMATS:
        err.write(f"mcpfw: error: unknown format {fmt!r} (expected one of {', '.join(FORMATS)})\n")
        return EXIT_UNAVAILABLE
    try:
        columns, rows = query(db_path, sql, lock_retry_seconds=lock_retry_seconds)
    except QueryError as exc:
        err.write(f"mcpfw: error: {exc}\n")
        return exc.exit_code
    if fmt == "json":
        write_json(columns, rows, out)
    elif fmt == "csv":
        write_csv(columns, rows, out)
    else:
        write_table(columns, rows, out, max_width=max_width)
    return EXIT_OK


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)  # intervals, and anything else DuckDB may return


def _json_ready(value: Any, type_name: str) -> Any:
    if type_name == "JSON" and isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def write_json(columns: Sequence[tuple[str, str]], rows: Sequence[tuple[Any, ...]], out: TextIO) -> None:
    """Rows as a JSON array of objects (JSON columns nested, datetimes ISO 8601)."""
    objects = [
        {name: _json_ready(value, kind) for (name, kind), value in zip(columns, row, strict=True)}
        for row in rows
    ]
    options = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    out.write(orjson.dumps(objects, default=_json_default, option=options).decode())
    out.write("\n")


def _text(value: Any) -> str:
    """Plain text of a value for CSV and table output ("" for NULL)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (dt.date, dt.time, uuid.UUID, decimal.Decimal, int, float)):
        return str(value)
    if isinstance(value, (list, tuple, dict)):
        return orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()
    return str(value)


def write_csv(columns: Sequence[tuple[str, str]], rows: Sequence[tuple[Any, ...]], out: TextIO) -> None:
    """Rows as CSV with a header line; NULL is an empty field, lists are JSON."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([name for name, _ in columns])
    for row in rows:
        writer.writerow([_text(value) for value in row])


def _cell(value: Any, max_width: int) -> str:
    text = "NULL" if value is None else _text(value)
    text = text.replace("\r", "").replace("\n", "\\n").replace("\t", " ")
    if len(text) > max_width:
        text = text[: max(max_width - 1, 1)] + "…"
    return text


def write_table(
    columns: Sequence[tuple[str, str]],
    rows: Sequence[tuple[Any, ...]],
    out: TextIO,
    *,
    max_width: int = 48,
) -> None:
    """Rows as an aligned text table followed by the row count."""
    if not columns:
        out.write("OK\n")
        return
    headers = [_cell(name, max_width) for name, _ in columns]
    cells = [[_cell(value, max_width) for value in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [type_name.startswith(_NUMERIC_TYPES) for _, type_name in columns]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return " | ".join(parts).rstrip() + "\n"

    out.write(line(headers))
    out.write("-+-".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write(line(row))
    out.write(f"({len(rows)} row{'' if len(rows) == 1 else 's'})\n")
