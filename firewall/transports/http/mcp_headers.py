"""The 2026-07-28 routing headers (``Mcp-Method``, ``Mcp-Name``, ``Mcp-Param-*``) and the body.

Gateways route on these headers while the server executes the body, so a request whose
headers say one thing and whose body another is refused here, whatever the policy: the
policy judges the body, and nothing downstream may act on something else. The policy
also sees the headers (``input.findings.http``), through :class:`HttpFindings`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from decimal import Decimal, InvalidOperation
from typing import Any

from ...pipeline import C2S, MessageContext, learns_nothing

METHOD = "mcp-method"
NAME = "mcp-name"
VERSION = "mcp-protocol-version"
PARAM_PREFIX = "mcp-param-"
ROUTING = (VERSION, METHOD, NAME)
# Method -> the params member mirrored in Mcp-Name.
NAME_PARAMS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_META_VERSION = "io.modelcontextprotocol/protocolVersion"
_SENTINEL = re.compile(r"^=\?base64\?(.*)\?=$")
_SAFE = re.compile(r"^[\x20-\x7e]*$")

# The routing headers of the request being inspected, for HttpFindings (set around inspect()).
current_http: ContextVar[dict[str, Any] | None] = ContextVar("mcpfw_http_request", default=None)


def decode_value(value: str | None) -> str | None:
    """A header value with the ``=?base64?...?=`` wrapping undone (None if malformed)."""
    if value is None:
        return None
    match = _SENTINEL.match(value)
    if match is None:
        return value
    try:
        raw = base64.b64decode(match.group(1), validate=True)
        if base64.b64encode(raw).decode("ascii") != match.group(1):
            return None
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def encode_value(value: str) -> str:
    """The header form of ``value``: as is when it survives HTTP, base64-wrapped otherwise."""
    if _SAFE.match(value) and value == value.strip() and not _SENTINEL.match(value):
        return value
    return "=?base64?" + base64.b64encode(value.encode("utf-8")).decode("ascii") + "?="


def collect(getall: Callable[[str], list[str]], names: Iterable[str]) -> tuple[dict[str, str], str | None]:
    """The MCP headers present (lower-case names) and, if one is repeated, a complaint."""
    found: dict[str, str] = {}
    for name in names:
        lower = name.lower()
        if lower in ROUTING or lower.startswith(PARAM_PREFIX):
            values = getall(name)
            if len(values) > 1 or lower in found:
                return found, f"the {name} header appears more than once"
            if values:
                found[lower] = values[0]
    return found, None


def mismatch(headers: dict[str, str], body: Any) -> str | None:
    """Why the routing headers contradict the JSON-RPC body, or None if they agree."""
    has_routing = METHOD in headers or NAME in headers or any(k.startswith(PARAM_PREFIX) for k in headers)
    if not has_routing:
        return None
    if not isinstance(body, dict):
        return "routing headers on a request that is not a single JSON-RPC message"
    method = body.get("method")
    if METHOD in headers and headers[METHOD] != method:
        return f"the Mcp-Method header ({headers[METHOD]!r}) differs from the body's method ({method!r})"
    params = body.get("params") if isinstance(body.get("params"), dict) else {}
    name_param = NAME_PARAMS.get(method) if isinstance(method, str) else None
    if NAME in headers:
        header_name = decode_value(headers[NAME])
        if name_param is None:
            return f"an Mcp-Name header on {method!r}, which names nothing"
        if header_name is None or header_name != params.get(name_param):
            return f"the Mcp-Name header differs from the body's {name_param!r}"
    if VERSION in headers:
        meta = params.get("_meta")
        body_version = meta.get(_META_VERSION) if isinstance(meta, dict) else None
        if body_version is not None and body_version != headers[VERSION]:
            return "the MCP-Protocol-Version header differs from the body's protocol version"
    return None


# -- Mcp-Param-*: tool arguments mirrored in headers (x-mcp-header in the tool's inputSchema) --

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_PRIMITIVE = frozenset({"string", "integer", "boolean", "number"})
_MAX_DEPTH = 8
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")  # [0-9]: not other scripts' digits


class ParamBinding(tuple[str, tuple[str, ...], str]):
    """(header name in lower case, path of the argument in ``arguments``, declared type)."""

    __slots__ = ()

    @property
    def header(self) -> str:
        return self[0]

    @property
    def path(self) -> tuple[str, ...]:
        return self[1]

    @property
    def kind(self) -> str:
        return self[2]


def param_bindings(input_schema: Any) -> tuple[ParamBinding, ...] | None:
    """The ``Mcp-Param-*`` headers a tool declares, or None when its declarations are invalid
    (a client rejects such a tool, so nothing is enforced for it). Only properties reached
    through ``properties`` keys count; each names an HTTP token, once (case-insensitive),
    on a primitive-typed property."""
    found: list[ParamBinding] = []
    seen: set[str] = set()

    def walk(schema: Any, path: tuple[str, ...]) -> bool:
        if not isinstance(schema, dict) or len(path) > _MAX_DEPTH:
            return True
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return True
        for key, prop in properties.items():
            if not isinstance(prop, dict):
                continue
            here = (*path, key)
            name = prop.get("x-mcp-header")
            if name is not None:
                kind = prop.get("type")
                if not isinstance(name, str) or not _TOKEN.match(name) or kind not in _PRIMITIVE:
                    return False
                header = PARAM_PREFIX + name.lower()
                if header in seen:
                    return False
                seen.add(header)
                found.append(ParamBinding((header, here, kind)))
            elif not walk(prop, here):
                return False
        return True

    if not walk(input_schema, ()):
        return None
    return tuple(found)


def _argument(arguments: Any, path: tuple[str, ...]) -> Any:
    value = arguments
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _agrees(header_value: str, value: Any) -> bool:
    if isinstance(value, bool):
        return header_value == ("true" if value else "false")
    if isinstance(value, (int, float)):
        return _same_number(header_value, value)
    if isinstance(value, str):
        return header_value == value
    return False


def _same_number(header_value: str, value: int | float) -> bool:
    """The header, read as the JSON number it spells, has exactly the body's value.

    Numbers compare as numbers (as the spec asks), so ``42``, ``42.0`` and ``4.2e1`` all agree
    with 42 (a Python client writes ``1e+20`` for the float 1e20); but never through floats,
    which would make 2**53 agree with 2**53 + 1. A float argument counts as its shortest
    decimal, the text clients write. ``1_0``, ``+10``, ``007``, `` 10`` are not JSON numbers.
    """
    if _JSON_NUMBER.fullmatch(header_value) is None:
        return False
    try:
        return Decimal(header_value) == (Decimal(value) if isinstance(value, int) else Decimal(repr(value)))
    except InvalidOperation:  # an exponent beyond Decimal's range: no argument has that value
        return False


def param_mismatch(
    headers: dict[str, str], body: Any, bindings: tuple[ParamBinding, ...] | None, *, known: bool
) -> str | None:
    """Why the ``Mcp-Param-*`` headers contradict the call's arguments, or None.

    ``known``: the tool's declarations were seen (in a ``tools/list`` answer); ``bindings``
    are then what it declares (None: invalid declarations, nothing enforced). When they were
    not seen, the values cannot be tied to arguments and only the method is checked.
    """
    params_headers = [k for k in headers if k.startswith(PARAM_PREFIX)]
    method = body.get("method") if isinstance(body, dict) else None
    if params_headers and method != "tools/call":
        return f"an Mcp-Param header on {method!r}, which is not a tools/call"
    if method != "tools/call" or not known or bindings is None:
        return None
    params = body.get("params") if isinstance(body.get("params"), dict) else {}
    arguments = params.get("arguments") if isinstance(params.get("arguments"), dict) else {}
    declared = {b.header for b in bindings}
    for name in params_headers:
        if name not in declared:
            return f"the {name} header is not declared by the tool"
    for binding in bindings:
        value = _argument(arguments, binding.path)
        raw = headers.get(binding.header)
        if value is None:
            if raw is not None:
                return f"the {binding.header} header has no argument in the body"
            continue
        if raw is None:
            return f"the {binding.header} header is missing for an argument in the body"
        decoded = decode_value(raw)
        if decoded is None or not _agrees(decoded, value):
            return f"the {binding.header} header differs from the body's argument"
    return None


def rederive(headers: dict[str, str], old: Any, new: Any) -> tuple[dict[str, str], str | None]:
    """Headers matching a body the firewall rewrote; a complaint when they cannot be kept in step.

    ``Mcp-Name`` and ``Mcp-Method`` follow the new body. ``Mcp-Param-*`` headers mirror
    tool arguments through the tool's schema, which the firewall does not track, so a
    rewrite of the arguments of a request carrying them is refused instead.
    """
    if not isinstance(new, dict) or not isinstance(old, dict):
        return {}, None
    updates: dict[str, str] = {}
    if METHOD in headers and isinstance(new.get("method"), str):
        updates[METHOD] = new["method"]
    name_param = NAME_PARAMS.get(new.get("method"))  # type: ignore[arg-type]
    new_params = new.get("params") if isinstance(new.get("params"), dict) else {}
    if NAME in headers and name_param and isinstance(new_params.get(name_param), str):
        updates[NAME] = encode_value(new_params[name_param])
    if any(k.startswith(PARAM_PREFIX) for k in headers):
        old_params = old.get("params") if isinstance(old.get("params"), dict) else {}
        if old_params.get("arguments") != new_params.get("arguments"):
            return updates, "the policy rewrote arguments that Mcp-Param-* headers mirror"
    return {k: v for k, v in updates.items() if headers.get(k) != v}, None


class HttpFindings:
    """Enricher: puts the HTTP request's MCP headers into ``input.findings.http``."""

    name = "http"

    def enrich(self, ctx: MessageContext) -> None:
        if ctx.direction != C2S:
            return
        info = current_http.get()
        if info is not None:
            ctx.findings["http"] = info

    after = learns_nothing
