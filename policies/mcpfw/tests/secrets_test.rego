# Package mcpfw_test.secrets tests mcpfw.rules.secrets: what happens to the
# credentials the secrets detector reports in input.findings.secrets. The
# policy never sees the credentials themselves, only where they are.
package mcpfw_test.secrets

import data.mcpfw.rules.secrets
import data.mcpfw_test.inputs

# A finding as the detector reports it.
finding(pointer, rule, start, end, part) := {"pointer": pointer, "rule": rule, "start": start, "end": end, "part": part}

# `inp` with the detector's findings.
with_findings(inp, findings) := object.union(inp, {"findings": {"secrets": findings}})

redactions(inp) := entries if {
	entries := secrets.redact with input as inp
}

pointers(inp) := {entry.pointer | some entry in redactions(inp)}

key_result := with_findings(
	inputs.tool_result("read_file", {"path": "/data/k"}, {"content": [
		{"type": "text", "text": "harmless"},
		{"type": "text", "text": "key: -----BEGIN RSA PRIVATE KEY----- ... -----END RSA PRIVATE KEY----- end"},
	]}),
	[finding("/result/content/1/text", "private-key-pem", 5, 69, "result")],
)

test_finding_in_tool_result_redacted_by_span if {
	redactions(key_result) == {{"pointer": "/result/content/1/text", "span": [5, 69], "replacement": "[REDACTED:private-key-pem]"}}
	decision := inputs.decide(key_result)
	decision.allow == true
	decision.redact == [{"pointer": "/result/content/1/text", "span": [5, 69], "replacement": "[REDACTED:private-key-pem]"}]
	{"type": "tag", "tag": "secret_redacted"} in decision.obligations
}

test_several_findings_in_one_string_redacted_each if {
	inp := with_findings(inputs.tool_result("env", {}, {"content": [{"type": "text", "text": "AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = x"}]}), [
		finding("/result/content/0/text", "aws-access-key-id", 0, 20, "result"),
		finding("/result/content/0/text", "aws-secret-access-key", 45, 85, "result"),
	])
	{entry.replacement | some entry in redactions(inp)} == {"[REDACTED:aws-access-key-id]", "[REDACTED:aws-secret-access-key]"}
	{entry.span | some entry in redactions(inp)} == {[0, 20], [45, 85]}
	pointers(inp) == {"/result/content/0/text"}
}

test_structured_content_pointer_kept_as_reported if {
	inp := with_findings(inputs.tool_result("cfg", {}, {"structuredContent": {"creds": {"a/b~c": "ghp_x"}}}), [
		finding("/result/structuredContent/creds/a~1b~0c", "github-token", 0, 5, "result"),
	])
	pointers(inp) == {"/result/structuredContent/creds/a~1b~0c"}
}

test_server_notification_redacted if {
	inp := with_findings(
		inputs.notification("server_to_client", "notifications/message", {"level": "info", "data": "t"}),
		[finding("/params/data", "github-token", 0, 1, "params")],
	)
	pointers(inp) == {"/params/data"}
	inputs.decide(inp).allow == true
}

test_server_request_redacted if {
	inp := with_findings(
		inputs.server_request("sampling/createMessage", {"messages": [{"role": "user", "content": {"type": "text", "text": "k"}}]}),
		[finding("/params/messages/0/content/text", "aws-access-key-id", 0, 1, "params")],
	)
	pointers(inp) == {"/params/messages/0/content/text"}
}

test_error_response_redacted if {
	inp := with_findings(
		inputs.error_response("tools/call", {"code": -32000, "message": "bad token ghp_x"}),
		[finding("/error/message", "github-token", 10, 15, "error")],
	)
	pointers(inp) == {"/error/message"}
	count(secrets.deny) == 0 with input as inp
}

test_client_result_to_server_redacted if {
	inp := with_findings(
		inputs.response("client_to_server", "sampling/createMessage", {"role": "assistant", "content": {"type": "text", "text": "k"}, "model": "m"}),
		[finding("/result/content/text", "aws-access-key-id", 0, 1, "result")],
	)
	pointers(inp) == {"/result/content/text"}
}

argument_call := with_findings(
	inputs.tool_call("http_post", {"url": "https://example.com", "body": {"key": "AKIAIOSFODNN7EXAMPLE"}}),
	[finding("/params/arguments/body/key", "aws-access-key-id", 0, 20, "arguments")],
)

test_credential_in_tool_arguments_denied if {
	reasons := secrets.deny with input as argument_call
	reasons == {{"code": "secret_in_arguments", "message": "tool http_post: argument /params/arguments/body/key contains a credential (aws-access-key-id)"}}
	count(redactions(argument_call)) == 0
	decision := inputs.decide(argument_call)
	not decision.allow
	inputs.codes(argument_call) == {"secret_in_arguments"}
}

