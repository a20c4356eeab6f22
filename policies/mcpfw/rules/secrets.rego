# Package mcpfw.rules.secrets keeps credentials out of MCP traffic.
#
# Every string in the scanned parts of a message is matched against the
# configured credential patterns (private key blocks, AWS keys, GitHub,
# GitLab, Slack, Google and Stripe tokens):
#
#   * what a server sends (params of its requests and notifications, results
#     and errors of its responses) and what a client returns to a server
#     (results and errors, e.g. of sampling) is redacted in place: each match
#     becomes "[REDACTED:<pattern name>]" and the message is tagged
#     "secret_redacted";
#   * tools/call arguments sent by the client are handled according to
#     arguments_action: "deny" (default: the model is about to hand a
#     credential to a tool), "redact", or anything else to skip the check.
#
# Redaction pointers are RFC 6901 pointers into the JSON-RPC message, e.g.
# "/result/content/0/text". The helpers live in mcpfw.lib.secrets.
#
# Configuration, data.mcpfw.config.secrets:
#   patterns          [{"name": str, "regex": str}]; the regex must be valid
#                     for the policy engine (RE2 / Rust regex) and for Python
#                     (the firewall applies redactions with Python's re)
#   arguments_action  "deny" | "redact" | anything else (off)
package mcpfw.rules.secrets

# Helpers are imported one by one: regorus evaluates a whole package when a
# rule is reached through an imported package (pkg.rule).
import data.mcpfw.config.secrets.arguments_action
import data.mcpfw.lib.pointer
import data.mcpfw.lib.secrets.argument_findings
import data.mcpfw.lib.secrets.message_findings
import data.mcpfw.lib.secrets.redaction

redact contains redaction(path, pattern) if {
	some [path, pattern] in message_findings
}

redact contains redaction(array.concat(["params", "arguments"], path), pattern) if {
	arguments_action == "redact"
	some [path, pattern] in argument_findings
}

obligations contains {"type": "tag", "tag": "secret_redacted"} if count(redact) > 0

deny contains {"code": "secret_in_arguments", "message": msg} if {
	arguments_action == "deny"
	some [path, pattern] in argument_findings
	msg := sprintf(
		"tool %v: argument %s contains a credential (%s)",
		[object.get(input.tool, "name", null), pointer(array.concat(["params", "arguments"], path)), pattern.name],
	)
}
