"""What the registry pins: the canonical form of tool, prompt and template definitions.

A definition is reduced to the fields that change what a model is told or may send
(for a tool: name, title, description, inputSchema, outputSchema, annotations), with
absent and null fields treated alike, and pinned by the SHA-256 of its canonical JSON
(sorted keys, no whitespace, UTF-8). Two servers that serialise the same definition
differently therefore get the same digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_TENANT = "default"  # until identities carry a tenant
KINDS = ("tools", "prompts", "resource_templates")
PROTOCOL_FIELDS = ("era", "version", "capabilities")


@dataclass(frozen=True, slots=True)
class KindSpec:
    """How one kind of definition appears on the wire and what of it is pinned."""

    kind: str  # registry name: tools, prompts, resource_templates
    label: str  # singular, for messages
    list_method: str
    result_key: str  # the array in the list result
    key_field: str  # what identifies an entry within a server
    fields: tuple[str, ...]  # pinned fields, in the order the registry file shows them
    shadowable: bool  # whether a name offered by two servers is worth reporting


SPECS: dict[str, KindSpec] = {
    "tools": KindSpec(
        "tools", "tool", "tools/list", "tools", "name",
        ("name", "title", "description", "inputSchema", "outputSchema", "annotations"), True,
    ),
    "prompts": KindSpec(
        "prompts", "prompt", "prompts/list", "prompts", "name",
        ("name", "title", "description", "arguments"), True,
    ),
    "resource_templates": KindSpec(
        "resource_templates", "resource template", "resources/templates/list", "resourceTemplates", "uriTemplate",
        ("uriTemplate", "name", "title", "description", "mimeType", "annotations"), False,
    ),
}
BY_LIST_METHOD = {spec.list_method: spec for spec in SPECS.values()}
# Requests that use a definition by its key: checked against what the registry allows.
BY_USE_METHOD = {"tools/call": SPECS["tools"], "prompts/get": SPECS["prompts"]}
# Change notifications (also what subscriptions/listen streams carry in the 2026-07-28 era).
BY_CHANGE_NOTIFICATION = {
    "notifications/tools/list_changed": SPECS["tools"],
    "notifications/prompts/list_changed": SPECS["prompts"],
    "notifications/resources/list_changed": SPECS["resource_templates"],
}


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, non-ASCII kept as UTF-8."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # orjson refuses integers beyond 64 bits; the standard library writes the same form.
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def digest_of(value: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


def canonical_definition(spec: KindSpec, item: Any) -> dict[str, Any] | None:
    """The pinned part of a definition in spec order, or None if it has no usable key."""
    if not isinstance(item, dict) or not isinstance(item.get(spec.key_field), str):
        return None
    return {name: item[name] for name in spec.fields if item.get(name) is not None}


def protocol_record(era: str, version: str | None, capabilities: Any) -> dict[str, Any]:
    """What is pinned about a server's protocol: era, negotiated version, capabilities."""
    return {"era": era, "version": version, "capabilities": capabilities if isinstance(capabilities, dict) else {}}
