# Package mcpfw.rules.rate acts on the rate-limit counters (input.rate), which
# the firewall fills for client requests covered by a configured rule
# (rate_limits.rules in its configuration file; null otherwise):
#
#   rate_limited            a requests or concurrent limit is exceeded
#   quota_exceeded          a bytes quota is exceeded
#   rate_store_unavailable  the counter store failed (input.rate.error) and
#                           input.rate.on_error is not "allow": fail closed.
#                           The client is not told why (the error names the
#                           store's address); the audit row's rate column is.
#                           With "allow" the request passes, tagged
#                           "rate_store_unavailable".
#
# A denial with rate_limited or quota_exceeded among its reasons is answered
# with JSON-RPC error -32055 and data.retry_after_seconds (from
# input.rate.retry_after_seconds); rate_store_unavailable with -32051.
#
# No data.mcpfw.config: the limits are the firewall's configuration and
# arrive with the counters. The decision calls effects(rate) only when
# input.rate.exceeded names a rule or input.rate.error is set (most limited
# requests are within their limits); the sets below are the same results,
# for tests and tools.
package mcpfw.rules.rate

deny contains reason if {
	some reason in effects(input.rate).deny
}

obligations contains obligation if {
	some obligation in effects(input.rate).obligations
}

# effects(rate) is what the counters of this request call for.
effects(rate) := {
	"deny": {limit_reason(limit) |
		some limit in rate.limits
		limit.exceeded == true
	} | {{"code": "rate_store_unavailable", "message": "rate limits cannot be checked (the counter store is unavailable); failing closed"} |
		is_string(rate.error)
		not rate.on_error == "allow"
	},
	"obligations": {{"type": "tag", "tag": "rate_store_unavailable"} |
		is_string(rate.error)
		rate.on_error == "allow"
	},
} if is_object(rate)

# limit_reason(limit) is the reason for one exceeded limit. Its code does not
# depend on the rest of the entry; an entry too malformed for its message
# still denies, with a plain one.
limit_reason(limit) := {"code": limit_code(limit), "message": message} if {
	message := limit_message(limit)
} else := {"code": limit_code(limit), "message": sprintf("limit %v exceeded", [object.get(limit, "rule", "?")])}

limit_code(limit) := "quota_exceeded" if limit.kind == "bytes"

else := "rate_limited"

limit_message(limit) := message if {
	limit.kind == "requests"
	message := sprintf(
		"rate limit %v exceeded%v: %v of %v requests per %vs; retry in %vs",
		[limit.rule, scope(limit.key), limit.count, limit.limit, limit.window_seconds, ceil(limit.reset_seconds)],
	)
}

limit_message(limit) := message if {
	limit.kind == "bytes"
	message := sprintf(
		"byte quota %v exceeded%v: %v of %v bytes per %vs; retry in %vs",
		[limit.rule, scope(limit.key), limit.count, limit.limit, limit.window_seconds, ceil(limit.reset_seconds)],
	)
}

limit_message(limit) := message if {
	limit.kind == "concurrent"
	message := sprintf(
		"concurrency limit %v exceeded%v: at most %v calls in flight; retry when one finishes",
		[limit.rule, scope(limit.key), limit.limit],
	)
}

# scope(key) names whose counter it is ("tenant=acme,tool=search"; "*" is one
# counter for everybody).
scope(key) := "" if key == "*"

else := sprintf(" for %v", [key])
