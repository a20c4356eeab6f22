# Package mcpfw.lib.secrets holds the helpers of mcpfw.rules.secrets.
package mcpfw.lib.secrets

# Helpers reach configuration through a local rule, not an import: regorus
# 0.13 loses a module's imports inside a function called from another module.
config := data.mcpfw.config.secrets

# Message members scanned for redaction.
scanned contains "params" if input.direction == "server_to_client"

scanned contains "result" if input.kind == "response"

scanned contains "error" if input.kind == "error_response"

tool_call_request if {
	input.direction == "client_to_server"
	input.kind == "request"
	input.method == "tools/call"
}

# Strings are collected (with their path) before the per-pattern matching:
# written as a single rule, an engine may schedule the loop over patterns
# before walk() and walk the whole message once per pattern.

# [path in the message, string] for scanned strings matching any pattern.
suspect_strings contains [array.concat([member], path), value] if {
	some member in scanned
	walk(input[member], [path, value])
	is_string(value)
	regex.match(_any_pattern, value)
}

# [path in the arguments, string] for argument strings matching any pattern.
suspect_arguments contains [path, value] if {
	tool_call_request
	walk(input.tool.arguments, [path, value])
	is_string(value)
	regex.match(_any_pattern, value)
}

# [path in the message, pattern] for every credential in scanned members.
message_findings contains [path, pattern] if {
	some [path, value] in suspect_strings
	some pattern in config.patterns
	regex.match(pattern.regex, value)
}

# [path in the arguments, pattern] for every credential in tools/call arguments.
argument_findings contains [path, pattern] if {
	some [path, value] in suspect_arguments
	some pattern in config.patterns
	regex.match(pattern.regex, value)
}

# The redaction of what `pattern` matches in the string at `path`.
redaction(path, pattern) := {
	"pointer": data.mcpfw.lib.pointer(path),
	"pattern": pattern.regex,
	"replacement": sprintf("[REDACTED:%s]", [pattern.name]),
}

# All patterns in one alternation, so that a string holding no credential
# costs one match instead of one per pattern.
_any_pattern := concat("|", [sprintf("(?:%s)", [pattern.regex]) | some pattern in config.patterns])
