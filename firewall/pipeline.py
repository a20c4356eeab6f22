"""The one inspection pipeline every transport calls: frame in, outcome out.

parse (strict JSON-RPC) -> policy input -> Rego decision -> act (forward, redact,
answer with an error, drop) -> audit record. Transports only move bytes; everything
that decides lives here.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from detectors.jsonwalk import string_leaves as _string_leaves

from . import errors
from .jsonrpc import Frame, Invalid, Kind, Message, encode, error_response, parse_frame, recover_id
from .canonical import extract_resources
from .config import LimitsConfig
from .policy.decision import Decision, apply_redactions, apply_removals, deny_decision, normalize_decision
from .policy.engine import PolicyEngine, engine_cache_plan
from .session import C2S, OTHER_DIRECTION, S2C, PendingRequest, Session
from .tasks import TaskTracker

if TYPE_CHECKING:
    from .approvals import ApprovalGate

_OTHER = OTHER_DIRECTION
_PASSTHROUGH = BaseException  # pyo3 panics derive from BaseException, so catch wide


class AuditSink(Protocol):
    """Where decisions go; implemented by :class:`firewall.audit.AuditLog`."""

    @property
    def accepting(self) -> bool: ...

    def record(self, row: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class MessageContext:
    """One message on its way through the pipeline, as enrichers see it.

    Enrichers (detectors, identity, rate limits, the tool registry) read the message and
    fill ``findings`` (keyed by their name), ``identity``, ``rate`` or ``registry``, which
    become the same-named fields of the policy input.
    """

    message: Message
    direction: str
    session: Session
    method: str | None
    params: Any
    tool: dict[str, Any] | None
    pending: PendingRequest | None
    size: int = 0  # bytes of the message on the wire (an element of a batch: its own encoding)
    findings: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] | None = None
    rate: dict[str, Any] | None = None
    registry: dict[str, Any] | None = None
    walks: dict[tuple[int, str, int], list[tuple[str, str]]] | None = None  # see string_leaves()
    input_json: str | None = None  # the policy input as evaluated (audit.record_inputs)

    def string_leaves(self, value: Any, pointer: str, min_len: int = 0) -> list[tuple[str, str]]:
        """``(pointer, string)`` of every string of ``value`` (a part of this message) at
        least ``min_len`` long: :func:`detectors.jsonwalk.string_leaves`, walked once per
        message for all the enrichers that ask. The list is shared: do not modify it."""
        key = (id(value), pointer, min_len)
        walks = self.walks
        if walks is None:
            walks = self.walks = {}
        else:
            found = walks.get(key)
            if found is not None:
                return found
        leaves = walks[key] = _string_leaves(value, pointer, min_len=min_len)
        return leaves


class Enricher(Protocol):
    """Adds evidence to the policy input before the decision, and may learn from the outcome."""

    name: str

    def enrich(self, ctx: MessageContext) -> None: ...

    def after(self, ctx: MessageContext, decision: Decision, forwarded: dict[str, Any] | None) -> None: ...


def learns_nothing(self: Any, ctx: MessageContext, decision: Decision, forwarded: dict[str, Any] | None) -> None:
    """The ``after`` of an enricher that learns nothing from the outcome (``after =
    learns_nothing`` in its class): the pipeline does not call it."""
    return None


@dataclass(slots=True)
class Verdict:
    """The decision on one element of a frame and what it turned into."""

    decision: Decision
    decision_id: str
    kind: str | None
    method: str | None
    error_code: int | None = None
    retry_after: float | None = None  # seconds, for a request denied by a rate limit


@dataclass(slots=True)
class Outcome:
    """What a transport does with a frame.

    ``forward`` goes on toward the frame's destination (the original bytes when nothing
    was changed), ``reply`` goes back to the sender (errors for denied requests).
    """

    forward: bytes | None
    reply: bytes | None
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def denied(self) -> bool:
        return any(v.decision.action == "deny" for v in self.verdicts)


def new_decision_id() -> str:
    """Time-ordered unique id (48-bit milliseconds + 80 random bits), as hex."""
    return f"{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


class Inspector:
    """Judges every message of a conversation against the policy and records the decision."""

    def __init__(
        self,
        engine: PolicyEngine,
        audit: AuditSink,
        *,
        bundle_digest: str,
        limits: LimitsConfig,
        enrichers: tuple[Enricher, ...] = (),
        approvals: ApprovalGate | None = None,
        record_inputs: bool = False,
    ) -> None:
        self._enrichers = enrichers
        self._learners = tuple(e for e in enrichers if getattr(type(e), "after", None) is not learns_nothing)
        self._record_inputs = record_inputs
        self._approvals = approvals
        self._engine = engine
        self._audit = audit
        self._bundle_digest = bundle_digest
        self._limits = limits
        self._local = threading.local()
        self._tasks = TaskTracker()
        # Decisions of a bundle that depends on nothing but its input are remembered by
        # input (polls, listings and retries repeat themselves); fields no rule reads (the
        # JSON-RPC id, the session, client info for the default bundle) are left out of the
        # key, or every request of a fresh HTTP session would miss.
        plan = engine_cache_plan(engine)
        self._cache: OrderedDict[str, Decision] | None = OrderedDict() if plan.cacheable else None
        self._cache_lock = threading.Lock()
        self._cache_reads = plan.reads

    def with_enrichers(self, *extra: Enricher) -> Inspector:
        """Another inspector on the same engine, audit log, approvals and settings, with
        ``extra`` enrichers after this one's (a transport's own findings)."""
        return Inspector(
            self._engine, self._audit, bundle_digest=self._bundle_digest, limits=self._limits,
            enrichers=(*self._enrichers, *extra), approvals=self._approvals, record_inputs=self._record_inputs,
        )

    def share_tasks(self, directory: Path) -> None:
        """Share MCP task records with the other processes that use ``directory``."""
        self._tasks.share(directory)

    def prepare(self) -> None:
        """Make the calling thread ready to inspect: its own policy engine is built now rather
        than on its first message (for regorus, a compile of the whole bundle). A transport
        calls this on each thread that will inspect, before the first frame arrives. An
        engine that cannot be built is left for the first message, which then fails closed
        with the error in its audit record."""
        try:
            self._thread_engine().prepare()
        except (KeyboardInterrupt, SystemExit):
            raise
        except _PASSTHROUGH:
            pass

    def _thread_engine(self) -> PolicyEngine:
        engine = getattr(self._local, "engine", None)
        if engine is None:
            engine = self._local.engine = self._engine.fork()
        return engine

    # -- entry point -----------------------------------------------------------------

    def inspect(self, raw: bytes, direction: str, session: Session, identity: dict[str, Any] | None = None) -> Outcome:
        """Judge one frame travelling in ``direction`` and say what to send where.

        ``identity`` is the caller behind this frame (policy input form) when the transport
        authenticated it; otherwise the session's own identity, if any, applies.
        """
        if identity is None:
            identity = session.identity
        limits = self._limits
        frame = parse_frame(
            raw, max_bytes=limits.max_message_bytes, max_depth=limits.max_depth, max_batch=limits.max_batch_size
        )
        if not frame.batch:
            item = frame.items[0]
            if isinstance(item, Message):
                forward, reply, verdict = self._judge(item, direction, session, len(raw), identity)
                if forward is _UNCHANGED:
                    forward = raw
                return Outcome(forward, reply, [verdict])
            forward, reply, verdict = self._refuse(item, direction, session, len(raw), raw)
            return Outcome(forward, reply, [verdict])
        return self._inspect_batch(frame, raw, direction, session, identity)

    def refuse_oversized(self, size: int, limit: int, direction: str, session: Session, ends: bytes = b"") -> Outcome:
        """Record and answer a frame that a transport cut off for exceeding the size limit.

        ``ends`` are the bytes the transport kept of its start and end, where serialisers put
        the id: a client's request is answered for its id, and a server's answer to a request
        the client is waiting on becomes an error for it (``forward``)."""
        msg_id = recover_id(ends) if ends else None
        item = Invalid(errors.MESSAGE_TOO_LARGE, f"message of at least {size} bytes exceeds the {limit}-byte limit", msg_id)
        forward, reply, verdict = self._refuse(item, direction, session, size)
        if direction == S2C:
            reply = None  # what a server sends too large is its own problem: not answered
        return Outcome(forward, reply, [verdict])

    def record_transport_error(
        self, session: Session, direction: str, *, code: int, reason_code: str, message: str,
        kind: str | None = None, method: str | None = None, msg_id: Any = None, size: int = 0,
        identity: dict[str, Any] | None = None,
    ) -> str:
        """Record a message the transport refused or could not deliver (say, the upstream is
        unreachable, or HTTP headers contradict the body); returns the decision id for its reply."""
        decision = deny_decision(reason_code, message)
        decision_id = new_decision_id()
        self._record(
            session, direction, decision, decision_id,
            kind=kind, method=method, tool=None, msg_id=msg_id, arguments=None,
            digest_of=None, size=size, eval_ms=0.0, error_code=code, error=message,
            identity=identity if identity is not None else session.identity,
        )
        return decision_id

    def _inspect_batch(
        self, frame: Frame, raw: bytes, direction: str, session: Session, identity: dict[str, Any] | None
    ) -> Outcome:
        forwards: list[Any] = []
        replies: list[Any] = []
        verdicts: list[Verdict] = []
        unchanged = True
        for item in frame.items:
            if isinstance(item, Message):
                forward, reply, verdict = self._judge(item, direction, session, len(encode(item.body)), identity)
                if forward is _UNCHANGED:
                    forwards.append(item.body)
                else:
                    unchanged = False
                    if forward is not None:
                        forwards.append(orjson.loads(forward))
            else:
                unchanged = False
                forward, reply, verdict = self._refuse(item, direction, session, 0)
                if forward is not None:
                    forwards.append(orjson.loads(forward))
            if reply is not None:
                replies.append(orjson.loads(reply))
            verdicts.append(verdict)
        forward_bytes = raw if unchanged else (encode(forwards) if forwards else None)
        return Outcome(forward_bytes, encode(replies) if replies else None, verdicts)

    # -- one message -----------------------------------------------------------------

    def _hide_foreign_tasks(
        self, decision: Decision, body: dict[str, Any], direction: str, session: Session,
        identity: dict[str, Any] | None,
    ) -> Decision:
        """A tasks/list answer without the tasks other callers created."""
        foreign = self._tasks.foreign_entries(body.get("result"), direction, session, identity)
        if not foreign:
            return decision
        return dataclasses.replace(
            decision, remove=[*decision.remove, *foreign], tags=[*decision.tags, "task_of_another_caller_hidden"])

    def _refuse(
        self, item: Invalid, direction: str, session: Session, size: int, raw: bytes | None = None
    ) -> tuple[bytes | None, bytes | None, Verdict]:
        """A message that is not valid JSON-RPC: never forwarded as it is; answered when it
        could be a request. ``(forward, reply, verdict)``: when the server's broken message
        names a request the client is waiting on, the client gets an error for it instead
        (or it would wait forever)."""
        decision = deny_decision("invalid_message", item.reason)
        decision_id = new_decision_id()
        body = item.body if isinstance(item.body, dict) else None
        method = body.get("method") if body and isinstance(body.get("method"), str) else None
        data = {"decision_id": decision_id, "firewall": "mcpfw"}
        forward = reply = None
        msg_id = item.id
        if direction == S2C and (body is None or "result" in body or "error" in body):
            if msg_id is None and raw is not None:
                msg_id = recover_id(raw)
            pending = session.pop_pending(C2S, msg_id) if msg_id is not None else None
            if pending is not None:
                method = pending.method
                forward = encode(error_response(msg_id, item.code, f"mcpfw: the server's answer was refused: {item.reason}", data))
        self._record(
            session, direction, decision, decision_id,
            kind=None, method=method, tool=None, msg_id=msg_id, arguments=None,
            digest_of=None, size=size, eval_ms=0.0, error_code=item.code, error=item.reason,
        )
        # Answer whoever sent it, unless it was itself a response (answering those loops).
        if forward is None and (body is None or "result" not in body and "error" not in body):
            reply_id = item.id
            if reply_id is None and body is None and raw is not None and raw.lstrip()[:1] == b"{" \
                    and item.code != errors.PARSE_ERROR:
                # Well-formed JSON refused unread (too deep, duplicate keys): the sender still
                # waits on its id. (A parse error is answered with id null, as JSON-RPC demands.)
                reply_id = recover_id(raw)
            reply = encode(error_response(reply_id, item.code, item.reason, data))
        return forward, reply, Verdict(decision, decision_id, None, method, item.code)

    def _judge(
        self, msg: Message, direction: str, session: Session, size: int, identity: dict[str, Any] | None
    ) -> tuple[Any, bytes | None, Verdict]:
        body = msg.body
        kind = msg.kind
        pending: PendingRequest | None = None
        if kind is Kind.REQUEST or kind is Kind.NOTIFICATION:
            method = body["method"]
            session.observe_request(direction, msg)
            params = body.get("params")
            tool = _tool_of(method, params)
        else:
            pending = session.pop_pending(_OTHER[direction], body.get("id"))
            method = pending.method if pending else None
            params = None
            tool = pending.tool if pending else None
            session.observe_response(pending, msg)
            if pending is not None and kind is Kind.RESPONSE:
                self._tasks.note(pending, body, direction, session, identity)

        decision_id = new_decision_id()
        ctx = MessageContext(msg, direction, session, method, params, tool, pending, size, identity=identity)
        started = time.perf_counter()
        approval_id: str | None = None
        if not self._audit.accepting:
            decision = deny_decision("audit_unavailable", "the audit log cannot record decisions; failing closed")
            error_code = errors.AUDIT_UNAVAILABLE
        elif pending is None and direction == S2C and kind is not Kind.REQUEST and kind is not Kind.NOTIFICATION \
                and body.get("id") is not None:
            # An answer to nothing the client asked (through this firewall): the checks that
            # depend on the request (tool results, listings) cannot apply, so it is not passed.
            decision = _UNSOLICITED
            error_code = errors.INVALID_REQUEST
        elif kind is Kind.REQUEST and session.has_pending(direction, body["id"]):
            # JSON-RPC ids must be unique among a sender's open requests: a second one would
            # take the first one's place in the tables (its answer, its rate-limit slot).
            decision = _DUPLICATE_ID
            error_code = errors.INVALID_REQUEST
        elif kind is Kind.REQUEST and (why := self._tasks.refusal(method, params, direction, session, identity)):
            decision = _FOREIGN_TASK if why == "another" else _UNKNOWN_TASK
            error_code = errors.POLICY_DENIED
        else:
            decision = self._decide(ctx)
            if decision.approvals and decision.allow:
                decision, approval_id = self._settle_approval(ctx, decision)
            if method == "tasks/list" and kind is Kind.RESPONSE and decision.allow:
                decision = self._hide_foreign_tasks(decision, body, direction, session, identity)
            error_code = errors.POLICY_ERROR if decision.error else (None if decision.allow else _denial_code(decision))
        eval_ms = (time.perf_counter() - started) * 1000.0

        forward: Any = _UNCHANGED
        forwarded: dict[str, Any] | None = body
        retry_after: float | None = None
        reply: bytes | None = None
        action = decision.action
        if action == "redact":
            try:
                forwarded = body
                if decision.redact:
                    forwarded, problems = apply_redactions(forwarded, decision.redact)
                    if problems:  # what the policy meant to hide may sit elsewhere: pass nothing
                        raise ValueError("; ".join(problems))
                if decision.remove:
                    forwarded, _gone = apply_removals(forwarded, decision.remove)  # already absent: nothing to hide
                forward = encode(forwarded)
            except Exception as exc:  # an unusable redaction must not leak the original
                decision = deny_decision("policy_error", f"redaction failed: {exc}", error=str(exc))
                error_code = errors.POLICY_ERROR
                action = "deny"
        if decision is _UNSOLICITED:
            forward, forwarded = None, None  # dropped: no one waits for it (audited below)
        elif action == "deny":
            forwarded = None
            retry_after = _retry_after(ctx) if error_code == errors.RATE_LIMITED else None
            extra = {"approval_id": approval_id} if error_code == errors.APPROVAL_REQUIRED and approval_id else None
            forward, reply = self._denial(msg, decision, decision_id, error_code, retry_after, extra)
        else:
            error_code = None
            if kind is Kind.REQUEST:
                session.add_pending(direction, body["id"], self._tasks.pending_for(method, params, tool, direction, session, identity))

        for enricher in self._learners:
            enricher.after(ctx, decision, forwarded)
        arguments = tool.get("arguments") if tool else params
        self._record(
            session, direction, decision, decision_id,
            kind=kind._value_, method=method, tool=(tool or {}).get("name"), msg_id=body.get("id"),
            arguments=arguments if kind in (Kind.REQUEST, Kind.NOTIFICATION) else None,
            digest_of=body.get("result", body.get("error")) if kind in (Kind.RESPONSE, Kind.ERROR_RESPONSE) else arguments,
            size=size, eval_ms=eval_ms, error_code=error_code, error=decision.error,
            findings=ctx.findings or None, identity=ctx.identity, rate=ctx.rate,
            upstream_ms=(time.monotonic() - pending.sent_at) * 1000.0 if pending is not None else None,
            policy_input=ctx.input_json if self._record_inputs else None,
        )
        return forward, reply, Verdict(decision, decision_id, kind._value_, method, error_code, retry_after)

    def _settle_approval(self, ctx: MessageContext, decision: Decision) -> tuple[Decision, str | None]:
        """A decision that asks for a person's approval: held (denied, a request filed) or granted."""
        why = "; ".join(decision.approvals)
        gate = self._approvals
        if gate is None:
            return deny_decision("approval_required", f"{why} (no approval store is configured)"), None
        tool = ctx.tool
        arguments = tool.get("arguments") if tool else ctx.params
        if tool is not None and isinstance(ctx.params, dict):
            # What else the call carries is part of what the reviewer approves (a grant must
            # not cover a retry with fields nobody saw); _meta is left out: progress tokens
            # differ on every retry.
            other = {k: v for k, v in ctx.params.items() if k not in ("name", "arguments", "_meta")}
            if other:
                arguments = {"arguments": arguments, "other_params": other}
        settled = gate.settle(
            decision,
            is_request=ctx.message.kind is Kind.REQUEST and ctx.direction == C2S,
            server=ctx.session.server.name, method=ctx.method, tool=(tool or {}).get("name"),
            arguments=arguments, identity=ctx.identity, session_id=ctx.session.id,
        )
        return settled if settled is not None else (decision, None)

    def end_session(self, session: Session) -> None:
        """The session is over (its client left, its server exited): enrichers give back what
        its unanswered requests still hold (rate limits' concurrent slots, kept in Redis)."""
        for enricher in self._enrichers:
            ended = getattr(enricher, "session_ended", None)
            if ended is not None:
                ended(session.id)

    def abandon(self, session: Session, direction: str, msg_id: Any) -> None:
        """A forwarded request that will never be answered (its upstream failed): forget it,
        and let enrichers give back what it held (a rate limit's concurrent slot)."""
        session.forget_pending(direction, msg_id)
        for enricher in self._enrichers:
            abandoned = getattr(enricher, "abandoned", None)
            if abandoned is not None:
                abandoned(session.id, msg_id)

    def _denial(
        self, msg: Message, decision: Decision, decision_id: str, code: int, retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[bytes | None, bytes | None]:
        """What replaces a denied message: (forward, reply)."""
        reasons = decision.reasons
        text = "; ".join(r["message"] for r in reasons) or "denied by policy"
        data: dict[str, Any] = {"decision_id": decision_id, "reasons": reasons, "firewall": "mcpfw"}
        if retry_after is not None:
            data["retry_after_seconds"] = retry_after
        if extra:
            data.update(extra)
        kind = msg.kind
        msg_id = msg.body.get("id")
        if kind is Kind.REQUEST:
            return None, encode(error_response(msg_id, code, f"mcpfw: {text}", data))
        if kind is Kind.NOTIFICATION:
            return None, None
        # A denied response: the requester still gets an answer for its id, as an error.
        return encode(error_response(msg_id, code, f"mcpfw: {text}", data)), None

    def _decide(self, ctx: MessageContext) -> Decision:
        cache = self._cache
        key: str | None = None
        try:
            for enricher in self._enrichers:
                enricher.enrich(ctx)
            policy_input = build_input(ctx)
            reads = self._cache_reads
            if cache is None:
                input_json = orjson.dumps(policy_input).decode("utf-8")
            elif reads is None:
                input_json = key = orjson.dumps(policy_input).decode("utf-8")
            else:
                unread = {field: policy_input.pop(field) for field in [f for f in policy_input if f not in reads]}
                key = orjson.dumps(policy_input).decode("utf-8")
                if not unread:
                    input_json = key
                elif len(key) == 2:  # "{}"
                    input_json = orjson.dumps(unread).decode("utf-8")
                else:  # the same document, its unread fields last
                    input_json = f'{key[:-1]},{orjson.dumps(unread).decode("utf-8")[1:]}'
        except Exception as exc:
            return deny_decision("policy_error", f"cannot build the policy input: {exc}", error=str(exc))
        ctx.input_json = input_json
        if key is not None and len(key) > _CACHE_MAX_KEY:
            key = None
        if key is not None:
            assert cache is not None
            hit = cache.get(key)
            if hit is not None:
                return hit  # shared: decisions are never modified once made
        try:
            raw = self._thread_engine().evaluate(input_json)
        except (KeyboardInterrupt, SystemExit):
            raise
        except _PASSTHROUGH as exc:
            return deny_decision("policy_error", "policy evaluation failed; failing closed", error=f"{type(exc).__name__}: {exc}")
        decision = normalize_decision(raw)
        if key is not None and decision.error is None:
            assert cache is not None
            with self._cache_lock:
                cache[key] = decision
                if len(cache) > _CACHE_ENTRIES:
                    cache.popitem(last=False)  # (a dict's next(iter()) slows as deleted slots pile up)
        return decision

    def _record(
        self, session: Session, direction: str, decision: Decision, decision_id: str, *,
        kind: str | None, method: str | None, tool: str | None, msg_id: Any, arguments: Any,
        digest_of: Any, size: int, eval_ms: float, error_code: int | None, error: str | None,
        findings: dict[str, Any] | None = None, identity: dict[str, Any] | None = None,
        rate: dict[str, Any] | None = None, upstream_ms: float | None = None, policy_input: str | None = None,
    ) -> None:
        identity = identity or {}
        self._audit.record(
            {
                "ts": time.time(),
                "decision_id": decision_id,
                "direction": direction,
                "kind": kind,
                "method": method,
                "tool": tool,
                "server": session.server.name,
                "session_id": session.id,
                "transport": session.transport,
                "protocol_era": session.era,
                "protocol_version": session.protocol_version,
                "client_name": session.client_name,
                "message_id": None if msg_id is None else orjson.dumps(msg_id).decode(),
                "arguments": arguments,
                "digest_of": digest_of,
                "decision": decision.action,
                "reasons": decision.reasons,
                "reason_codes": [r["code"] for r in decision.reasons],
                "error_code": error_code,
                "engine": self._engine.name,
                "bundle_digest": self._bundle_digest,
                "eval_ms": eval_ms,
                "bytes": size,
                "findings": findings,
                "tags": decision.tags,
                "error": error,
                "tenant": identity.get("tenant"),
                "subject": identity.get("subject"),
                "key_id": identity.get("key_id"),
                "auth_method": identity.get("auth_method"),
                "rate": rate,
                "upstream_ms": upstream_ms,
                "policy_input": policy_input,
            }
        )


_UNCHANGED: Any = object()
_UNSOLICITED = deny_decision(
    "unsolicited_response", "the server answered an id the client has no request open for; dropped"
)
_FOREIGN_TASK = deny_decision(
    "task_of_another_caller", "the task was created by another caller; only its creator may read or cancel it"
)
_DUPLICATE_ID = deny_decision(
    "duplicate_request_id", "a request with this id is still open in this session; ids must be unique among open requests"
)
_UNKNOWN_TASK = deny_decision(
    "task_unknown", "the firewall did not see this task created (before a restart, or elsewhere), so it cannot "
    "check that the caller created it; start the task again"
)
_RATE_REASONS = frozenset({"rate_limited", "quota_exceeded"})
_CACHE_ENTRIES = 1024  # remembered decisions (oldest forgotten first)
_CACHE_MAX_KEY = 8 * 1024  # inputs longer than this (characters of JSON) are not remembered


def _denial_code(decision: Decision) -> int:
    """RATE_LIMITED when a limit is among the reasons (HTTP maps it to 429), APPROVAL_REQUIRED for
    a call held for approval, else POLICY_DENIED."""
    for reason in decision.reasons:
        code = reason.get("code")
        if code in _RATE_REASONS:
            return errors.RATE_LIMITED
        if code == "approval_required" and len(decision.reasons) == 1:
            return errors.APPROVAL_REQUIRED
    return errors.POLICY_DENIED


def _retry_after(ctx: MessageContext) -> float | None:
    rate = ctx.rate
    value = rate.get("retry_after_seconds") if isinstance(rate, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
_NO_RESOURCES: dict[str, list[Any]] = {"paths": [], "urls": []}


def _tool_of(method: str, params: Any) -> dict[str, Any] | None:
    if method != "tools/call" or not isinstance(params, dict):
        return None
    name = params.get("name")
    arguments = params.get("arguments")
    return {"name": name if isinstance(name, str) else None, "arguments": arguments if arguments is not None else {}}


def _request_doc(pending: PendingRequest) -> dict[str, Any]:
    doc: dict[str, Any] = {"method": pending.method, "params": pending.params}
    if pending.task is not None:
        doc["task"] = {"id": pending.task, "via": "tasks/result"}
    return doc


def build_input(ctx: MessageContext) -> dict[str, Any]:
    """The policy input document (schema: firewall/schemas/policy-input.v1.json)."""
    msg, direction, session = ctx.message, ctx.direction, ctx.session
    method, params, tool, pending = ctx.method, ctx.params, ctx.tool, ctx.pending
    body = msg.body
    kind = msg.kind
    if kind is Kind.RESPONSE or kind is Kind.ERROR_RESPONSE:
        resources = _NO_RESOURCES
    elif tool is not None:
        resources = extract_resources(
            tool["arguments"], base_pointer="/params/arguments", cwd=session.cwd,
            resolve_symlinks=session.resolve_symlinks, bases=session.path_bases,
        )
    elif isinstance(params, dict):
        resources = extract_resources(
            params, base_pointer="/params", cwd=session.cwd, resolve_symlinks=session.resolve_symlinks,
            bases=session.path_bases,
        )
    else:
        resources = _NO_RESOURCES
    server = session.server
    doc: dict[str, Any] = {
        "version": 1,
        "direction": direction,
        "kind": kind._value_,  # (the plain str: Enum.value is a Python-level descriptor)
        "method": method,
        "params": params,
        "tool": tool,
        "result": body.get("result") if kind is Kind.RESPONSE else None,
        "error": body.get("error") if kind is Kind.ERROR_RESPONSE else None,
        "request": _request_doc(pending) if pending is not None else None,
        "resources": resources,
        "protocol": {"era": session.era, "version": session.protocol_version},
        "transport": session.transport,
        "server": {
            "name": server.name,
            "command": server.command,
            "url": server.url,
            "info": session.server_info,
            "capabilities": session.server_capabilities,
            "roots": server.roots,
        },
        "client": {"info": session.client_info, "capabilities": session.client_capabilities},
        "session": {"id": session.id},
        "findings": ctx.findings,
        "identity": ctx.identity,
        "rate": ctx.rate,
        "registry": ctx.registry,
    }
    if "id" in body:
        doc["id"] = body["id"]
    return doc
