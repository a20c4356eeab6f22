# Package mcpfw_test.intent tests mcpfw.rules.intent.
package mcpfw_test.intent

import data.mcpfw_test.detector_inputs as di

finding(score, source) := {"intent": {
	"tool": "read_text_file", "score": score, "label": "x", "threshold": 0.5, "source": source,
	"nearest": {"source": source, "text": "Summarise the meeting notes", "similarity": 0.05},
	"task_score": score, "history_score": null, "history_size": 0,
}}

call(f) := di.tool_call("read_text_file", {"path": "/home/u/.ssh/id_rsa"}, f)

test_mismatch_tagged_not_denied_by_default if {
	inp := call(finding(0.95, "purpose"))
	di.decide(inp).allow == true
	"intent_mismatch" in di.tags(inp)
}

test_fitting_call_untagged if {
	inp := call(finding(0.2, "meta"))
	not "intent_mismatch" in di.tags(inp)
}

test_threshold_per_source if {
	# 0.85 is a mismatch against a declared purpose (0.8) but not against history (0.9).
	"intent_mismatch" in di.tags(call(finding(0.85, "purpose")))
	not "intent_mismatch" in di.tags(call(finding(0.85, "history")))
}

test_action_deny if {
	inp := call(finding(0.95, "meta"))
	d := data.mcpfw.decision with input as inp with data.mcpfw.config.detectors.intent.action as "deny"
	d.allow == false
	some reason in d.reasons
	reason.code == "intent_mismatch"
	contains(reason.message, "Summarise the meeting notes")
}

test_no_finding_no_effect if {
	inp := call({})
	di.decide(inp).allow == true
	not "intent_mismatch" in di.tags(inp)
}

test_action_approve_asks_for_approval if {
	inp := call(finding(0.95, "purpose"))
	d := data.mcpfw.decision with input as inp with data.mcpfw.config.detectors.intent.action as "approve"
	d.allow == true
	some obligation in d.obligations
	obligation.type == "require_approval"
	contains(obligation.message, "read_text_file")
}
