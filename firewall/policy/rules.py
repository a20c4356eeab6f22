"""What a bundle's Rego modules define, read from the parser's syntax tree (regorus parses;
nothing is evaluated): the rules' paths under ``data``, for checks made before a bundle is
used."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import regorus

from .bundle import PolicyLoadError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

__all__ = ["RuleHead", "check_data_conflicts", "check_defines_decision", "ref_text", "rule_heads"]


@dataclass(frozen=True, slots=True)
class RuleHead:
    """One rule definition: ``data.<package>.<name>`` (the first segment of a ref head),
    where it is written (``start``/``end``: UTF-8 byte offsets of the name in ``file``)."""

    package: tuple[str, ...]
    name: str
    file: str
    start: int
    end: int
    line: int
    default: bool
    function: bool
    ref: bool  # a ref head (``a.b := 1``, ``a[k] := v``): it defines part of ``name``
    partial_set: bool = False  # ``name contains x if ...``


def rule_heads(modules: Mapping[str, str]) -> list[RuleHead]:
    """Every rule of ``modules``, in file order (parsed once per distinct set of modules:
    start-up checks and the engine's own check ask about the same bundle)."""
    return list(_rule_heads(tuple(modules.items())))


@functools.lru_cache(maxsize=8)
def _rule_heads(items: tuple[tuple[str, str], ...]) -> tuple[RuleHead, ...]:
    modules = dict(items)
    engine = regorus.Engine()
    engine.set_rego_v0(False)
    for path, source in modules.items():
        engine.add_policy(path, source)
    heads: list[RuleHead] = []
    for module in json.loads(engine.get_ast_as_json()):
        ast = module["ast"]
        package = tuple(_ref_parts(ast["package"]["refr"]))
        for rule in ast.get("rules", []):
            if "Spec" in rule:
                head = next(iter(rule["Spec"]["head"].items()))
                kind, node = head
                refr = node["refr"]
                default, function, partial_set = False, kind == "Func", kind == "Set"
            elif "Default" in rule:
                refr = rule["Default"]["refr"]
                default, function, partial_set = True, bool(rule["Default"].get("args")), False
            else:
                continue
            var = _first_var(refr)
            if var is None:
                continue
            span = var["span"]
            heads.append(RuleHead(package, var["value"], module["source"]["file"], span["start"], span["end"],
                                  span["line"], default, function, "Var" not in refr, partial_set))
    return tuple(heads)


def check_data_conflicts(modules: Mapping[str, str], data: Mapping[str, Any]) -> None:
    """Refuse data that sits where a rule is defined (``data.mcpfw.decision`` given as data
    next to the rule of that name), as OPA does: an engine that let either win silently would
    let a data file or a configuration value replace the policy's decision."""
    for head in rule_heads(modules):
        node: Any = data
        path = [*head.package, head.name]
        for depth, segment in enumerate(path):
            if not isinstance(node, Mapping):
                where = ".".join(path[:depth])
                raise PolicyLoadError(
                    f"data.{where} is a value in the data document, but rule data.{'.'.join(path)} is defined "
                    f"under it ({head.file}:{head.line})")
            if segment not in node:
                break
            node = node[segment]
        else:
            raise PolicyLoadError(
                f"data.{'.'.join(path)} is defined both by a rule ({head.file}:{head.line}) and in the data "
                "document (a data file or the configuration's policy.data); rename one")


def ref_text(parts: Sequence[str]) -> str:
    """``data.a["b-c"].d``: a path as a Rego reference."""
    text = parts[0]
    for part in parts[1:]:
        text += f".{part}" if _IDENTIFIER.match(part) else f"[{json.dumps(part)}]"
    return text


def _first_var(node: dict[str, Any]) -> dict[str, Any] | None:
    while True:
        if "Var" in node:
            return node["Var"]
        inner = node.get("RefDot") or node.get("RefBrack")
        if inner is None:
            return None
        node = inner["refr"]


def _ref_parts(node: dict[str, Any]) -> list[str]:
    """A package reference as its path segments."""
    if "Var" in node:
        return [node["Var"]["value"]]
    if "RefDot" in node:
        ref = node["RefDot"]
        return [*_ref_parts(ref["refr"]), ref["field"][1]]
    if "RefBrack" in node:
        ref = node["RefBrack"]
        index = ref["index"]
        if "String" not in index:
            raise PolicyLoadError(f"unsupported package path element: {index}")
        return [*_ref_parts(ref["refr"]), index["String"]["value"]]
    raise PolicyLoadError(f"unsupported package path: {node}")


def check_defines_decision(modules: Mapping[str, str]) -> None:
    """Refuse a bundle that cannot decide anything: no rule defines ``data.mcpfw.decision``
    (every message would be denied, with nothing at start saying why)."""
    for head in rule_heads(modules):
        path = (*head.package, head.name)
        if path[:2] == ("mcpfw", "decision"):
            return
    raise PolicyLoadError(
        "no rule defines data.mcpfw.decision (the document the firewall evaluates): "
        "is the package named 'mcpfw'? See docs/contracts.md")
