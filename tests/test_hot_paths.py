"""The relay hot path's shortcuts give the same answers as the long ways round.

Decision cache (pipeline), JSON-text screen before audit redaction, shared string walk,
DuckDB staging from JSON text: each is checked against the plain computation.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
from pathlib import Path

import duckdb
import orjson
import pytest

from detectors.jsonwalk import string_leaves, strings
from firewall.audit.redact import load_secret_rules, redact_for_audit, redacted_json
from firewall.audit.rows import MAX_STORED_CHARS, to_stored_row
from firewall.audit.schema import COLUMNS
from firewall.audit.spill import SpillFile
from firewall.audit import store as store_module
from firewall.audit.store import AuditStats, DuckDBStore
from firewall.config import LimitsConfig
from firewall.pipeline import C2S, S2C, Inspector
from firewall.policy.engine import decision_cache_plan
from firewall.policy.regorus_engine import RegorusEngine
from firewall.session import ServerIdentity, Session

GITHUB_TOKEN = "ghp_" + "Q7x9" * 9


# -- decision cache ---------------------------------------------------------------------------


def test_cache_plan_reads_the_modules():
    plain = "package mcpfw\n\ndecision := {\"allow\": input.method != \"x\"}\n"
    assert decision_cache_plan({"a.rego": plain}).cacheable
    assert decision_cache_plan({"a.rego": plain}).reads == {"method"}
    assert decision_cache_plan({"a.rego": plain}).unread(["id", "method", "session"]) == {"id", "session"}
    assert decision_cache_plan({"a.rego": plain + "x if input.id == 1\n"}).reads == {"id", "method"}
    # Reading the whole input keeps every field in the key.
    for whole in ("x if walk(input, [p, v])", "x := object.keys(input)", "x := input[k]", "i := input"):
        plan = decision_cache_plan({"a.rego": plain + whole + "\n"})
        assert plan.cacheable and plan.reads is None and plan.unread(["id"]) == frozenset()
    # A test's mock replaces the input, it does not read it.
    test = 'test_x if { decision.allow with input as {"method": "y"} }\ntest_y if { x with input.session as {} }\n'
    assert decision_cache_plan({"a.rego": plain, "a_test.rego": test}).reads == {"method"}
    # The clock, randomness, the network: no cache at all.
    for impure in ("time.now_ns()", "rand.intn(\"k\", 9)", "http.send({})", "uuid.rfc4122(\"k\")"):
        assert not decision_cache_plan({"a.rego": plain + f"x := {impure}\n"}).cacheable
    # Comments and strings do not count.
    assert decision_cache_plan({"a.rego": plain + "# time.now_ns() and input.id\ny := \"input.id time.now_ns()\"\n"}).reads == {"method"}
    # A backtick or quote in a comment opens no string: what follows it is still read.
    for stray in ("# a lone ` backtick\n", '# a lone " quote\n'):
        rest = "r if input.rate.exceeded\nq := `raw` \nz := \"s\"\n"
        assert decision_cache_plan({"a.rego": plain + stray + rest}).reads == {"method", "rate"}
        assert not decision_cache_plan({"a.rego": plain + stray + "n := time.now_ns()\n" + rest}).cacheable
    assert decision_cache_plan({"a.rego": plain + 'y := "a # b" # input.id\nz := `# raw` \n'}).reads == {"method"}
    assert not decision_cache_plan({}).cacheable


def test_the_default_bundle_leaves_session_and_id_out_of_the_key():
    from firewall.policy.bundle import load_bundle

    plan = decision_cache_plan(load_bundle(Path(__file__).resolve().parent.parent / "policies").modules)
    assert plan.cacheable
    assert plan.reads is not None and {"tool", "findings", "identity", "rate", "registry"} <= plan.reads
    assert plan.unread(["id", "session", "client"]) == {"id", "session", "client"}


class _Sink:
    accepting = True

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def record(self, row: dict) -> None:
        self.rows.append(row)


class _Counting(RegorusEngine):
    calls = 0

    def evaluate(self, input_json: str) -> dict:
        type(self).calls += 1
        return super().evaluate(input_json)

    def fork(self) -> _Counting:
        forked = _Counting.__new__(_Counting)
        forked._setup(self._modules, self._data_json)
        return forked


POLICY = """package mcpfw

decision := {"allow": count(deny) == 0, "reasons": [r | some r in deny]}

