"""``mcpfw detect``: score texts outside the proxy, with the proxy's own detector path.

Reads JSON lines on stdin, writes one JSON line per input::

    {"text": "...", "kind": "prompt" | "tool_output" | "tool_description"}
    {"kind": "intent", "task": "...", "tool_call": {"name": "...", "arguments": {...}}}

Each input becomes the MCP message the proxy would judge (a tools/call result for
``tool_output``, a prompts/get result for ``prompt``, a tools/list result for
``tool_description``, a tools/call request carrying the task in ``_meta`` for ``intent``)
and goes through the same enrichers; the output is their findings plus a summary score
(0 to 1, higher = more malicious) and label. An optional ``id`` is echoed back.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

import orjson

from .config import Config
from .detection_enrichers import INTENT_META_KEY, Detectors
from .jsonrpc import Kind, Message
from .pipeline import C2S, S2C, MessageContext
from .session import PendingRequest, ServerIdentity, Session

TEXT_KINDS = ("prompt", "tool_output", "tool_description")
_SEVERITY_SCORE = {"high": 1.0, "medium": 0.5, "low": 0.2}


class DetectRunner:
    """Builds each input's message and runs the configured enrichers over it."""

    def __init__(self, config: Config) -> None:
        self.detectors = Detectors(config.detectors)
        self.enrichers = self.detectors.enrichers()
        self.session = Session(ServerIdentity(name="detect"), transport="stdio", cwd="/", resolve_symlinks=False)

    def run(self, item: Any) -> dict[str, Any]:
        """The output line for one parsed input line."""
        if not isinstance(item, dict):
            return {"error": "each line must be a JSON object"}
        kind = item.get("kind", "tool_output")
        if kind == "intent":
            out = self._intent(item)
        elif kind in TEXT_KINDS and isinstance(item.get("text"), str):
            out = self._text(item["text"], kind)
        else:
            out = {"error": f"expected text with kind in {TEXT_KINDS}, or kind 'intent' with task and tool_call"}
        if "id" in item:
            out = {"id": item["id"], **out}
        return out

    def _context(self, body: dict[str, Any], direction: str, method: str, tool: dict[str, Any] | None = None) -> MessageContext:
        if "method" in body:
            return MessageContext(Message(body, Kind.REQUEST), direction, self.session, method, body.get("params"), tool, None)
        pending = PendingRequest(method, {}, tool, 0.0)
        return MessageContext(Message(body, Kind.RESPONSE), direction, self.session, method, None, tool, pending)

    def _enrich(self, ctx: MessageContext) -> dict[str, Any]:
        for enricher in self.enrichers:
            enricher.enrich(ctx)
        return ctx.findings

    def _text(self, text: str, kind: str) -> dict[str, Any]:
        if kind == "tool_output":
            body = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": text}]}}
            ctx = self._context(body, S2C, "tools/call", {"name": "detect", "arguments": {}})
        elif kind == "prompt":
            message = {"role": "user", "content": {"type": "text", "text": text}}
            body = {"jsonrpc": "2.0", "id": 1, "result": {"messages": [message]}}
            ctx = self._context(body, S2C, "prompts/get")
        else:
            body = {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "detect", "description": text, "inputSchema": {"type": "object"}}]}}
            ctx = self._context(body, S2C, "tools/list")
        findings = self._enrich(ctx)
        if kind == "tool_description" and self.detectors.injection is not None:
            # A list result is not classifier-scored by the proxy (rules decide poisoning);
            # here the description's classifier score is part of the answer.
            found = self.detectors.injection.scan(
                [_target("/result/tools/0/description", "tool_description", text)]
            )
            if found is not None:
                findings["injection"] = found
        return {**_summary(kind, findings), "findings": findings}

    def _intent(self, item: dict[str, Any]) -> dict[str, Any]:
        call, task = item.get("tool_call"), item.get("task")
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not isinstance(task, str):
            return {"error": "an intent line needs a task string and a tool_call with a name"}
        arguments = call.get("arguments") if isinstance(call.get("arguments"), dict) else {}
        if isinstance(call.get("description"), str):  # as if the session had seen it in tools/list
            listing = {"jsonrpc": "2.0", "id": 0, "result": {"tools": [{"name": call["name"], "description": call["description"]}]}}
            self._enrich(self._context(listing, S2C, "tools/list"))
        params = {"name": call["name"], "arguments": arguments, "_meta": {INTENT_META_KEY: task}}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        findings = self._enrich(self._context(body, C2S, "tools/call", {"name": call["name"], "arguments": arguments}))
        intent = findings.get("intent")
        if intent is None:
            return {"score": None, "label": "unscored", "findings": findings}
        return {"score": intent["score"], "label": intent["label"], "findings": findings}


def _target(pointer: str, kind: str, text: str) -> Any:
    from .detection_enrichers import ScanTarget

    return ScanTarget(pointer, kind, text)


def _summary(kind: str, findings: dict[str, Any]) -> dict[str, Any]:
    injection = findings.get("injection") or {}
    score = float(injection.get("score", 0.0))
    label = "injection" if injection.get("label") == "injection" else "benign"
    if kind == "tool_description":
        hits = [h for item in (findings.get("poisoning") or {}).get("items", []) for h in item["hits"]]
        evidence = max((_SEVERITY_SCORE[h["severity"]] for h in hits), default=0.0)
        if evidence >= 1.0:
            label = "poisoned"
        score = max(score, evidence)
    # Not rounded again: the finding's score already has as many decimals as it takes to
    # compare with its threshold the way the exact score did (reported_score).
    return {"score": score, "label": label}


def run_detect(config: Config, lines: Iterable[str], out: TextIO) -> int:
    """Score every line; returns 0, or 1 if any line could not be read."""
    runner = DetectRunner(config)
    status = 0
    for line in lines:
        if not line.strip():
            continue
        try:
            result = runner.run(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            result = {"error": f"invalid JSON: {exc}"}
        if "error" in result:
            status = 1
        out.write(orjson.dumps(result).decode() + "\n")
        out.flush()
    return status


def main_detect(config: Config) -> int:
    return run_detect(config, sys.stdin, sys.stdout)
