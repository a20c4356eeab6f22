"""An MCP server (Python SDK, low-level API) with the fixtures the conformance suite looks for.

Usage: conformance_server.py --port N [--json-response] [--stateless] [--legacy-sse] [--calls FILE] [--tls CERT KEY]
The suite's server scenarios name fixed tools, resources and prompts (``test_simple_text``,
``test://static-text``, ``test_simple_prompt``, ...); this server implements each as the
scenario describes. Sampling and elicitation go out on the stream of the tool call
(``related_request_id``), so runs through a proxy are deterministic. For mcpfw's own tests
it also has ``echo`` and ``test_slow_stream``, and ``--calls FILE`` records every tool call
the server receives (proof that a denied call never arrived).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server.lowlevel.server import Server
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http import EventStore
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

# A 1x1 red PNG and a tiny silent WAV.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082"
)).decode()
WAV = base64.b64encode(bytes.fromhex(
    "524946462800000057415645666d74201000000001000100401f0000803e0000020010006461746104000000000000000000"
)).decode()

_EMPTY = {"type": "object", "properties": {}}
TOOLS = [
    types.Tool(name="test_simple_text", description="Returns simple text", input_schema=_EMPTY),
    types.Tool(name="test_image_content", description="Returns an image", input_schema=_EMPTY),
    types.Tool(name="test_audio_content", description="Returns audio", input_schema=_EMPTY),
    types.Tool(name="test_embedded_resource", description="Returns an embedded resource", input_schema=_EMPTY),
    types.Tool(name="test_multiple_content_types", description="Returns mixed content", input_schema=_EMPTY),
    types.Tool(name="test_tool_with_logging", description="Logs while it runs", input_schema=_EMPTY),
    types.Tool(name="test_tool_with_progress", description="Reports progress", input_schema=_EMPTY),
    types.Tool(name="test_error_handling", description="Always fails", input_schema=_EMPTY),
    types.Tool(name="test_reconnection", description="Closes its SSE stream mid-call", input_schema=_EMPTY),
    types.Tool(
        name="test_sampling", description="Asks the client to sample",
        input_schema={"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]},
    ),
    types.Tool(
        name="test_elicitation", description="Asks the user",
        input_schema={"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
    ),
    types.Tool(name="test_elicitation_sep1034_defaults", description="Elicitation with defaults", input_schema=_EMPTY),
    types.Tool(name="test_elicitation_sep1330_enums", description="Elicitation with enums", input_schema=_EMPTY),
    types.Tool(
        name="echo", description="Returns its message",
        input_schema={"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
    ),
    types.Tool(name="test_slow_stream", description="Logs at once, answers after a second", input_schema=_EMPTY),
    types.Tool(
        name="json_schema_2020_12_tool",
        description="Tool with JSON Schema 2020-12 features",
        input_schema={
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {
                "address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}
            },
            "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
            "additionalProperties": False,
        },
    ),
]

SEP1034_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "default": "John Doe"},
        "age": {"type": "integer", "default": 30},
        "score": {"type": "number", "default": 95.5},
        "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
        "verified": {"type": "boolean", "default": True},
    },
}
SEP1330_SCHEMA = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {"type": "string", "oneOf": [
            {"const": "value1", "title": "First Option"},
            {"const": "value2", "title": "Second Option"},
            {"const": "value3", "title": "Third Option"},
        ]},
        "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                       "enumNames": ["Option One", "Option Two", "Option Three"]},
        "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {"type": "array", "items": {"anyOf": [
            {"const": "value1", "title": "First Choice"},
            {"const": "value2", "title": "Second Choice"},
            {"const": "value3", "title": "Third Choice"},
        ]}},
    },
}


def text(value: str) -> types.TextContent:
    return types.TextContent(type="text", text=value)


def result(*content: Any, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=list(content), is_error=is_error)


class MemoryEventStore(EventStore):
    """Keeps every event so that a client can resume a stream with Last-Event-ID."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, Any]] = []
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: str, message: Any) -> str:
        event_id = f"{stream_id}_{next(self._ids)}"
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: Any) -> str | None:
        index = next((i for i, (eid, _, _) in enumerate(self._events) if eid == last_event_id), None)
        if index is None:
            return None
        stream_id = self._events[index][1]
        for event_id, sid, message in self._events[index + 1:]:
            if sid == stream_id and message is not None:
                from mcp.server.streamable_http import EventMessage

                await send_callback(EventMessage(message, event_id))
        return stream_id


