"""HTTP exchanges mapped onto the one inspection pipeline, for every engine.

An engine (the lean asyncio listener or the mitmproxy addons) hands over each request;
this module decides what is MCP, which session it belongs to, asks the
:class:`~firewall.pipeline.Inspector` about every JSON-RPC message in either direction
(a JSON body, or each event of an SSE stream on its own), and says what to forward or what
to answer instead. It never does I/O itself, except handing replies meant for the server
to a :class:`ServerPoster`.
Event streams are judged block by block in :mod:`.sse_filter`; what a body is (media type,
charset, whether it may be JSON-RPC) is told by :mod:`.content`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote_plus

import orjson

from ... import errors
from ...identity import AuthError, Identity
from ...identity.authenticator import Authenticator
from ...jsonrpc import encode, error_response
from ...pipeline import C2S, S2C, Inspector, Outcome
from ...session import Session
from . import mcp_headers
from .oauth import rewrite_metadata, rewrite_www_authenticate
from .replies import HEADER_MISMATCH, Reply, accepted, error_reply, jsonrpc_reply, plain, wants_sse_only
from .routes import PRM_PATH, Route
from .content import declared_charset, is_json_media, is_sse, may_be_jsonrpc, may_be_jsonrpc_in
from .sessions import Channel, HttpSessions, id_key, legacy_keys, session_key
from .cors import CorsMirror
from .sse import format_event
from .sse_filter import SseFilter

SESSION_ID = "mcp-session-id"
_FORWARDED_CLIENT_HEADERS = ("authorization", "cookie", SESSION_ID, mcp_headers.VERSION)
_MAX_KNOWN_TOOLS = 50_000  # tools whose Mcp-Param-* declarations are remembered (per process)


class HeaderView(Protocol):
    """Read access to a request's or response's headers, case-insensitive."""

    def get(self, name: str) -> str | None: ...

    def getall(self, name: str) -> list[str]: ...

    def names(self) -> Iterable[str]: ...


class ServerPoster(Protocol):
    """Delivers a JSON-RPC message from the firewall to a server (fire and forget)."""

    def post(self, route: Route, path: str, headers: dict[str, str], body: bytes) -> None: ...


@dataclass(slots=True)
class Request:
    """What an engine knows about a client's request once its body has arrived."""

    method: str
    path: str  # path and query on the listener
    upstream_path: str  # path and query on the upstream
    host: str | None
    headers: HeaderView
    body: bytes
    scheme: str = "http"


@dataclass(slots=True, eq=False)
class Exchange:
    """One request/response pair on its way through the firewall."""

    route: Route
    kind: str  # "mcp" (a POST of JSON-RPC), "stream" (GET), "delete", "metadata", "other"
    session: Session | None = None
    channel: Channel | None = None
    body: bytes | None = None  # what goes upstream when it differs from what the client sent
    set_headers: dict[str, str | None] = field(default_factory=dict)  # None removes the header
    open_ids: list[Any] = field(default_factory=list)  # requests forwarded and not yet answered
    methods: dict[Any, str] = field(default_factory=dict)
    extra: bytes | None = None  # replies to add to the upstream's answer (a partly denied batch)
    new_session_id: str | None = None  # the server opened an MCP session with this response
    answer_charset: str | None = None  # a charset other than UTF-8 the answer's Content-Type declares
    sse_only: bool = False
    upstream_path: str = "/"
    public_origin: str = ""
    client_headers: dict[str, str] = field(default_factory=dict)
    first_method: str | None = None
    identity: dict[str, Any] | None = None  # the authenticated caller (policy input form)
    principal: tuple[str | None, str | None] | None = None
    origin: str | None = None  # the request's Origin field (a browser's request)


def _requests_in(body: Any) -> list[tuple[Any, str]]:
    """(id, method) of every request in a parsed frame."""
    items = body if isinstance(body, list) else [body]
    return [
        (item["id"], item["method"])
        for item in items
        if isinstance(item, dict) and "id" in item and isinstance(item.get("method"), str)
    ]


def _retry_after(outcome: Outcome) -> float | None:
    waits = [v.retry_after for v in outcome.verdicts if v.retry_after is not None]
    return max(waits) if waits else None


def _deny_code(outcome: Outcome) -> int | None:
    for verdict in outcome.verdicts:
        if verdict.decision.action == "deny":
            return verdict.error_code
    return None


