# Package mcpfw_test.secrets tests mcpfw.rules.secrets: redaction of
# credentials flowing toward the model and denial of credentials in tool
# arguments. The keys below are well-known documentation examples or
# obviously fake.
package mcpfw_test.secrets

import data.mcpfw.rules.secrets
import data.mcpfw_test.inputs

private_key := concat("\n", [
	"-----BEGIN RSA PRIVATE KEY-----",
	"MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
	"-----END RSA PRIVATE KEY-----",
])

aws_key_id := "AKIAIOSFODNN7EXAMPLE"

aws_secret_line := "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

github_token := "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB"

redactions(inp) := entries if {
	entries := secrets.redact with input as inp
}

pointers(inp) := {entry.pointer | some entry in redactions(inp)}

test_private_key_in_tool_result_redacted if {
	inp := inputs.tool_result("read_file", {"path": "/data/k"}, {"content": [
		{"type": "text", "text": "harmless"},
		{"type": "text", "text": concat("", ["key:\n", private_key, "\nend"])},
	]})
	some entry in redactions(inp)
	entry.pointer == "/result/content/1/text"
	entry.replacement == "[REDACTED:private_key]"
	regex.match(entry.pattern, private_key)
	pointers(inp) == {"/result/content/1/text"}
	decision := inputs.decide(inp)
	decision.allow == true
	{"type": "tag", "tag": "secret_redacted"} in decision.obligations
}

test_aws_keys_redacted if {
	inp := inputs.tool_result("env", {}, {"content": [{"type": "text", "text": concat("\n", [aws_key_id, aws_secret_line])}]})
	names := {entry.replacement | some entry in redactions(inp)}
	names == {"[REDACTED:aws_access_key_id]", "[REDACTED:aws_secret_access_key]"}
	pointers(inp) == {"/result/content/0/text"}
}

test_structured_content_redacted_with_escaped_pointer if {
	inp := inputs.tool_result("cfg", {}, {"structuredContent": {"creds": {"a/b~c": github_token}}})
	pointers(inp) == {"/result/structuredContent/creds/a~1b~0c"}
}

test_server_notification_redacted if {
	inp := inputs.notification("server_to_client", "notifications/message", {"level": "info", "data": github_token})
	pointers(inp) == {"/params/data"}
}

test_server_request_redacted if {
	inp := inputs.server_request("sampling/createMessage", {"messages": [{"role": "user", "content": {"type": "text", "text": aws_key_id}}]})
	pointers(inp) == {"/params/messages/0/content/text"}
}

test_error_response_redacted if {
	inp := inputs.error_response("tools/call", {"code": -32000, "message": concat(" ", ["bad token", github_token])})
	pointers(inp) == {"/error/message"}
}

test_client_result_to_server_redacted if {
	inp := inputs.response("client_to_server", "sampling/createMessage", {
		"role": "assistant", "content": {"type": "text", "text": aws_key_id}, "model": "m",
	})
	pointers(inp) == {"/result/content/text"}
}

test_credential_in_tool_arguments_denied if {
	inp := inputs.tool_call("http_post", {"url": "https://example.com", "body": {"key": aws_key_id}})
	reasons := secrets.deny with input as inp
	some reason in reasons
	reason.code == "secret_in_arguments"
	contains(reason.message, "argument /params/arguments/body/key ")
	not inputs.decide(inp).allow
}

test_credential_in_tool_arguments_redacted_when_configured if {
	inp := inputs.tool_call("http_post", {"body": {"key": aws_key_id}})
	count(secrets.deny) == 0 with input as inp with data.mcpfw.config.secrets.arguments_action as "redact"
	entries := secrets.redact with input as inp with data.mcpfw.config.secrets.arguments_action as "redact"
	{entry.pointer | some entry in entries} == {"/params/arguments/body/key"}
}

test_credential_in_tool_arguments_ignored_when_off if {
	inp := inputs.tool_call("http_post", {"body": {"key": aws_key_id}})
	count(secrets.deny) == 0 with input as inp with data.mcpfw.config.secrets.arguments_action as "off"
	count(secrets.redact) == 0 with input as inp with data.mcpfw.config.secrets.arguments_action as "off"
}

test_client_requests_other_than_tool_calls_not_scanned if {
	inp := inputs.request("resources/read", {"uri": concat("", ["https://example.com/?k=", aws_key_id])})
	count(redactions(inp)) == 0
	count(secrets.deny) == 0 with input as inp
}

test_lookalikes_not_redacted if {
	inp := inputs.tool_result("git_log", {}, {"content": [
		{"type": "text", "text": "commit 4b825dc642cb6eb9a060e54bf8d69288fbee4904"},
		{"type": "text", "text": "AKIA is a prefix; AKIASHORT is too short"},
		{"type": "text", "text": "-----BEGIN PUBLIC KEY-----\nMIIBIjANBg\n-----END PUBLIC KEY-----"},
		{"type": "text", "text": "use ghp_ tokens or sk_test_0123456789abcdefghijklmn"},
	]})
	count(redactions(inp)) == 0
}

test_every_pattern_is_valid_and_named if {
	every pattern in data.mcpfw.config.secrets.patterns {
		regex.is_valid(pattern.regex)
		is_string(pattern.name)
		pattern.name != ""
	}
}