CALLS: list[Path] = []


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    name = params.name
    args = params.arguments or {}
    session = ctx.session
    rid = ctx.request_id
    for path in CALLS:
        with path.open("a") as log:
            log.write(json.dumps({"name": name, "arguments": args}) + "\n")
    if name == "echo":
        return result(text(str(args.get("message", ""))))
    if name == "test_slow_stream":
        await session.send_log_message("info", "started", related_request_id=rid)
        await asyncio.sleep(1.0)
        return result(text("finished"))
    if name == "test_simple_text":
        return result(text("This is a simple text response for testing."))
    if name == "test_image_content":
        return result(types.ImageContent(type="image", data=PNG, mime_type="image/png"))
    if name == "test_audio_content":
        return result(types.AudioContent(type="audio", data=WAV, mime_type="audio/wav"))
    if name == "test_embedded_resource":
        return result(types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content.")))
    if name == "test_multiple_content_types":
        return result(
            text("Multiple content types test:"),
            types.ImageContent(type="image", data=PNG, mime_type="image/png"),
            types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
                uri="test://mixed-content-resource", mime_type="application/json", text='{"test":"data","value":123}')),
        )
    if name == "test_tool_with_logging":
        for i, message in enumerate(("Tool execution started", "Tool processing data", "Tool execution completed")):
            if i:
                await asyncio.sleep(0.05)
            await session.send_log_message("info", message, related_request_id=rid)
        return result(text("Logging test completed"))
    if name == "test_tool_with_progress":
        meta = ctx.meta or {}
        token = meta.get("progress_token", meta.get("progressToken"))
        for i, value in enumerate((0, 50, 100)):
            if i:
                await asyncio.sleep(0.05)
            if token is not None:
                await session.send_progress_notification(token, value, 100, related_request_id=str(rid))
        return result(text("Progress test completed"))
    if name == "test_error_handling":
        return result(text("This tool intentionally returns an error for testing"), is_error=True)
    if name == "test_reconnection":
        await asyncio.sleep(0.05)
        if ctx.close_sse_stream is not None:
            await ctx.close_sse_stream()
        await asyncio.sleep(0.2)
        return result(text("Reconnection test completed"))
    if name == "test_sampling":
        sampled = await session.create_message(
            [types.SamplingMessage(role="user", content=text(str(args.get("prompt", ""))))],
            max_tokens=100, related_request_id=rid,
        )
        content = sampled.content
        answer = content.text if isinstance(content, types.TextContent) else str(content)
        return result(text(f"LLM response: {answer}"))
    if name == "test_elicitation":
        schema = {
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        }
        answer = await session.elicit_form(str(args.get("message", "")), schema, related_request_id=rid)
        return result(text(f"User response: action={answer.action}, content={answer.content}"))
    if name in ("test_elicitation_sep1034_defaults", "test_elicitation_sep1330_enums"):
        schema = SEP1034_SCHEMA if name.endswith("defaults") else SEP1330_SCHEMA
        answer = await session.elicit_form("Please review the form", schema, related_request_id=rid)
        return result(text(f"Elicitation completed: action={answer.action}, content={answer.content}"))
    if name == "json_schema_2020_12_tool":
        return result(text(f"received {sorted(args)}"))
    return result(text(f"unknown tool {name}"), is_error=True)


RESOURCES = [
    types.Resource(uri="test://static-text", name="static-text", description="Static text", mime_type="text/plain"),
    types.Resource(uri="test://static-binary", name="static-binary", description="Static binary", mime_type="image/png"),
    types.Resource(uri="test://watched-resource", name="watched-resource", description="Can be subscribed to",
                   mime_type="text/plain"),
]


async def list_resources(ctx: Any, params: Any) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=RESOURCES)


async def list_templates(ctx: Any, params: Any) -> types.ListResourceTemplatesResult:
    return types.ListResourceTemplatesResult(resource_templates=[types.ResourceTemplate(
        uri_template="test://template/{id}/data", name="template", description="Data by id", mime_type="application/json")])


async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    uri = str(params.uri)
    if uri == "test://static-text":
        contents: list[Any] = [types.TextResourceContents(
            uri=uri, mime_type="text/plain", text="This is the content of the static text resource.")]
    elif uri == "test://static-binary":
        contents = [types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG)]
    elif uri == "test://watched-resource":
        contents = [types.TextResourceContents(uri=uri, mime_type="text/plain", text="watched")]
    elif uri.startswith("test://template/") and uri.endswith("/data"):
        item = uri[len("test://template/"):-len("/data")]
        contents = [types.TextResourceContents(
            uri=uri, mime_type="application/json",
            text=f'{{"id":"{item}","templateTest":true,"data":"Data for ID: {item}"}}')]
    else:
        from mcp.shared.exceptions import MCPError

        raise MCPError(code=-32002, message=f"Resource not found: {uri}")
    return types.ReadResourceResult(contents=contents)


