"""Assemble a working firewall (policy engine, audit log, inspector) from the configuration."""

from __future__ import annotations

import atexit
import dataclasses
import gc
from collections.abc import Mapping
from dataclasses import dataclass

from .audit.log import AuditLog
from .config import Config
from .detection_enrichers import Detectors
from .metrics import MeteredAudit, MetricsRecorder, SnapshotWriter, metrics_dir
from .pipeline import AuditSink, Enricher, Inspector
from .ratelimit import RateEnricher
from .registry import build_registry_enricher
from .policy.bundle import Bundle, load_bundle
from .policy.engine import PolicyEngine, create_engine, decision_cache_plan, engine_modules, findings_read
from .policy.rules import check_defines_decision


@dataclass
class Firewall:
    """The long-lived parts one serving process shares across its sessions."""

    config: Config
    bundle: Bundle
    engine: PolicyEngine
    audit: AuditLog
    inspector: Inspector
    detectors: Detectors
    metrics: SnapshotWriter | None = None

    def close(self) -> None:
        """Flush every pending audit record and release the policy engine; safe to call
        more than once. Call it on the thread that built the firewall: a regorus engine
        freed from another thread is leaked instead."""
        self.audit.close()
        if self.metrics is not None:
            self.metrics.close()  # after the audit: its final counts of written rows
        self.engine.close()


def build_firewall(config: Config) -> Firewall:
    """Load and compile the policy once, open the audit log, and wire the inspector."""
    bundle = load_bundle(config.policy.bundle)
    serving = dataclasses.replace(bundle, modules=serving_modules(bundle))
    check_defines_decision(serving.modules)
    engine = create_engine(config.policy.engine, serving, config.policy.data or None)
    audit_cfg = config.audit
    audit = AuditLog(
        audit_cfg.path,
        flush_interval=audit_cfg.flush_interval_ms / 1000.0,
        batch_size=audit_cfg.batch_size,
        on_failure=audit_cfg.on_failure,
        spill_path=audit_cfg.spill_path,
    )
    atexit.register(audit.close)
    registry = build_registry_enricher(config)
    skip = unread_detectors(engine_modules(engine), config, registry_on=registry is not None)
    # Detectors load their rules and model here, once, before the first message.
    detectors = Detectors(config.detectors, skip=skip)
    # First, so that a request is counted whatever the enrichers after it do.
    rate: tuple[Enricher, ...] = (RateEnricher(config.rate_limits),) if config.rate_limits.rules else ()
    enrichers: tuple[Enricher, ...] = rate + detectors.enrichers()
    # Last, so that it sees the detectors' findings (poisoning) on the same list.
    if registry is not None:
        enrichers += (registry,)
    from .approvals import ApprovalGate, ApprovalStore, default_approval_store

    approvals = ApprovalGate(ApprovalStore(
        config.approvals.store or default_approval_store(), pending_seconds=config.approvals.pending_hours * 3600
    ))
    sink: AuditSink = audit
    metrics: SnapshotWriter | None = None
    if config.metrics.enabled:
        recorder = MetricsRecorder(audit)
        metrics = SnapshotWriter(recorder, metrics_dir(config), config.metrics.interval_seconds)
        metrics.start()
        sink = MeteredAudit(audit, recorder)
    inspector = Inspector(
        engine, sink, bundle_digest=bundle.digest, limits=config.limits, enrichers=enrichers, approvals=approvals,
        record_inputs=config.audit.record_inputs,
    )
    return Firewall(config, bundle, engine, audit, inspector, detectors, metrics)


def serving_modules(bundle: Bundle) -> dict[str, str]:
    """The modules that decide: a bundle's test modules never do, and loaded they would only
    slow every data lookup."""
    return {path: src for path, src in bundle.modules.items() if not path.endswith("_test.rego")}


DETECTOR_NAMES = ("secrets", "pii", "poisoning", "injection", "intent")


def unread_detectors(modules: Mapping[str, str] | None, config: Config, *, registry_on: bool) -> frozenset[str]:
    """Enabled detectors to leave out because no rule of the bundle (its serving ``modules``)
    reads their findings: a call whose policy does not need a detector does not pay for it
    (``detectors.run_unread`` keeps them all, for the audit log). The tool registry marks
    drifted definitions with the poisoning detector's findings, so a bundle that reads
    ``input.registry`` keeps that one."""
    if config.detectors.run_unread:
        return frozenset()
    read = findings_read(modules)
    if read is None:
        return frozenset()
    enabled = {name for name in DETECTOR_NAMES if getattr(config.detectors, name).enabled}
    skip = frozenset(enabled) - read
    if "poisoning" in skip and registry_on:
        reads = decision_cache_plan(modules).reads
        if reads is None or "registry" in reads:
            skip -= {"poisoning"}
    return skip


def settle_heap() -> None:
    """Move everything built at start (modules, the compiled policy, detector tables: over
    50,000 objects) out of the cyclic collector's sight; call once when a serving process
    is ready. None of it is ever garbage, yet every full collection walked all of it again,
    holding up every message in flight (one took 76 ms on a proxy worker under load).

    The youngest generation is then collected after 50,000 net allocations instead of 700:
    a message allocates a few hundred containers that reference counting frees at once, so
    the default ran a collection every few messages for little (measured on a proxy under
    load: 12 us of collector time a request with the default, about 5 with this)."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG_THRESHOLD, middle, oldest)


_YOUNG_THRESHOLD = 50_000
