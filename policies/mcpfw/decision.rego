# Package mcpfw is the policy entry point.
#
# The firewall evaluates exactly one document, data.mcpfw.decision (decision
# document v1, see firewall/schemas/decision.v1.json). It is assembled from
# the topic packages under data.mcpfw.rules, each of which may contribute to
# three sets:
#
#   deny         reasons {"code", "message"}; any reason blocks the message
#   redact       redactions {"pointer", "pattern"?, "replacement"?}
#   obligations  e.g. {"type": "tag", "tag": "..."} to tag the audit record
#
# Adding a package under mcpfw.rules extends the policy without touching this
# file. Keep such packages small and put helper rules and functions in
# mcpfw.lib.<topic>: regorus evaluates every rule of every mcpfw.rules package
# for each message. The few protocol invariants below live here so that they
# hold even if every rule package is removed. Configuration for the rule
# packages lives in data.mcpfw.config (config/data.json) and can be
# overridden from the firewall's configuration file. Unit tests live in the
# mcpfw_test.* packages (tests/), outside data.mcpfw.
#
# Detector findings (input.findings) are not used by the default rules yet.
package mcpfw

decision := {
	"version": 1,
	"allow": allow,
	"reasons": [reason | some reason in deny],
	"redact": [entry | some entry in redact],
	"obligations": [obligation | some obligation in obligations],
	"remove": [pointer | some pointer in remove],
}

default allow := false

allow if count(deny) == 0

deny contains reason if some reason in data.mcpfw.rules[_].deny

redact contains entry if some entry in data.mcpfw.rules[_].redact

obligations contains obligation if some obligation in data.mcpfw.rules[_].obligations

# JSON pointers of members or array elements to delete from the forwarded message,
# e.g. a tool hidden from a tools/list result.
remove contains pointer if some pointer in data.mcpfw.rules[_].remove

# These rules were written for policy input version 1.
deny contains {"code": "unsupported_input", "message": "unsupported policy input version (expected 1)"} if {
	not input.version == 1
}

tool_call_request if {
	input.direction == "client_to_server"
	input.kind == "request"
	input.method == "tools/call"
}

deny contains {"code": "invalid_tool_call", "message": "tools/call request without a tool name"} if {
	tool_call_request
	not _has_tool_name
}

_has_tool_name if {
	is_string(input.tool.name)
	input.tool.name != ""
}

deny contains {"code": "invalid_tool_call", "message": "tools/call arguments must be an object"} if {
	tool_call_request
	arguments := input.params.arguments
	arguments != null
	not is_object(arguments)
}