_subscriptions: dict[int, set[str]] = defaultdict(set)


async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
    _subscriptions[id(ctx.session)].add(str(params.uri))
    return types.EmptyResult()


async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    _subscriptions[id(ctx.session)].discard(str(params.uri))
    return types.EmptyResult()


PROMPTS = [
    types.Prompt(name="test_simple_prompt", description="A simple prompt"),
    types.Prompt(name="test_prompt_with_arguments", description="A prompt with arguments", arguments=[
        types.PromptArgument(name="arg1", description="First test argument", required=True),
        types.PromptArgument(name="arg2", description="Second test argument", required=True),
    ]),
    types.Prompt(name="test_prompt_with_embedded_resource", description="A prompt with a resource", arguments=[
        types.PromptArgument(name="resourceUri", description="URI of the resource to embed", required=True),
    ]),
    types.Prompt(name="test_prompt_with_image", description="A prompt with an image"),
]


async def list_prompts(ctx: Any, params: Any) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=PROMPTS)


async def get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    args = params.arguments or {}
    user = "user"
    if params.name == "test_simple_prompt":
        messages = [types.PromptMessage(role=user, content=text("This is a simple prompt for testing."))]
    elif params.name == "test_prompt_with_arguments":
        messages = [types.PromptMessage(role=user, content=text(
            f"Prompt with arguments: arg1='{args.get('arg1')}', arg2='{args.get('arg2')}'"))]
    elif params.name == "test_prompt_with_embedded_resource":
        messages = [
            types.PromptMessage(role=user, content=types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
                uri=args.get("resourceUri", "test://example"), mime_type="text/plain",
                text="Embedded resource content for testing."))),
            types.PromptMessage(role=user, content=text("Please process the embedded resource above.")),
        ]
    else:
        messages = [
            types.PromptMessage(role=user, content=types.ImageContent(type="image", data=PNG, mime_type="image/png")),
            types.PromptMessage(role=user, content=text("Please analyze the image above.")),
        ]
    return types.GetPromptResult(messages=messages)


async def complete(ctx: Any, params: types.CompleteRequestParams) -> types.CompleteResult:
    value = params.argument.value
    words = [w for w in ("paris", "park", "party") if w.startswith(value)]
    return types.CompleteResult(completion=types.Completion(values=words, total=len(words), has_more=False))


async def set_level(ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
    return types.EmptyResult()


def build_server() -> Server:
    # The suite still tests logging (deprecated by 2026-07-28); so does this server.
    warnings.filterwarnings("ignore", message=".*deprecated as of 2026-07-28.*")

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    return Server(
        "mcpfw-conformance-fixtures",
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
        on_set_logging_level=set_level,
    )


def legacy_app(server: Server, host: str) -> Starlette:
    """The 2024-11-05 HTTP+SSE transport: GET /sse plus POST /messages/?session_id=."""
    transport = SseServerTransport("/messages/")

    async def handle_sse(request: Request) -> Response:
        async with transport.connect_sse(request.scope, request.receive, request._send) as (reader, writer):
            await server.run(reader, writer, server.create_initialization_options())
        return Response()

    return Starlette(routes=[
        Route("/sse", endpoint=handle_sse, methods=["GET"]),
        Mount("/messages/", app=transport.handle_post_message),
    ])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--json-response", action="store_true")
    parser.add_argument("--stateless", action="store_true")
    parser.add_argument("--legacy-sse", action="store_true")
    parser.add_argument("--calls", type=Path, default=None)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), default=None, help="serve HTTPS")
    args = parser.parse_args()
    if args.calls is not None:
        CALLS.append(args.calls)
    server = build_server()
    if args.legacy_sse:
        app = legacy_app(server, args.host)
    else:
        app = server.streamable_http_app(
            json_response=args.json_response,
            stateless_http=args.stateless,
            event_store=None if args.stateless else MemoryEventStore(),
            retry_interval=500,
            host=args.host,
        )
    tls = {"ssl_certfile": args.tls[0], "ssl_keyfile": args.tls[1]} if args.tls else {}
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", **tls)


if __name__ == "__main__":
    main()
