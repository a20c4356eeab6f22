# Package mcpfw.rules.secrets keeps credentials out of MCP traffic.
#
# Finding credentials is the secrets detector's job (rules/secrets.yaml, run
# by the firewall before the policy): it reports each match in
# input.findings.secrets as {"pointer", "rule", "start", "end", "part"},
# where pointer is the RFC 6901 pointer to a string of the message (or, with
# "in_key": true, to a member whose key is the credential), start/end the
# character offsets of the match in that string and part one of
# "arguments", "params", "result" or "error". No secret value reaches the
# policy. This package decides what happens to them:
#
#   * what a server sends (params of its requests and notifications, results
#     and errors of its responses) and what a client returns to a server
#     (results and errors, e.g. of sampling) is redacted in place: each match
#     becomes "[REDACTED:<rule>]" (a span redaction) and the message is
#     tagged "secret_redacted";
#   * tools/call arguments sent by the client (findings with part
#     "arguments") are handled according to arguments_action: "deny"
#     (default: the model is about to hand a credential to a tool), "redact",
#     or anything else to let them through;
#   * other client requests and notifications are left alone.
#
# The decision calls effects(data.mcpfw.config.secrets) only when the
# detector reported something; `deny`, `redact` and `obligations` below are
# the same results as sets, for tests and tools.
#
# Configuration, data.mcpfw.config.secrets:
#   arguments_action  "deny" | "redact" | anything else (off)
package mcpfw.rules.secrets

deny contains reason if {
	input.findings.secrets[0]
	some reason in effects(data.mcpfw.config.secrets).deny
}

redact contains entry if {
	input.findings.secrets[0]
	some entry in effects(data.mcpfw.config.secrets).redact
}

obligations contains obligation if {
	input.findings.secrets[0]
	some obligation in effects(data.mcpfw.config.secrets).obligations
}

# effects(config) is what the findings of this message call for, if anything.
effects(config) := redacted(input.findings.secrets) if {
	# A server's message, or a client's answer to a server.
	_from_server_or_answer
} else := {"deny": denials} if {
	_tool_call_request
	config.arguments_action == "deny"
	reasons := {reason |
		some finding in input.findings.secrets
		finding.part == "arguments"
		reason := {"code": "secret_in_arguments", "message": sprintf(
			"tool %v: argument %s contains a credential (%s)",
			[object.get(input.tool, "name", null), finding.pointer, finding.rule],
		)}
	}
	denials := reasons | malformed(input.findings.secrets)
} else := redacted([finding | some finding in input.findings.secrets; object.get(finding, "part", "arguments") == "arguments"]) if {
	_tool_call_request
	config.arguments_action == "redact"
}

# redacted(findings) redacts every finding by span and tags the message; a
# credential used as an object key (in_key) cannot be redacted in place, so
# its member is removed.
redacted(findings) := {
	"redact": {{
		"pointer": finding.pointer,
		"span": [finding.start, finding.end],
		"replacement": concat("", ["[REDACTED:", finding.rule, "]"]),
	} |
		some finding in findings
		not finding.in_key
	},
	"remove": {finding.pointer | some finding in findings; finding.in_key == true},
	"obligations": {{"type": "tag", "tag": "secret_redacted"}},
	"deny": malformed(findings),
} if findings[0]

# malformed(findings) denies for findings the policy cannot act on: a
# finding it cannot redact must not let the credential through.
malformed(findings) := {{"code": "invalid_finding", "message": "the secrets detector reported a finding without pointer, rule, start, end or part"} |
	some finding in findings
	not _well_formed(finding)
}

_well_formed(finding) if {
	is_string(finding.pointer)
	is_string(finding.rule)
	is_number(finding.start)
	is_number(finding.end)
	finding.part in {"arguments", "params", "result", "error"}
}

_from_server_or_answer if input.direction == "server_to_client"

_from_server_or_answer if {
	input.direction == "client_to_server"
	input.kind in {"response", "error_response"}
}

_tool_call_request if {
	input.method == "tools/call"
	input.kind == "request"
	input.direction == "client_to_server"
}