class HttpInspection:
    """The HTTP side of the firewall, shared by all exchanges of one process."""

    def __init__(
        self,
        inspector: Inspector,
        sessions: HttpSessions,
        *,
        max_message_bytes: int,
        reverse: bool = True,
        public_url: str | None = None,
        non_mcp: str = "pass",
        poster: ServerPoster | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.inspector = inspector
        # The firewall is the OAuth resource server only in reverse mode, where clients know it.
        self.auth = authenticator if authenticator is not None and authenticator.active and reverse else None
        self.sessions = sessions
        self.max_message_bytes = max_message_bytes
        self.reverse = reverse
        self.public_url = public_url.rstrip("/") if public_url else None
        self.non_mcp = non_mcp
        self.poster = poster
        # (route name, tool) -> the tool's Mcp-Param-* declarations, from tools/list answers
        # (None: invalid declarations, not enforced).
        self.param_bindings: dict[tuple[str, str], tuple[mcp_headers.ParamBinding, ...] | None] = {}
        self.cors = CorsMirror()

    # -- requests --------------------------------------------------------------------

    def request(self, route: Route, req: Request) -> Exchange | Reply:
        """Classify and inspect a request: an exchange to forward, or the firewall's answer."""
        origin = req.headers.get("origin")
        result = self._request(route, req, origin)
        if origin is not None and isinstance(result, Reply):
            result.headers = {**result.headers, **self.cors.headers_for(route.name, origin)}
        return result

    def _request(self, route: Route, req: Request, origin: str | None) -> Exchange | Reply:
        method = req.method
        headers = req.headers
        ex = Exchange(route, "other", upstream_path=req.upstream_path, origin=origin)
        if self.reverse:
            ex.public_origin = self.public_url or f"{req.scheme}://{req.host or route.netloc}"
        encoding = (headers.get("content-encoding") or "").strip().lower()
        if req.body and encoding not in ("", "identity"):
            # A server that inflates it would run what the firewall cannot read as it is.
            return self.refuse(
                route, code=errors.INVALID_REQUEST, reason="encoded_request_body", status=415,
                message=f"request bodies must not be encoded (Content-Encoding {encoding!r}): the firewall inspects what it forwards",
                size=len(req.body),
            )
        if req.body and len(headers.getall("content-type")) > 1:
            # Servers differ on which one they read (Node keeps the first): the body's media
            # type and charset would be ambiguous.
            return self.refuse(
                route, code=errors.INVALID_REQUEST, reason="ambiguous_content_type", status=400,
                message="the request has more than one Content-Type field", size=len(req.body),
            )
        content_type = headers.get("content-type")
        charset = declared_charset(content_type)
        if req.body and charset is not None and may_be_jsonrpc_in(req.body, charset, content_type):
            # Servers that decode by the declared charset (the TypeScript SDK's legacy SSE
            # transport: iconv-lite, UTF-7 included) would read JSON-RPC the firewall cannot.
            return self.refuse(
                route, code=errors.INVALID_REQUEST, reason="unsupported_charset", status=415,
                message=f"JSON-RPC bodies must be UTF-8 (this one declares charset {charset!r}): "
                "the firewall inspects what it forwards",
                size=len(req.body),
            )
        if method == "POST" and self._is_jsonrpc_post(req, route):
            ex.kind = "mcp"
        elif method == "GET":
            path = req.upstream_path
            if path.startswith(PRM_PATH) and self.reverse:
                ex.kind = "metadata"
            elif self.reverse or _mcp_stream_request(req):
                ex.kind = "stream"  # decided by the response: only an event stream is inspected
        elif method == "DELETE" and headers.get(SESSION_ID):
            ex.kind = "delete"
        if method != "POST" and req.body and may_be_jsonrpc(req.body):
            # JSON-RPC travels in POST bodies only; one elsewhere would reach the server unjudged.
            return self.refuse(
                route, code=errors.INVALID_REQUEST, reason="jsonrpc_outside_post", status=400,
                message=f"a JSON-RPC body is accepted in a POST only (this was a {method} request)", size=len(req.body),
            )
        if self.only_mcp and not self._looks_mcp(ex, req):
            return self.refuse_non_mcp(route, f"{method} {req.host or route.netloc}{req.path}")
        if self.auth is not None:
            if ex.kind == "metadata":
                return self._own_metadata(ex)
            refused = self.admit(ex, headers, req.body)
            if refused is not None:
                return refused
        if ex.kind in ("other", "metadata"):
            return ex
        ex.client_headers = {
            name: value for name in _FORWARDED_CLIENT_HEADERS if (value := headers.get(name)) is not None
        }
        if self.auth is not None:
            ex.client_headers.pop("authorization", None)
            ex.client_headers.update(ex.route.upstream_headers(ex.identity["tenant"] if ex.identity else None))
        refused = self._attach_session(ex, req)
        if refused is not None:
            return refused
        if ex.kind != "mcp":
            return ex
        ex.set_headers["accept-encoding"] = "identity"  # bodies must be readable to be inspected
        ex.sse_only = wants_sse_only(headers.get("accept"))
        return self._inspect_request(ex, req)

    def _is_jsonrpc_post(self, req: Request, route: Route) -> bool:
        path = req.upstream_path.split("?", 1)[0]
        # Servers route leniently (Express ignores case and a trailing slash by default).
        if path == route.endpoint_path or path.lower().rstrip("/") == route.endpoint_path.lower().rstrip("/"):
            return True
        headers = req.headers
        if headers.get(SESSION_ID) or headers.get(mcp_headers.METHOD) or headers.get(mcp_headers.VERSION):
            return True
        # Elsewhere on the origin (a legacy message endpoint, a co-hosted OAuth server): a
        # body that is JSON-RPC is MCP whatever its path or Content-Type claim; a form or a
        # plain JSON document is not.
        return may_be_jsonrpc(req.body)

    def _looks_mcp(self, ex: Exchange, req: Request) -> bool:
        """Whether a request in a forward proxy may be MCP (``non_mcp: deny``). A GET for an
        event stream is decided again by its response (see :meth:`response_head`)."""
        if ex.kind == "mcp":
            return True
        if ex.kind == "delete":  # ends a session this firewall saw begin, nothing else
            return self.sessions.get(ex.route, session_key(req.headers.get(SESSION_ID) or "")) is not None
        if req.method == "GET" and "text/event-stream" in (req.headers.get("accept") or ""):
            # The request itself reaches the host before its answer can be judged: only a
            # stream of a session this firewall saw begin, or a legacy /sse stream, is sent.
            sid = req.headers.get(SESSION_ID)
            if sid:
                known = self.sessions.get(ex.route, session_key(sid)) is not None
            else:
                known = req.upstream_path.split("?", 1)[0].rstrip("/").endswith("/sse")
            if known:
                ex.kind = "stream"  # so that its answer is read, and refused unless it is an event stream
            return known
        return False

    @property
    def only_mcp(self) -> bool:
        """A forward proxy that lets nothing but MCP through (``proxy.non_mcp: deny``)."""
        return not self.reverse and self.non_mcp == "deny"

    def _attach_session(self, ex: Exchange, req: Request) -> Reply | None:
        route = ex.route
        headers = req.headers
        sid = headers.get(SESSION_ID)
        if sid:
            channel = self.sessions.get(route, session_key(sid))
            if channel is None and self.auth is not None:
                # Whose it is cannot be known (opened before a restart, or forgotten to make
                # room): handing it to whoever presents it first would let one caller into
                # another's session. 404 makes the client open a new one.
                return self._unknown_session(ex, req)
            if channel is None:
                # Started before this process saw it (a restart): learn it from here on.
                session = self.sessions.new_session(route, "http", headers.get(mcp_headers.VERSION))
                channel = Channel(session, route, route.endpoint_path, principal=ex.principal)
                self.sessions.add(session_key(sid), channel)
            elif self.auth is not None and channel.principal != ex.principal:
                return self._foreign_session(ex, req)
            channel.headers = ex.client_headers
            ex.channel, ex.session = channel, channel.session
            return None
        if ex.kind == "mcp" and "?" in req.upstream_path:
            query = req.upstream_path.partition("?")[2]
            names = [name for name, _ in parse_qsl(query, keep_blank_values=True)]
            if len(names) != len(set(names)):
                # Servers differ on which of two values they read: the session is ambiguous.
                return self.refuse(route, code=errors.INVALID_REQUEST, reason="ambiguous_query", status=400,
                                   message="a query parameter of the message endpoint is repeated")
            found = {id(c): c for key in legacy_keys(req.upstream_path) if (c := self.sessions.get(route, key)) is not None}
            if len(found) > 1:
                return self.refuse(route, code=errors.INVALID_REQUEST, reason="ambiguous_query", status=400,
                                   message="the query names more than one session")
            channel = next(iter(found.values()), None)
            path = req.upstream_path.partition("?")[0].lower().rstrip("/")
            if channel is None and self.auth is not None and path != route.endpoint_path.lower().rstrip("/"):
                # A message endpoint whose session this firewall does not know: servers read
                # their session ids leniently (upper case, dashes, braces all name one uuid),
                # so a spelling the firewall has not seen may still be someone else's session.
                return self._unknown_session(ex, req)
            if channel is not None:
                if self.auth is not None and channel.principal != ex.principal:
                    return self._foreign_session(ex, req)
                ex.channel, ex.session = channel, channel.session
                return None
        ex.session = self.sessions.new_session(route, "http", headers.get(mcp_headers.VERSION))
        return None

    # -- identity --------------------------------------------------------------------

    def admit(self, ex: Exchange, headers: Any, body: bytes = b"") -> Reply | None:
        """Authenticate the caller and check its tenant may use the route; None when admitted.

        ``headers`` needs only ``get(name)``. On success ``ex`` carries the identity, and the
        upstream gets the route's own credentials instead of the client's.
        """
        auth = self.auth
        assert auth is not None
        route = ex.route
        identity: Identity | None = None
        try:
            if _token_in_query(ex.upstream_path):
                # Refused rather than stripped: the client must learn that it sends its token
                # where proxies and servers log it, and the upstream must never receive it.
                raise AuthError(400, "invalid_request", "access_token in the URL query is not accepted: "
                                "send the token in the Authorization header")
            identity = auth.authenticate(
                headers.get("authorization"), headers.get(auth.credential_headers[1]), self.audiences(ex)
            )
            if route.tenants and identity is None:
                raise AuthError(401, None, "authentication required")
            if identity is not None and not route.admits(identity.tenant):
                raise AuthError(403, "insufficient_scope", f"tenant {identity.tenant!r} may not use server {route.name!r}")
        except AuthError as err:
            return self._auth_refusal(ex, err, body, identity)
        if identity is not None:
            ex.identity = identity.as_input()
            ex.principal = identity.principal
        for name in auth.credential_headers:
            ex.set_headers[name] = None
        ex.set_headers.update(route.upstream_headers(identity.tenant if identity else None))
        return None

    def audiences(self, ex: Exchange) -> list[str]:
        """The resource URL(s) a token for this route must name in ``aud``."""
        auth = self.auth
        assert auth is not None
        if auth.config.resource:
            return [auth.config.resource]
        route = ex.route
        return [f"{ex.public_origin}{route.prefix}{route.endpoint_path}"]

    def _metadata_url(self, ex: Exchange) -> str:
        route = ex.route
        return f"{ex.public_origin}{PRM_PATH}{route.prefix}{route.endpoint_path}"

    def _own_metadata(self, ex: Exchange) -> Reply:
        """RFC 9728 metadata for the route: the firewall is the protected resource."""
        assert self.auth is not None
        doc = self.auth.metadata(self.audiences(ex)[0])
        return Reply(200, orjson.dumps(doc), {"content-type": "application/json", "cache-control": "max-age=300"})

    def _auth_refusal(self, ex: Exchange, err: AuthError, body: bytes, identity: Identity | None = None) -> Reply:
        assert self.auth is not None
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        requests = _requests_in(parsed)
        msg_id, method = requests[0] if len(requests) == 1 else (None, None)
        session = self.sessions.new_session(ex.route, "http")
        reason = {400: "credential_in_query", 401: "unauthenticated", 403: "forbidden"}.get(err.status, "auth_unavailable")
        decision_id = self.inspector.record_transport_error(
            session, C2S, code=errors.AUTH_FAILED, reason_code=reason, message=err.description,
            kind="request" if msg_id is not None else None, method=method, msg_id=msg_id, size=len(body),
            identity=identity.as_input() if identity is not None else None,
        )
        data = {"decision_id": decision_id, "reasons": [{"code": reason, "message": err.description}]}
        reply = error_reply(msg_id, errors.AUTH_FAILED, f"mcpfw: {err.description}", data, status=err.status)
        if err.status in (400, 401, 403):
            reply.headers["www-authenticate"] = self.auth.challenge(err, self._metadata_url(ex))
        return reply

    def _unknown_session(self, ex: Exchange, req: Request) -> Reply:
        session = self.sessions.new_session(ex.route, "http")
        decision_id = self.inspector.record_transport_error(
            session, C2S, code=errors.SESSION_NOT_FOUND, reason_code="session_unknown",
            message="a session id this firewall does not know the owner of (opened before a restart, or forgotten)",
            size=len(req.body), identity=ex.identity,
        )
        return error_reply(None, errors.SESSION_NOT_FOUND, "mcpfw: no such session", {"decision_id": decision_id}, status=404)

    def _foreign_session(self, ex: Exchange, req: Request) -> Reply:
        """A session id used by someone other than its owner: as unknown as a made-up one."""
        session = self.sessions.new_session(ex.route, "http")
        message = "no such session"
        decision_id = self.inspector.record_transport_error(
            session, C2S, code=errors.SESSION_NOT_FOUND, reason_code="session_not_owned",
            message="a session id presented by a caller other than the one that opened the session",
            size=len(req.body), identity=ex.identity,
        )
        return error_reply(None, errors.SESSION_NOT_FOUND, f"mcpfw: {message}", {"decision_id": decision_id}, status=404)

    def _inspect_request(self, ex: Exchange, req: Request) -> Exchange | Reply:
        session = ex.session
        assert session is not None
        raw = req.body
        headers = req.headers
        routing: dict[str, str] = {}
        parsed: Any = None
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the pipeline refuses it with the right error
        # (Present counts, not truthy: an empty first header must not hide a second one.)
        if headers.get(mcp_headers.METHOD) is not None or headers.get(mcp_headers.NAME) is not None \
                or _has_param_header(headers):
            routing, problem = mcp_headers.collect(headers.getall, headers.names())
            problem = problem or mcp_headers.mismatch(routing, parsed) or self._param_mismatch(ex, routing, parsed)
            if problem:
                return self._transport_denial(ex, parsed, HEADER_MISMATCH, "header_mismatch", problem, len(raw))
        requests = _requests_in(parsed)
        for msg_id, method in requests:
            ex.methods[id_key(msg_id)] = method
        if requests:
            ex.first_method = requests[0][1]
        token = mcp_headers.current_http.set({"headers": routing}) if routing else None
        try:
            outcome = self.inspector.inspect(raw, C2S, session, ex.identity)
        finally:
            if token is not None:
                mcp_headers.current_http.reset(token)
        forward, reply = outcome.forward, outcome.reply
        if forward is not None and forward is not raw and routing:
            try:
                updates, complaint = mcp_headers.rederive(routing, parsed, orjson.loads(forward))
            except orjson.JSONDecodeError:
                updates, complaint = {}, None
            if complaint:
                return self._transport_denial(ex, parsed, HEADER_MISMATCH, "header_mismatch", complaint, len(raw))
            ex.set_headers.update(updates)
        channel = ex.channel
        if reply is not None and channel is not None and channel.legacy:
            stand_in = self._stand_in_pings(channel, forward, reply)
            if stand_in is not None:
                forward, reply = stand_in, None
        if forward is None:
            if reply is None:
                return accepted()
            answer = jsonrpc_reply(reply, _deny_code(outcome), sse=ex.sse_only)
            retry = _retry_after(outcome)
            if retry is not None and answer.status == 429:
                answer.headers["retry-after"] = str(max(1, int(retry + 0.999)))
            return answer
        if forward is not raw:
            ex.body = forward
            if parsed is not None:
                try:
                    requests = _requests_in(orjson.loads(forward))
                except orjson.JSONDecodeError:
                    requests = []
        ex.extra = reply
        ex.open_ids = [msg_id for msg_id, _ in requests]
        return ex

    def _param_mismatch(self, ex: Exchange, routing: dict[str, str], parsed: Any) -> str | None:
        params = parsed.get("params") if isinstance(parsed, dict) else None
        tool = params.get("name") if isinstance(params, dict) else None
        key = (ex.route.name, tool) if isinstance(tool, str) else None
        known = key is not None and key in self.param_bindings
        bindings = self.param_bindings.get(key) if known and key is not None else None
        return mcp_headers.param_mismatch(routing, parsed, bindings, known=known)

    def learn_tools(self, ex: Exchange, payload: bytes) -> None:
        """A ``tools/list`` answer on its way to the client: remember each tool's
        ``Mcp-Param-*`` declarations, to check the calls' headers against their arguments."""
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        bindings = self.param_bindings
        for item in body if isinstance(body, list) else [body]:
            result = item.get("result") if isinstance(item, dict) else None
            tools = result.get("tools") if isinstance(result, dict) else None
            if not isinstance(tools, list):
                continue
            if len(bindings) > _MAX_KNOWN_TOOLS:
                bindings.clear()
            for tool in tools:
                if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                    bindings[(ex.route.name, tool["name"])] = mcp_headers.param_bindings(tool.get("inputSchema"))

    def _stand_in_pings(self, channel: Channel, forward: bytes | None, reply: bytes) -> bytes | None:
        """Legacy SSE: answers travel on the event stream, so a denied request is replaced
        by a ping with its id, and the server's answer to that ping by the denial."""
        errors_ = orjson.loads(reply)
        items = errors_ if isinstance(errors_, list) else [errors_]
        pings: list[dict[str, Any]] = []
        for item in items:
            msg_id = item.get("id")
            if msg_id is None:
                continue
            channel.substitutes[id_key(msg_id)] = encode(item)
            pings.append({"jsonrpc": "2.0", "id": msg_id, "method": "ping"})
        if not pings:
            return None  # nothing to answer on the stream (say, unparseable input): answer the POST
        if forward is not None:
            kept = orjson.loads(forward)
            pings = (kept if isinstance(kept, list) else [kept]) + pings
        return encode(pings[0] if len(pings) == 1 else pings)

    def _transport_denial(self, ex: Exchange, parsed: Any, code: int, reason: str, message: str, size: int) -> Reply:
        session = ex.session
        assert session is not None
        requests = _requests_in(parsed)
        msg_id, method = requests[0] if len(requests) == 1 else (None, None)
        decision_id = self.inspector.record_transport_error(
            session, C2S, code=code, reason_code=reason, message=message,
            kind="request" if msg_id is not None else None, method=method, msg_id=msg_id, size=size,
        )
        data = {"decision_id": decision_id, "reasons": [{"code": reason, "message": message}]}
        return error_reply(msg_id, code, f"mcpfw: {message}", data, sse=ex.sse_only)

    # -- responses -------------------------------------------------------------------

    def response_head(self, ex: Exchange, status: int, headers: HeaderView) -> tuple[str, dict[str, str]]:
        """How to treat the response ("json", "sse", "metadata" or "pass") and header changes."""
        changes: dict[str, str] = {}
        route = ex.route
        if ex.origin is not None:
            self.cors.learn(route.name, ex.origin, headers)
        if ex.public_origin and status in (401, 403):
            challenge = headers.get("www-authenticate")
            if challenge and "resource_metadata" in challenge.lower():
                changes["www-authenticate"] = rewrite_www_authenticate(challenge, route, ex.public_origin)
        if ex.kind == "metadata":
            return ("metadata" if 200 <= status < 300 else "pass"), changes
        if ex.kind == "other":
            return "pass", changes
        if ex.kind == "delete":
            if 200 <= status < 300 or status == 404:
                self.sessions.drop(route, session_key(ex.client_headers.get(SESSION_ID, "")))
            return "pass", changes
        sid = headers.get(SESSION_ID)
        if sid and ex.channel is None and 200 <= status < 300 and ex.session is not None:
            channel = Channel(ex.session, route, ex.upstream_path if ex.kind == "mcp" else route.endpoint_path,
                              principal=ex.principal)
            channel.headers = {**ex.client_headers, SESSION_ID: sid}
            self.sessions.add(session_key(sid), channel)
            ex.channel = channel
            ex.new_session_id = sid
        elif status == 404 and ex.client_headers.get(SESSION_ID):
            self.sessions.drop(route, session_key(ex.client_headers[SESSION_ID]))
        content_type = headers.get("content-type")
        ex.answer_charset = declared_charset(content_type)
        if ex.kind == "stream" and self.only_mcp and not is_sse(content_type):
            return "not_mcp", changes  # a GET that asked for an event stream and got a page
        if is_sse(content_type):
            plan = "sse"
        elif ex.kind == "mcp" and (200 <= status < 300 or is_json_media(content_type) or "json" in (content_type or "").lower()):
            # Every successful answer to a JSON-RPC POST is read as JSON, whatever its
            # Content-Type claims (clients accept "application/json-seq" and the like as
            # JSON): one passed unread could carry anything. An empty one passes (json_body).
            plan = "json"
        else:
            return "pass", changes
        encoding = (headers.get("content-encoding") or "").strip().lower()
        if encoding not in ("", "identity"):
            return "encoded", changes  # asked for identity; an encoded body is not inspected, so refused
        return plan, changes

    def refuse_non_mcp(self, route: Route, what: str) -> Reply:
        """403 for traffic that is not MCP in a proxy that passes only MCP; audited."""
        self.inspector.record_transport_error(
            self.sessions.new_session(route, "http"), C2S, code=errors.POLICY_DENIED, reason_code="non_mcp_denied",
            message=f"not MCP traffic ({what[:200]}); proxy.non_mcp is deny",
        )
        return plain(403, "mcpfw: only MCP traffic may pass this proxy\n")

    def encoded_refusal(self, ex: Exchange, encoding: str | None) -> Reply:
        """The answer to a response body the server sent encoded (gzip, ...) although the
        firewall asked for none: it cannot be inspected as it is, so it is refused."""
        return self.upstream_failed(
            ex, f"the server sent its answer with Content-Encoding {encoding!r}; the firewall asks for "
            "identity and does not pass bodies it cannot read",
        )

    def json_body(self, ex: Exchange, status: int, body: bytes) -> tuple[int, bytes]:
        """Inspect a JSON response body; return the status and body to send on."""
        if status == 202 and ex.extra is not None and not body.strip():
            return 200, ex.extra
        if ex.answer_charset is not None and may_be_jsonrpc_in(body, ex.answer_charset, None):
            # A client that decodes by the declared charset (Python's requests does) would read
            # JSON-RPC that the firewall, reading UTF-8 as MCP's JSON is, cannot judge.
            return 502, self._errors_for_open(
                ex, errors.UPSTREAM_UNAVAILABLE,
                f"mcpfw: upstream {ex.route.name} answered in charset {ex.answer_charset!r}; MCP's JSON is UTF-8", None,
                reason="unsupported_charset")
        if not may_be_jsonrpc(body):
            # Nothing a client could take for JSON-RPC: an empty 202, the legacy transport's
            # "Accepted", an HTTP error page. Passed as it is.
            if status >= 400:
                self.unanswered(ex)
            return status, body
        session = ex.session
        assert session is not None
        outcome = self.inspector.inspect(body, S2C, session, ex.identity)
        forward = outcome.forward
        if forward is None:
            code = _deny_code(outcome) or errors.INVALID_REQUEST
            return 502, self._errors_for_open(ex, code, "mcpfw: the server's answer was refused", outcome)
        self.unanswered(ex)  # a JSON body holds every answer there will be (an id-less error answers none)
        self._learn(ex)
        if ex.first_method == "tools/list":
            self.learn_tools(ex, forward)
        if ex.extra is not None:
            forward = _merge(forward, ex.extra)
        return status, forward

    def metadata_body(self, ex: Exchange, body: bytes) -> bytes:
        return rewrite_metadata(body, ex.route, ex.public_origin) or body

    def sse(self, ex: Exchange) -> SseFilter:
        return SseFilter(self, ex)

    def _learn(self, ex: Exchange) -> None:
        if ex.first_method in ("initialize", "server/discover") and ex.session is not None:
            self.sessions.learn_server(ex.route, ex.session)

    # -- failures --------------------------------------------------------------------

    def refuse(self, route: Route, *, code: int, reason: str, message: str, status: int, size: int = 0) -> Reply:
        """A request the transport cannot take (too large, too slow): recorded and answered."""
        session = self.sessions.new_session(route, "http")
        if code == errors.MESSAGE_TOO_LARGE:
            reply = self.inspector.refuse_oversized(size, self.max_message_bytes, C2S, session).reply
            return Reply(status, reply or b"", {"content-type": "application/json"})
        decision_id = self.inspector.record_transport_error(
            session, C2S, code=code, reason_code=reason, message=message, size=size
        )
        return error_reply(None, code, f"mcpfw: {message}", {"decision_id": decision_id}, status=status)

    def _with_cors(self, ex: Exchange, reply: Reply) -> Reply:
        if ex.origin is not None:
            reply.headers = {**reply.headers, **self.cors.headers_for(ex.route.name, ex.origin)}
        return reply

    def upstream_failed(self, ex: Exchange, reason: str, *, status: int = 502) -> Reply:
        """The upstream could not be reached or broke off: JSON-RPC errors for the client."""
        return self._with_cors(ex, self._upstream_failed(ex, reason, status))

    def _upstream_failed(self, ex: Exchange, reason: str, status: int) -> Reply:
        session = ex.session or self.sessions.new_session(ex.route, "http")
        message = f"mcpfw: upstream {ex.route.name} unavailable: {reason}"
        if ex.kind != "mcp" or not ex.open_ids:
            decision_id = self.inspector.record_transport_error(
                session, C2S, code=errors.UPSTREAM_UNAVAILABLE, reason_code="upstream_unavailable", message=message
            )
            if ex.kind not in ("mcp", "stream"):
                return plain(status, message + "\n")
            return error_reply(None, errors.UPSTREAM_UNAVAILABLE, message, {"decision_id": decision_id}, status=status)
        body = self._errors_for_open(ex, errors.UPSTREAM_UNAVAILABLE, message, None)
        return Reply(status, body, {"content-type": "application/json"})

    def unanswered(self, ex: Exchange) -> None:
        """The exchange is over and the requests it forwarded that it did not answer will not
        be answered (an HTTP error page, an error without an id): the session forgets them, so
        a retry under the same id is not taken for a duplicate, and what they held is freed."""
        if ex.session is not None:
            for msg_id in ex.open_ids:
                self.inspector.abandon(ex.session, C2S, msg_id)
        ex.open_ids.clear()

    def oversized_answer(self, ex: Exchange) -> Reply:
        """A response body over the message size limit, not read whole: recorded, and answered
        with a -32053 error for each request it would have answered."""
        return self._with_cors(ex, self._oversized_answer(ex))

    def _oversized_answer(self, ex: Exchange) -> Reply:
        session = ex.session or self.sessions.new_session(ex.route, "http")
        limit = self.max_message_bytes
        outcome = self.inspector.refuse_oversized(limit + 1, limit, S2C, session)
        message = f"mcpfw: the server's answer exceeds the {limit}-byte message limit"
        if ex.kind == "mcp" and ex.open_ids and ex.session is not None:
            body = self._errors_for_open(ex, errors.MESSAGE_TOO_LARGE, message, outcome)
            return Reply(502, body, {"content-type": "application/json"})
        data = {"decision_id": outcome.verdicts[0].decision_id}
        return error_reply(None, errors.MESSAGE_TOO_LARGE, message, data, status=502)

    def stream_failed(self, ex: Exchange, reason: str) -> bytes:
        """The upstream broke off an event stream: error events for requests still unanswered."""
        if not ex.open_ids:
            return b""
        message = f"mcpfw: upstream {ex.route.name} unavailable: {reason}"
        body = self._errors_for_open(ex, errors.UPSTREAM_UNAVAILABLE, message, None)
        items = orjson.loads(body)
        return b"".join(format_event(encode(item)) for item in (items if isinstance(items, list) else [items]))

    def _errors_for_open(
        self, ex: Exchange, code: int, message: str, outcome: Outcome | None, reason: str = "upstream_unavailable"
    ) -> bytes:
        session = ex.session
        assert session is not None
        replies = []
        for msg_id in ex.open_ids or [None]:
            method = ex.methods.get(id_key(msg_id)) if msg_id is not None else None
            if outcome is not None and outcome.verdicts:
                decision_id = outcome.verdicts[0].decision_id
            else:
                decision_id = self.inspector.record_transport_error(
                    session, C2S, code=code, reason_code=reason, message=message,
                    kind="request" if msg_id is not None else None, method=method, msg_id=msg_id,
                )
            if msg_id is not None:
                self.inspector.abandon(session, C2S, msg_id)  # frees what it held (rate limits)
            replies.append(error_response(msg_id, code, message, {"decision_id": decision_id, "firewall": "mcpfw"}))
        ex.open_ids.clear()
        return encode(replies[0] if len(replies) == 1 else replies)


_QUERY_SEPARATORS = re.compile(r"[&;]")


def _token_in_query(path: str) -> bool:
    """Whether the query names ``access_token`` (RFC 6750 2.3), in any case or encoding and
    with ``;`` as a separator too: servers differ in how they read a query."""
    query = path.partition("?")[2]
    return bool(query) and any(
        unquote_plus(part.partition("=")[0]).strip().lower() == "access_token" for part in _QUERY_SEPARATORS.split(query)
    )


def _mcp_stream_request(req: Request) -> bool:
    """Forward mode: a GET is an MCP stream when it says so (other sites' event streams pass)."""
    headers = req.headers
    if headers.get(SESSION_ID) or headers.get(mcp_headers.VERSION):
        return True
    return req.upstream_path.split("?", 1)[0].rstrip("/").endswith("/sse")


def _has_param_header(headers: HeaderView) -> bool:
    has_prefix = getattr(headers, "has_prefix", None)  # the lean listener's headers: no decoding
    if has_prefix is not None:
        return bool(has_prefix(mcp_headers.PARAM_PREFIX))
    return any(name.lower().startswith(mcp_headers.PARAM_PREFIX) for name in headers.names())


def _merge(forward: bytes, extra: bytes) -> bytes:
    first = orjson.loads(forward)
    second = orjson.loads(extra)
    items = (first if isinstance(first, list) else [first]) + (second if isinstance(second, list) else [second])
    return encode(items)
