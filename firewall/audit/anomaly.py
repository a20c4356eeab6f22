"""Anomaly scoring over the audit log (``mcpfw audit anomalies``).

Each principal (tenant + subject, else API key id, else MCP client name) is compared with its
own past, bucket by bucket (an hour by default), on three signals:

* ``request_rate``: client requests in the bucket against the principal's mean over the
  look-back window (a week of buckets by default, counting the empty ones, which a baseline
  built from busy buckets alone would forget). Score: ``(observed - mean) / sd`` with ``sd``
  the larger of the observed spread and the Poisson spread (``sqrt(mean)``), and at least 1,
  so a principal that always sends exactly 10 calls is not flagged for 12;
* ``denial_rate``: denied requests against what the principal's own denial share predicts for
  the bucket's volume (binomial spread), so a volume spike alone does not count twice and a
  sudden run of refusals (probing, a compromised agent) stands out;
* ``new_tool``: the first call of a (server, tool) the principal never called before. Its
  probability is estimated from how often the principal's past calls were first uses
  (``(first uses + 1) / (calls + 2)``) and turned into the same scale as the others (the
  standard normal quantile), so a new tool after thousands of calls of three tools scores high
  and one among many first uses does not.

Rates are judged only once a principal has ``min_history`` buckets of history, and only from
``min_count`` requests (resp. denials) in a bucket. A bucket is flagged from ``min_score``
(3 by default: about 1 in 700 under the baseline). The SQL reads only the columns it needs on a
read-only connection, so it runs while the firewall writes.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import duckdb

from .query import EXIT_SQL_ERROR, EXIT_UNAVAILABLE, QueryError, connect_read_only

__all__ = ["Anomaly", "AnomalySettings", "find_anomalies", "parse_duration"]

_PRINCIPAL = "coalesce(subject, key_id, client_name, '(anonymous)')"
_REQUESTS = "direction = 'client_to_server' AND kind = 'request'"

_RATE_SQL = f"""
WITH requests AS (
    SELECT epoch(ts)::BIGINT // {{bucket}} AS k,
           coalesce(tenant, '') AS tenant,
           {_PRINCIPAL} AS principal,
           decision = 'deny' AS denied
    FROM decisions
    WHERE {_REQUESTS} AND ts >= $from AND ts < $until
),
first_seen AS (
    SELECT coalesce(tenant, '') AS tenant, {_PRINCIPAL} AS principal, min(epoch(ts)::BIGINT // {{bucket}}) AS first_k
    FROM decisions
    WHERE {_REQUESTS}
    GROUP BY ALL
),
per_bucket AS (
    SELECT tenant, principal, k, count(*) AS requests, count(*) FILTER (WHERE denied) AS denials
    FROM requests
    GROUP BY ALL
),
history AS (
    SELECT *,
           sum(requests) OVER recent AS r1,
           sum(requests * requests) OVER recent AS r2,
           sum(denials) OVER recent AS d1
    FROM per_bucket
    WINDOW recent AS (PARTITION BY tenant, principal ORDER BY k
                      RANGE BETWEEN {{lookback}} PRECEDING AND 1 PRECEDING)
)
SELECT h.k, h.tenant, h.principal, h.requests, h.denials,
       least({{lookback}}, h.k - f.first_k) AS n,
       coalesce(h.r1, 0), coalesce(h.r2, 0), coalesce(h.d1, 0)
FROM history h JOIN first_seen f USING (tenant, principal)
WHERE h.k >= {{since_k}} AND h.k - f.first_k >= {{min_history}}
"""

_NEW_TOOL_SQL = f"""
WITH calls AS (
    SELECT ts, decision_id,
           coalesce(tenant, '') AS tenant,
           {_PRINCIPAL} AS principal,
           coalesce(server, '') AS server,
           tool
    FROM decisions
    WHERE {_REQUESTS} AND method = 'tools/call' AND tool IS NOT NULL
),
ordered AS (
    SELECT *,
           row_number() OVER (PARTITION BY tenant, principal, server, tool ORDER BY ts, decision_id) = 1 AS first_use,
           row_number() OVER (PARTITION BY tenant, principal ORDER BY ts, decision_id) - 1 AS earlier_calls
    FROM calls
),
counted AS (
    SELECT *,
           coalesce(sum(first_use::INTEGER) OVER (PARTITION BY tenant, principal ORDER BY ts, decision_id
                                                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS earlier_tools
    FROM ordered
)
SELECT ts, tenant, principal, server, tool, earlier_calls, earlier_tools
FROM counted
WHERE first_use AND ts >= $since AND ts < $until AND earlier_calls >= {{min_calls}}
"""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.I)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NORMAL = NormalDist()


def parse_duration(text: str) -> dt.timedelta:
    """``90s``, ``15m``, ``1h``, ``7d``, ``2w`` as a timedelta; ValueError otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (expected a number and s, m, h, d or w, e.g. 1h or 7d)")
    return dt.timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()])


@dataclass(frozen=True)
class AnomalySettings:
    """How buckets, baselines and thresholds are chosen (CLI options of the same names)."""

    bucket: dt.timedelta = dt.timedelta(hours=1)
    lookback: dt.timedelta = dt.timedelta(days=7)
    since: dt.datetime | None = None  # report buckets from here; default: the last 24 hours
    min_score: float = 3.0
    min_history: int = 24  # buckets a principal must have been seen for before its rates are judged
    min_count: int = 10  # requests in a bucket before a volume can be anomalous
    min_denials: int = 5  # denials in a bucket before a denial share can be anomalous
    min_calls: int = 20  # earlier tool calls before a first use can be anomalous

    def __post_init__(self) -> None:
        if self.bucket < dt.timedelta(seconds=1):
            raise ValueError("the bucket must be at least one second")
        if self.lookback < self.bucket:
            raise ValueError("the look-back window must be at least one bucket")
        for name in ("min_history", "min_count", "min_denials", "min_calls"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not math.isfinite(self.min_score) or self.min_score < 0:
            raise ValueError(f"the minimum score must be a number from 0 up, not {self.min_score}")

    @property
    def bucket_seconds(self) -> int:
        return max(1, int(self.bucket.total_seconds()))

    @property
    def lookback_buckets(self) -> int:
        return max(1, int(self.lookback.total_seconds()) // self.bucket_seconds)

    def start(self, now: dt.datetime) -> dt.datetime:
        return self.since if self.since is not None else now - dt.timedelta(hours=24)


@dataclass(frozen=True)
class Anomaly:
    """One flagged bucket of one principal."""

    bucket: dt.datetime  # start of the bucket
    tenant: str
    principal: str
    signal: str  # request_rate | denial_rate | new_tool
    tool: str  # "server/tool" for new_tool, else ""
    observed: float
    expected: float
    score: float
    why: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_anomalies(
    db_path: str | Path, settings: AnomalySettings | None = None, *, now: dt.datetime | None = None
) -> list[Anomaly]:
    """Flagged buckets of the audit log at ``db_path`` between ``settings.since`` and ``now``
    (default: the current time), highest score first.

    Read-only. Raises :class:`~firewall.audit.query.QueryError` when the file is missing,
    locked for longer than a moment, or not an audit log.
    """
    settings = settings or AnomalySettings()
    now = _aware(now or dt.datetime.now(dt.UTC))
    since = _aware(settings.start(now))
    path = Path(db_path).expanduser()
    if not path.is_file():
        raise QueryError(f"audit database not found: {path}", EXIT_UNAVAILABLE)
    bucket = settings.bucket_seconds
    since_k = int(since.timestamp()) // bucket
    history_from = dt.datetime.fromtimestamp((since_k - settings.lookback_buckets) * bucket, dt.UTC)
    con = connect_read_only(path, 2.0)
    try:
        rates = con.execute(
            _RATE_SQL.format(bucket=bucket, lookback=settings.lookback_buckets, since_k=since_k,
                             min_history=settings.min_history),
            {"from": history_from, "until": now},
        ).fetchall()
        firsts = con.execute(_NEW_TOOL_SQL.format(min_calls=settings.min_calls),
                             {"since": since, "until": now}).fetchall()
    except duckdb.Error as exc:
        raise QueryError(f"cannot score {path}: {str(exc).splitlines()[0]}", EXIT_SQL_ERROR) from exc
    finally:
        con.close()
    found = [a for row in rates for a in _rate_anomalies(row, settings)]
    found += [a for row in firsts if (a := _new_tool_anomaly(row, settings)) is not None]
    found.sort(key=lambda a: (-a.score, a.bucket, a.tenant, a.principal, a.signal))
    return found


def _rate_anomalies(row: tuple[Any, ...], settings: AnomalySettings) -> list[Anomaly]:
    k, tenant, principal, requests, denials, n, r1, r2, d1 = row
    n = max(int(n), 1)
    start = dt.datetime.fromtimestamp(k * settings.bucket_seconds, dt.UTC)
    mean = r1 / n
    spread = math.sqrt(max(r2 / n - mean * mean, mean, 1.0))
    share = (d1 + 0.5) / (r1 + 1.0)  # the principal's own denial share, never exactly 0 or 1
    expected = requests * share
    denial_spread = math.sqrt(max(requests * share * (1 - share), 1.0))
    checks = (  # (signal, observed, expected, score, least observed count, why)
        ("request_rate", requests, mean, (requests - mean) / spread, settings.min_count,
         f"{requests} requests in the bucket; usually {mean:.1f} ± {spread:.1f} over the {n} buckets before"),
        ("denial_rate", denials, expected, (denials - expected) / denial_spread, settings.min_denials,
         f"{denials} of {requests} requests denied; {d1:g} of {r1:g} before ({100 * d1 / r1 if r1 else 0:.1f} %)"),
    )
    return [
        Anomaly(start, tenant, principal, signal, "", observed, round(baseline, 2), round(score, 1), why)
        for signal, observed, baseline, score, least, why in checks
        if observed >= least and score >= settings.min_score
    ]


def _new_tool_anomaly(row: tuple[Any, ...], settings: AnomalySettings) -> Anomaly | None:
    ts, tenant, principal, server, tool, earlier_calls, earlier_tools = row
    chance = (earlier_tools + 1) / (earlier_calls + 2)
    score = _NORMAL.inv_cdf(1 - chance) if chance < 1 else 0.0
    if score < settings.min_score:
        return None
    named = f"{server}/{tool}" if server else tool
    at = _aware(ts)
    start = dt.datetime.fromtimestamp(int(at.timestamp()) // settings.bucket_seconds * settings.bucket_seconds, dt.UTC)
    return Anomaly(
        start, tenant, principal, "new_tool", named, 1, round(chance, 6), round(score, 1),
        f"first call of {named} at {at:%Y-%m-%d %H:%M:%S} after {earlier_calls} calls of {earlier_tools} other "
        f"tools (a first use about 1 in {1 / chance:.0f})",
    )


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