test_credential_in_tool_arguments_redacted_when_configured if {
	count(secrets.deny) == 0 with input as argument_call with data.mcpfw.config.secrets.arguments_action as "redact"
	entries := secrets.redact with input as argument_call with data.mcpfw.config.secrets.arguments_action as "redact"
	entries == {{"pointer": "/params/arguments/body/key", "span": [0, 20], "replacement": "[REDACTED:aws-access-key-id]"}}
	decision := inputs.decide(argument_call) with data.mcpfw.config.secrets.arguments_action as "redact"
	decision.allow == true
	{"type": "tag", "tag": "secret_redacted"} in decision.obligations
}

test_credential_in_tool_arguments_ignored_when_off if {
	count(secrets.deny) == 0 with input as argument_call with data.mcpfw.config.secrets.arguments_action as "off"
	count(secrets.redact) == 0 with input as argument_call with data.mcpfw.config.secrets.arguments_action as "off"
	inputs.clean_allow(argument_call) with data.mcpfw.config.secrets.arguments_action as "off"
}

test_only_argument_findings_count_for_tool_calls if {
	# A finding outside the arguments (say in _meta) is not the tool's input.
	inp := with_findings(inputs.tool_call("http_post", {"body": "x"}), [finding("/params/_meta/token", "github-token", 0, 5, "params")])
	count(secrets.deny) == 0 with input as inp
	count(redactions(inp)) == 0
	entries := secrets.redact with input as inp with data.mcpfw.config.secrets.arguments_action as "redact"
	count(entries) == 0
}

test_client_requests_other_than_tool_calls_not_acted_on if {
	inp := with_findings(
		inputs.request("resources/read", {"uri": "https://example.com/?k=AKIAIOSFODNN7EXAMPLE"}),
		[finding("/params/uri", "aws-access-key-id", 24, 44, "params")],
	)
	count(redactions(inp)) == 0
	count(secrets.deny) == 0 with input as inp
	inputs.clean_allow(inp)
}

test_client_notifications_not_acted_on if {
	inp := with_findings(inputs.notification("client_to_server", "notifications/message", {"data": "k"}), [finding("/params/data", "github-token", 0, 1, "params")])
	inputs.clean_allow(inp)
}

test_no_findings_no_effect if {
	inputs.clean_allow(with_findings(inputs.tool_result("read_file", {}, {"content": [{"type": "text", "text": "AKIAIOSFODNN7EXAMPLE"}]}), []))
	inputs.clean_allow(inputs.tool_result("read_file", {}, {"content": [{"type": "text", "text": "AKIAIOSFODNN7EXAMPLE"}]}))
	count(redactions(with_findings(inputs.tool_result("x", {}, {}), []))) == 0
}

test_denial_wins_over_redaction_in_the_decision if {
	inp := with_findings(argument_call, [
		finding("/params/arguments/body/key", "aws-access-key-id", 0, 20, "arguments"),
		finding("/params/arguments/url", "github-token", 0, 3, "arguments"),
	])
	reasons := secrets.deny with input as inp
	count(reasons) == 2
	not inputs.decide(inp).allow
}

test_arguments_action_default_is_deny if {
	data.mcpfw.config.secrets.arguments_action == "deny"
	not data.mcpfw.config.secrets.patterns
}

test_malformed_findings_deny if {
	bad := {"pointer": "/result/content/0/text", "rule": "github-token", "start": 0}
	inp := with_findings(inputs.tool_result("x", {}, {"content": [{"type": "text", "text": "ghp_x"}]}), [bad])
	inputs.codes(inp) == {"invalid_finding"}
	arguments := with_findings(inputs.tool_call("http_post", {"body": "x"}), [{"pointer": "/params/arguments/body", "start": 0, "end": 1}])
	"invalid_finding" in inputs.codes(arguments)
	"invalid_finding" in inputs.codes(arguments) with data.mcpfw.config.secrets.arguments_action as "redact"
}

test_credential_used_as_a_key_removes_its_member if {
	inp := with_findings(
		inputs.tool_result("env", {}, {"structuredContent": {"tokens": {"ghp_x": "admin"}}}),
		[object.union(finding("/result/structuredContent/tokens/ghp_x", "github-token", 0, 40, "result"), {"in_key": true})],
	)
	decision := inputs.decide(inp)
	decision.allow == true
	decision.remove == ["/result/structuredContent/tokens/ghp_x"]
	decision.redact == []
	{"type": "tag", "tag": "secret_redacted"} in decision.obligations
}
