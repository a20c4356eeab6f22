# Package mcpfw_test.pii tests mcpfw.rules.pii.
package mcpfw_test.pii

import data.mcpfw_test.detector_inputs as di

f(pointer, rule, part) := {"pointer": pointer, "rule": rule, "start": 4, "end": 20, "part": part}

result := {"content": [{"type": "text", "text": "Mail ann@example.com now"}]}

test_results_tagged_not_redacted_by_default if {
	inp := di.tool_result("crm", result, {"pii": [f("/result/content/0/text", "email", "result")]})
	d := di.decide(inp)
	d.allow == true
	d.redact == []
	{"pii", "pii:email"} & di.tags(inp) == {"pii", "pii:email"}
}

test_redact_results_by_span_when_enabled if {
	inp := di.tool_result("crm", result, {"pii": [
		f("/result/content/0/text", "email", "result"),
		f("/result/content/0/text", "ipv4", "result"),
	]})
	d := data.mcpfw.decision with input as inp
		with data.mcpfw.config.detectors.pii.redact_results as true
		with data.mcpfw.config.detectors.pii.redact_rules as ["email"]
	d.redact == [{"pointer": "/result/content/0/text", "span": [4, 20], "replacement": "[PII:email]"}]
}

test_arguments_tag_by_default_deny_when_configured if {
	inp := di.tool_call("send", {"to": "ann@example.com"}, {"pii": [f("/params/arguments/to", "email", "arguments")]})
	di.decide(inp).allow == true
	"pii:email" in di.tags(inp)
	d := data.mcpfw.decision with input as inp with data.mcpfw.config.detectors.pii.arguments_action as "deny"
	d.allow == false
}

test_no_pii_no_tags if {
	inp := di.tool_result("crm", result, {"pii": []})
	not "pii" in di.tags(inp)
}
