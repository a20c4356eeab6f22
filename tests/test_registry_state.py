"""The learned state shared by firewall processes: no lost writes, no torn reads, fail closed."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import orjson
import pytest

from firewall.registry.definitions import SPECS, canonical_definition, digest_of
from firewall.registry.files import RegistryFileError
from firewall.registry.state import StateStore
from firewall.registry.store import ListObservation, RegistryStore

WORKERS = 8


def entries(*tools: tuple[str, str]) -> list[tuple[str, str, dict]]:
    out = []
    for name, description in tools:
        definition = canonical_definition(SPECS["tools"], {"name": name, "description": description})
        assert definition is not None
        out.append((name, digest_of(definition), definition))
    return out


def _worker(directory: str, index: int, start_at: float) -> None:
    """One firewall process: its own server, plus a server and a tool name every process shares."""
    root = Path(directory)
    store = RegistryStore(root / "registry.yaml", root / "registry.state.json")
    time.sleep(max(0.0, start_at - time.time()))
    store.record(ListObservation("default", f"s{index}", "tools", entries((f"own{index}", "mine"), ("common", f"from s{index}")),
                                 complete=True, may_pin=True))
    store.record(ListObservation("default", "shared", "tools", entries(("x", f"variant {index}")), complete=True, may_pin=True))


def test_concurrent_processes_lose_no_pin_and_agree_on_first_use(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 1.0  # all workers imported and waiting: they write together
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), i, start_at)) for i in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0

    state = orjson.loads((tmp_path / "registry.state.json").read_bytes())
    servers = state["tenants"]["default"]["servers"]
    for i in range(WORKERS):
        assert set(servers[f"s{i}"]["pins"]["tools"]) == {f"own{i}", "common"}, f"s{i} lost its pins"
    shared = servers["shared"]
    assert len(shared["pins"]["tools"]) == 1, "exactly one process made the first use"
    pinned = shared["pins"]["tools"]["x"]["digest"]
    assert pinned in {entries(("x", f"variant {i}"))[0][1] for i in range(WORKERS)}
    assert set(shared["definitions"]) >= {pinned, shared["observed"]["tools"]["x"]["digest"]}

    view = RegistryStore(tmp_path / "registry.yaml", tmp_path / "registry.state.json").view()
    everyone = {f"s{i}" for i in range(WORKERS)}
    shadowing = {s for s in everyone if view.shadows("default", s, "tools", "common", "tofu")}
    pinned_at = {s: servers[s]["pins"]["tools"]["common"]["at"] for s in everyone}
    first = {s for s, at in pinned_at.items() if at == min(pinned_at.values())}
    if len(first) == 1:
        assert shadowing == everyone - first, "everyone but the first to offer 'common' shadows it"
    else:
        # Processes that woke together can read the same clock value: nobody was first,
        # so each of them shadows the others (the fail-closed reading of a tie).
        assert shadowing == everyone
        for s in first:
            assert set(view.shadows("default", s, "tools", "common", "tofu")) >= first - {s}


def test_servers_offering_a_name_at_the_same_instant_shadow_each_other(tmp_path):
    store = RegistryStore(tmp_path / "registry.yaml", tmp_path / "registry.state.json")
    for server, now in (("a", 1000.0), ("b", 1000.0), ("c", 1001.0)):
        store.record(ListObservation("default", server, "tools", entries(("common", f"from {server}")),
                                     complete=True, may_pin=True, now=now))
    view = store.view()
    assert view.shadows("default", "a", "tools", "common", "tofu") == ["b"]
    assert view.shadows("default", "b", "tools", "common", "tofu") == ["a"]
    assert view.shadows("default", "c", "tools", "common", "tofu") == ["a", "b"]


def test_readers_never_see_a_half_written_file(tmp_path):
    store = StateStore(tmp_path / "state.json")
    done = threading.Event()
    errors: list[Exception] = []

    def read_forever() -> None:
        while not done.is_set():
            try:
                store.read()
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(exc)

    reader = threading.Thread(target=read_forever)
    reader.start()
    blob = "x" * 50_000
    for i in range(150):
        store.update(lambda st, i=i: st.setdefault("tenants", {}).update({"t": {"servers": {}, "n": i, "blob": blob}}) is None)
    done.set()
    reader.join()
    assert errors == []
    assert store.read()["tenants"]["t"]["n"] == 149


def test_corrupt_state_fails_closed(tmp_path, capsys):
    state = tmp_path / "registry.state.json"
    store = RegistryStore(tmp_path / "registry.yaml", state)
    store.record(ListObservation("default", "s", "tools", entries(("a", "A")), complete=True, may_pin=True))
    good = store.view()
    state.write_text("{ not json")
    assert store.view() is good, "a running firewall keeps enforcing the last readable state"
    assert "corrupt registry state" in capsys.readouterr().err
    with pytest.raises(RegistryFileError, match="corrupt registry state"):
        RegistryStore(tmp_path / "registry.yaml", state)
    with pytest.raises(RegistryFileError):
        store.record(ListObservation("default", "s", "tools", entries(("b", "B")), complete=True, may_pin=True))