deny contains {"code": "no_rm", "message": "rm is not allowed"} if input.tool.name == "rm"
"""


def _inspector(policy: str = POLICY) -> tuple[Inspector, _Sink, Session]:
    sink = _Sink()
    engine = _Counting({"mcpfw/decision.rego": policy}, {})
    inspector = Inspector(engine, sink, bundle_digest="d", limits=LimitsConfig())
    session = Session(ServerIdentity(name="s"), transport="stdio", cwd="/", resolve_symlinks=False)
    return inspector, sink, session


def _call(i: int, tool: str) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": tool, "arguments": {}}})


def test_repeated_inputs_are_decided_once_and_alike():
    inspector, sink, session = _inspector()
    _Counting.calls = 0
    # (ids unique among open requests: a repeated open id is refused before the policy)
    outcomes = [inspector.inspect(_call(2 * i + (tool == "rm"), tool), C2S, session) for i in range(6) for tool in ("echo", "rm")]
    assert _Counting.calls == 2  # one evaluation per distinct input (the ids differ)
    for outcome, tool in zip(outcomes, ["echo", "rm"] * 6):
        assert outcome.denied == (tool == "rm")
    denied = [o for o in outcomes if o.denied]
    assert all(b'"id":' in o.reply and b"rm is not allowed" in o.reply for o in denied)
    assert [orjson.loads(o.reply)["id"] for o in denied] == [1, 3, 5, 7, 9, 11]
    assert [r["decision"] for r in sink.rows] == ["allow", "deny"] * 6


def test_a_policy_reading_the_id_is_asked_every_time():
    policy = POLICY + '\ndeny contains {"code": "odd", "message": "odd id"} if input.id % 2 == 1\n'
    inspector, _sink, session = _inspector(policy)
    _Counting.calls = 0
    outcomes = [inspector.inspect(_call(i, "echo"), C2S, session) for i in range(4)]
    assert _Counting.calls == 4
    assert [o.denied for o in outcomes] == [False, True, False, True]


def _fresh_session() -> Session:
    return Session(ServerIdentity(name="s"), transport="http", cwd="/", resolve_symlinks=False)


def test_a_fresh_session_per_request_still_hits_the_cache():
    # A stateless HTTP client gets a new session for every request: the session is not
    # read by this policy, so it must not defeat the cache.
    inspector, sink, _session = _inspector()
    _Counting.calls = 0
    outcomes = [inspector.inspect(_call(i, tool), C2S, _fresh_session()) for i in range(4) for tool in ("echo", "rm")]
    assert _Counting.calls == 2
    assert [o.denied for o in outcomes] == [False, True] * 4
    assert len({r["session_id"] for r in sink.rows}) == 8  # the audit still tells them apart


def test_a_policy_reading_the_session_sees_each_one():
    policy = POLICY + '\ndeny contains {"code": "s", "message": "banned session"} if input.session.id == "bad"\n'
    inspector, _sink, _session = _inspector(policy)
    _Counting.calls = 0
    good, bad = _fresh_session(), Session(ServerIdentity(name="s"), transport="http", cwd="/",
                                          resolve_symlinks=False, session_id="bad")
    assert not inspector.inspect(_call(1, "echo"), C2S, good).denied
    assert inspector.inspect(_call(2, "echo"), C2S, bad).denied
    assert not inspector.inspect(_call(3, "echo"), C2S, _fresh_session()).denied
    assert _Counting.calls == 3


def test_a_policy_using_the_clock_is_never_cached():
    policy = POLICY + "\nnow := time.now_ns()\n"
    inspector, _sink, session = _inspector(policy)
    _Counting.calls = 0
    for i in range(3):
        inspector.inspect(_call(i, "echo"), C2S, session)
    assert _Counting.calls == 3


def test_responses_share_cached_decisions_too():
    policy = POLICY + '\ndeny contains {"code": "d", "message": "never"} if input.direction == "sideways"\n'
    inspector, _sink, session = _inspector(policy)
    _Counting.calls = 0
    for i in range(3):
        inspector.inspect(_call(i, "echo"), C2S, session)
        response = orjson.dumps({"jsonrpc": "2.0", "id": i, "result": {"content": []}})
        assert inspector.inspect(response, S2C, session).forward == response
    assert _Counting.calls == 2


# -- engines ready before the first message ----------------------------------------------------


def _on_a_thread(work):
    result: dict = {}

    def run() -> None:
        result["value"] = work()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result["value"]


def test_prepare_builds_the_calling_threads_engine_without_evaluating():
    inspector, _sink, session = _inspector()
    _Counting.calls = 0

    def prepared():
        inspector.prepare()
        engine = inspector._thread_engine()
        built = engine._engine is not None
        return built, inspector.inspect(_call(1, "rm"), C2S, session).denied

    assert _on_a_thread(prepared) == (True, True)
    assert _Counting.calls == 1  # the message's evaluation only
    # Another thread's engine is its own, and is not built until that thread asks.
    assert _on_a_thread(lambda: inspector._thread_engine()._engine is None)


def test_an_engine_that_cannot_be_made_ready_leaves_the_first_message_to_fail_closed():
    inspector, sink, session = _inspector()

    def broken():
        inspector._thread_engine().close()
        inspector.prepare()  # must not raise: the relay thread calls it before anything else
        return inspector.inspect(_call(1, "echo"), C2S, session)

    outcome = _on_a_thread(broken)
    assert outcome.denied
    assert sink.rows[-1]["decision"] == "deny" and "policy_error" in sink.rows[-1]["reason_codes"]


# -- audit redaction screen -------------------------------------------------------------------


def _slow(value, rules, keys):
    redacted = redact_for_audit(value, rules, keys=keys, max_chars=MAX_STORED_CHARS)
    return orjson.dumps(redacted, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


@pytest.mark.parametrize(
    "value",
    [
        {"message": "hello"},
        {"password": "x"},
        {"Pass_Word": "abc"},
        {"api-Key": 3},
        {"pw": 1},
        {"api\nkey": "v"},
        ["--token", "abc"],
        ["--api-key", "v"],
        ["--pa\u017f\u017fword", "hunter2"],
        ["--\u017fecret", "hunter2"],
        ["--tok\u0131n", "x"],
        ["--ap\u0130key", "hunter2"],
        ["--\u0130ccess-key", "hunter2"],
        {"\u212aey": "x", "p\u0130ss": "y"},
        {"a": GITHUB_TOKEN},
        {"url": "https://user:pw@host/x"},
        {"x": "Authorization: Bearer abcdefghijklmnop"},
        {"t": "x" * (MAX_STORED_CHARS + 10)},
        {"n": None, "b": True, "f": 1.5, "l": [1, 2, {"k": "v"}]},
        ("tuple", "x"),
        {1: "int key"},
        {"secrets": [], "pii": [], "injection": {"score": 0.1, "pointer": "/params/arguments/message"}},
        {"secrets": [{"pointer": "/x", "rule": "github-token", "start": 0, "end": 40, "part": "arguments"}]},
        {"k": "K\u212aEY=abcdefghijk"},
        {"e": "é token: abcdefghijklmnopq"},
        {"when": dt.datetime(2024, 1, 1)},
        [],
        {},
    ],
)
def test_redacted_json_matches_the_full_walk(value):
    rules = load_secret_rules()
    for keys in (True, False):
        assert redacted_json(value, rules, keys=keys, max_chars=MAX_STORED_CHARS) == _slow(value, rules, keys)


def test_redacted_json_matches_on_random_values():
    rules = load_secret_rules()
    rng = random.Random(7)
    words = ["hello", "token", "api_key", "sk-", GITHUB_TOKEN, "password=hunter2hunter2", "~/x", "a\"b", "pass", "ok"]

    def value(depth: int = 0):
        pick = rng.random()
        if depth > 3 or pick < 0.4:
            return rng.choice([*words, 1, None, True, 2.5])
        if pick < 0.7:
            return {rng.choice(words) + str(i): value(depth + 1) for i in range(rng.randint(0, 3))}
        return [value(depth + 1) for _ in range(rng.randint(0, 3))]

    for _ in range(2000):
        v = value()
        for keys in (True, False):
            assert redacted_json(v, rules, keys=keys, max_chars=MAX_STORED_CHARS) == _slow(v, rules, keys)


# -- shared string walk ----------------------------------------------------------------------


def test_string_leaves_is_the_walk_filtered():
    rng = random.Random(3)

    def value(depth: int = 0):
        pick = rng.random()
        if depth > 4 or pick < 0.35:
            return rng.choice(["a", "a longer string", "x/y~z", 1, None, "", "tiny"])
        if pick < 0.7:
            return {rng.choice(["k", "a/b", "t~1", "text"]) + str(i): value(depth + 1) for i in range(rng.randint(0, 4))}
        return [value(depth + 1) for _ in range(rng.randint(0, 4))]

    for _ in range(3000):
        v = value()
        for limit in (0, 1, 3, 10_000):
            walked = list(strings(v, "/r", limit=limit))
            for min_len in (0, 6):
                assert string_leaves(v, "/r", min_len=min_len, limit=limit) == [(p, t) for p, t in walked if len(t) >= min_len]


def test_unlimited_walk_recurses_and_agrees_with_the_stack_walk():
    """Without a limit (every detector's case) the walk recurses; it must find the same
    strings at the same pointers in the same order as the explicit-stack walk, for str and
    dict subclasses, non-string keys and values deeper than its recursion depth."""
    rng = random.Random(5)

    class Text(str):
        pass

    class Mapping(dict):
        pass

    def value(depth: int = 0):
        pick = rng.random()
        if depth > 5 or pick < 0.35:
            return rng.choice(["a", "a longer string", "x/y~z", Text("a str subclass"), 1, 2.5, None, True, (1, "t")])
        if pick < 0.7:
            d = {rng.choice(["k", "a/b", "t~1", "text"]) + str(i): value(depth + 1) for i in range(rng.randint(0, 4))}
            if rng.random() < 0.2:
                d[7] = value(depth + 1)  # a non-string key, as Python callers may build
            return Mapping(d) if rng.random() < 0.1 else d
        return [value(depth + 1) for _ in range(rng.randint(0, 4))]

    for _ in range(3000):
        v = value()
        for min_len in (0, 6):
            assert string_leaves(v, "/r", min_len=min_len) == string_leaves(v, "/r", min_len=min_len, limit=10**9)
    deep: object = "the leaf"
    for i in range(3000):  # far deeper than the recursion goes (and than the interpreter would)
        deep = {"a/b": [deep, f"level {i}"]} if i % 2 else [deep]
    walked = string_leaves(deep, "", min_len=3)
    assert walked == string_leaves(deep, "", min_len=3, limit=10**9)
    assert len(walked) == 1 + 1500 and walked[0][0].startswith("/a~1b/0/0/a~1b/0")


# -- staging rows through Arrow or JSON -------------------------------------------------------


@pytest.mark.parametrize("path", ["arrow", "json"])
def test_staging_stores_what_the_appender_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str):
    rules = load_secret_rules()
    rows = [
        {
            "ts": 1_700_000_000.123456 + i if i % 3 else 1_700_000_000 + i, "decision_id": f"d{i}", "direction": "client_to_server", "kind": "request",
            "method": "tools/call", "tool": "t", "message_id": str(i), "arguments": {"q": f"v{i}", "é": "ü\u2028"},
            "decision": "deny", "reasons": [{"code": "c", "message": "m \"quoted\""}], "error_code": -32050 if i % 4 else None,
            "eval_ms": 0.1 * i, "bytes": 100 + i, "findings": {"secrets": []}, "tags": ["a", "b"] if i % 5 else [],
            "upstream_ms": None if i % 2 else 1.25, "rate": {"n": i},
        }
        for i in range(50)
    ]
    # ts at microsecond rounding edges: both paths must round as datetime does.
    rows += [{"ts": 1_700_000_000 + f, "decision_id": f"e{k}"} for k, f in enumerate((0.0000005, 0.0000015, 0.9999995, 0.1234565))]
    stored = [to_stored_row(r, rules) for r in rows]
    if path == "json":
        monkeypatch.setattr(store_module, "_arrow_table", lambda rows, yielder: None)
    store = DuckDBStore(tmp_path / "a.duckdb", SpillFile(tmp_path / "s.jsonl"), AuditStats())
    hub = store._hub_connection()
    staged = store._stage(hub, "staging", stored)
    assert staged == ("staging_arrow" if path == "arrow" else "memory.staging")
    via_store = hub.execute(f"SELECT * FROM {staged} ORDER BY decision_id").fetchall()
    columns = ", ".join(f"{c.name} {c.type}" for c in COLUMNS)
    reference = duckdb.connect(":memory:")
    reference.execute(f"CREATE TABLE staging ({columns})")
    appender = reference.appender("staging")
    from firewall.audit.rows import to_db_values

    appender.append_rows([to_db_values(row) for row in stored])
    appender.flush()
    expected = reference.execute("SELECT * FROM staging ORDER BY decision_id").fetchall()
    # Arrow hands JSON columns over as text: compare what the file table stores.
    assert [tuple(str(v) if c.type == "JSON" and v is not None else v for v, c in zip(row, COLUMNS)) for row in via_store] == [
        tuple(str(v) if c.type == "JSON" and v is not None else v for v, c in zip(row, COLUMNS)) for row in expected
    ]
    assert store.write(stored, include_spill=False, retry_seconds=1.0)
    with duckdb.connect(str(tmp_path / "a.duckdb"), read_only=True) as db:
        assert db.execute("SELECT * FROM decisions ORDER BY decision_id").fetchall() == expected
    store.close(checkpoint=False)


def test_arrow_staging_hands_the_gil_over_between_slices_of_large_rows():
    # Converting to Arrow holds the GIL (page faults of fresh buffers included): large rows
    # are cut into slices of bounded text, and the relay threads get a turn after each.
    rules = load_secret_rules()
    rows = [to_stored_row({"decision_id": f"d{i}", "arguments": {"content": "x" * 20_000 + str(i)}}, rules) for i in range(300)]
    rows += [to_stored_row({"decision_id": f"s{i}", "arguments": {"q": i}}, rules) for i in range(1500)]

    class CountingYielder:
        ticks = 0

        def tick(self) -> None:
            self.ticks += 1

    yielder = CountingYielder()
    slices = store_module._slices(rows, yielder)
    assert slices[0][0] == 0 and slices[-1][1] == len(rows)
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
    arguments = [c.name for c in COLUMNS].index("arguments")
    for start, stop in slices:
        assert stop - start <= store_module._ARROW_SLICE_ROWS
        text = sum(len(row[arguments]) for row in rows[start:stop - 1])
        assert text < store_module._ARROW_SLICE_BYTES  # the last row may pass the budget
    assert len(slices) >= 300 * 20_000 // store_module._ARROW_SLICE_BYTES + 1500 // store_module._ARROW_SLICE_ROWS

    yielder = CountingYielder()
    table = store_module._arrow_table(rows, yielder)
    assert table is not None and table.num_rows == len(rows)
    assert yielder.ticks >= len(slices) * len(COLUMNS)
    assert table.column("arguments").to_pylist() == [row[arguments] for row in rows]


# -- detector memos ---------------------------------------------------------------------------


def test_text_memo_keeps_repeated_keys_only_and_stays_bounded():
    from detectors.memo import TextMemo

    memo: TextMemo[tuple[int, ...]] = TextMemo(entries=8, max_chars=1000)
    memo.put("once", (1,))
    assert memo.get("once") is None  # offered once: not kept
    memo.put("once", (1,))
    assert memo.get("once") == (1,)  # offered again: kept
    for i in range(50):
        memo.put(f"k{i}", (i,))
        memo.put(f"k{i}", (i,))
    assert len(memo) == 8
    assert memo.get("k49") == (49,) and memo.get("k41") is None  # oldest forgotten first
    assert memo.get("once") is None
    # Bounded by characters too: long texts push out old ones, and one over the budget is never kept.
    for i in range(3):
        text = f"{i}" * 400
        memo.put(text, (i,))
        memo.put(text, (i,))
    assert memo.chars <= 1000 and memo.get("2" * 400) == (2,) and memo.get("0" * 400) is None
    assert memo.chars == sum(len(t) for t in memo._entries)
    memo.put("x" * 1001, (9,))
    memo.put("x" * 1001, (9,))
    assert memo.get("x" * 1001) is None


@pytest.mark.parametrize("scanner_name", ["secrets", "pii"])
def test_span_scanners_answer_repeated_texts_as_the_first_time(scanner_name: str):
    from detectors.pii import PiiScanner
    from detectors.secrets import SecretScanner

    scanner = SecretScanner() if scanner_name == "secrets" else PiiScanner()
    texts = [
        f"token {GITHUB_TOKEN} and mail alice@example.com, call +1 415 555 0100",
        "no findings in this ordinary sentence at all",
        f"card 4111 1111 1111 1111, {GITHUB_TOKEN} " + "x " * 150_000,  # longer than the memo keeps
    ]
    fresh = [scanner._scan_text(t) for t in texts]
    assert fresh[0] and not fresh[1] and fresh[2]
    for _ in range(3):  # first sight, second (now kept), third (answered from the memo)
        assert [scanner.scan_text(t) for t in texts] == fresh
    assert scanner._memo.hits == 2 and len(scanner._memo) == 2  # the long text is never kept
    answered = scanner.scan_text(texts[0])
    answered.clear()  # a caller changing its list must not change the memo's
    assert scanner.scan_text(texts[0]) == fresh[0]
    # Leaves at other places get their own pointers from the same memo entry.
    leaves = [("/a", texts[0]), ("/b/0", texts[0])]
    pointers = {f.pointer for f in scanner.scan_leaves(leaves, part="arguments")}
    assert pointers == {"/a", "/b/0"}
