# Package mcpfw_test.rate tests mcpfw.rules.rate and its route.
package mcpfw_test.rate

import data.mcpfw_test.detector_inputs as di

entry(rule, kind, key, limit, count, reset) := {
	"rule": rule, "kind": kind, "key": key, "limit": limit, "count": count,
	"remaining": max([0, limit - count]),
	"window_seconds": window(kind), "reset_seconds": reset, "exceeded": count > limit,
}

window(kind) := null if kind == "concurrent"

else := 60.0

rate(limits) := {
	"backend": "memory", "error": null, "on_error": "deny",
	"retry_after_seconds": retry(limits),
	"exceeded": [e.rule | some e in limits; e.exceeded],
	"limits": limits,
}

retry(limits) := max(resets) if {
	resets := [reset |
		some item in limits
		item.exceeded
		reset := object.get({"concurrent": 1}, item.kind, item.reset_seconds)
	]
	count(resets) > 0
} else := null

store_error(on_error) := {
	"backend": "redis", "error": "redis: ConnectionError: Error 111 connecting to 127.0.0.1:1. Connection refused.",
	"on_error": on_error, "retry_after_seconds": null, "exceeded": [], "limits": [],
}

call(r) := object.union(di.tool_call("search", {"q": "x"}, {}), {"rate": r})

test_under_the_limit_is_a_clean_allow if {
	inp := call(rate([entry("per-tenant", "requests", "tenant=acme", 3, 3, 12.5)]))
	di.decide(inp) == {"version": 1, "allow": true, "reasons": [], "redact": [], "obligations": [], "remove": []}
}

test_requests_over_the_limit_are_rate_limited if {
	inp := call(rate([entry("per-tenant", "requests", "tenant=acme", 3, 4, 12.5)]))
	d := di.decide(inp)
	d.allow == false
	d.reasons == [{"code": "rate_limited", "message": "rate limit per-tenant exceeded for tenant=acme: 4 of 3 requests per 60s; retry in 13s"}]
}

test_bytes_over_the_quota_are_quota_exceeded if {
	inp := call(rate([entry("daily-bytes", "bytes", "key_id=k1", 1000, 1200, 0.2)]))
	d := di.decide(inp)
	d.allow == false
	d.reasons == [{"code": "quota_exceeded", "message": "byte quota daily-bytes exceeded for key_id=k1: 1200 of 1000 bytes per 60s; retry in 1s"}]
}

test_concurrent_over_the_limit_is_rate_limited if {
	inp := call(rate([entry("inflight", "concurrent", "*", 2, 3, null)]))
	d := di.decide(inp)
	d.reasons == [{"code": "rate_limited", "message": "concurrency limit inflight exceeded: at most 2 calls in flight; retry when one finishes"}]
}

test_every_exceeded_limit_is_a_reason if {
	inp := call(rate([
		entry("per-tenant", "requests", "tenant=acme", 3, 4, 5),
		entry("per-tenant", "bytes", "tenant=acme", 100, 50, 5),
		entry("per-tool", "requests", "tool=search", 10, 11, 30),
	]))
	di.codes(inp) == {"rate_limited"}
	count(di.decide(inp).reasons) == 2
}

test_only_exceeded_entries_deny if {
	inp := call(rate([
		entry("per-tenant", "requests", "tenant=acme", 3, 2, 5),
		entry("per-tenant", "bytes", "tenant=acme", 100, 101, 5),
	]))
	di.codes(inp) == {"quota_exceeded"}
}

test_store_error_fails_closed_by_default if {
	d := di.decide(call(store_error("deny")))
	d.allow == false
	d.reasons[0].code == "rate_store_unavailable"
	not contains(d.reasons[0].message, "Connection refused") # the store's error (and address) is not the client's
	d.obligations == []
}

test_store_error_fails_closed_without_on_error if {
	"rate_store_unavailable" in di.codes(call(object.remove(store_error("deny"), ["on_error"])))
}

test_store_error_allowed_is_tagged if {
	inp := call(store_error("allow"))
	d := di.decide(inp)
	d.allow == true
	d.reasons == []
	di.tags(inp) == {"rate_store_unavailable"}
}

test_malformed_entry_still_denies if {
	# An exceeded entry without the fields its message needs still denies.
	inp := call(rate([{"rule": "r", "kind": "requests", "exceeded": true}]))
	di.decide(inp).reasons == [{"code": "rate_limited", "message": "limit r exceeded"}]
	di.codes(call(object.union(rate([{"kind": "bytes", "exceeded": true}]), {"exceeded": ["q"]}))) == {"quota_exceeded"}
	di.codes(call(object.union(rate([{"kind": "other", "exceeded": true}]), {"exceeded": ["x"]}))) == {"rate_limited"}
	"rate_store_unavailable" in di.codes(call(object.union(store_error("deny"), {"on_error": "maybe"})))
}

test_sets_match_effects if {
	inp := call(rate([entry("per-tenant", "requests", "tenant=acme", 3, 4, 12.5)]))
	reasons := data.mcpfw.rules.rate.deny with input as inp
	{r.code | some r in reasons} == {"rate_limited"}
	tagged := data.mcpfw.rules.rate.obligations with input as call(store_error("allow"))
	tagged == {{"type": "tag", "tag": "rate_store_unavailable"}}
}

test_no_rate_no_effect if {
	inp := call(null)
	di.decide(inp).allow == true
	count(data.mcpfw.rules.rate.deny) == 0 with input as inp
}
