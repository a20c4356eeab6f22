# Package mcpfw_test.poisoning tests mcpfw.rules.poisoning.
package mcpfw_test.poisoning

import data.mcpfw.rules.poisoning
import data.mcpfw_test.detector_inputs as di

hit(rule, category, severity) := {
	"rule": rule, "category": category, "severity": severity,
	"pointer": "/result/tools/1/description", "start": 0, "end": 10,
}

entry(pointer, name, hits) := {
	"pointer": pointer, "kind": "tool", "name": name, "digest": "sha256:00",
	"hits": hits, "score": null, "score_pointer": null,
}

tools := {"tools": [{"name": "ok"}, {"name": "bad"}, {"name": "odd"}]}

listing(items) := di.response("tools/list", tools, {"poisoning": {"items": items, "scanned": 3}})

removed(inp) := r if {
	r := poisoning.remove with input as inp
}

test_high_severity_tool_removed if {
	inp := listing([entry("/result/tools/1", "bad", [hit("conceal_from_user", "concealment", "high")])])
	removed(inp) == {"/result/tools/1"}
	"tool_poisoning" in di.tags(inp)
	di.decide(inp).allow == true
}

test_single_medium_category_kept if {
	inp := listing([entry("/result/tools/2", "odd", [
		hit("hidden_instruction_tag", "hidden_block", "medium"),
		hit("hidden_instruction_tag", "hidden_block", "medium"),
	])])
	removed(inp) == set()
	not "tool_poisoning" in di.tags(inp)
}

test_two_medium_categories_removed if {
	inp := listing([entry("/result/tools/2", "odd", [
		hit("hidden_instruction_tag", "hidden_block", "medium"),
		hit("excessive_padding", "padding", "medium"),
	])])
	removed(inp) == {"/result/tools/2"}
}

test_several_poisoned_items_all_removed if {
	inp := listing([
		entry("/result/tools/1", "bad", [hit("ansi_escape", "terminal_escape", "high")]),
		entry("/result/tools/2", "odd", [hit("unicode_tag_characters", "invisible_unicode", "high")]),
	])
	removed(inp) == {"/result/tools/1", "/result/tools/2"}
}

test_classifier_score_only_with_threshold if {
	scored := object.union(entry("/result/tools/1", "bad", []), {"score": 0.99})
	inp := listing([scored])
	removed(inp) == set()
	r := poisoning.remove with input as inp with data.mcpfw.config.detectors.poisoning.classifier_threshold as 0.9
	r == {"/result/tools/1"}
}

test_action_deny_refuses_list if {
	inp := listing([entry("/result/tools/1", "bad", [hit("conceal_from_user", "concealment", "high")])])
	d := data.mcpfw.decision with input as inp with data.mcpfw.config.detectors.poisoning.action as "deny"
	d.allow == false
	{r.code | some r in d.reasons} == {"tool_poisoning"}
	r := poisoning.remove with input as inp with data.mcpfw.config.detectors.poisoning.action as "deny"
	r == set()
}

test_call_to_poisoned_tool_denied if {
	target := entry("/result/tools/1", "bad", [hit("read_credential_file", "credential_access", "high")])
	inp := di.tool_call("bad", {}, {"poisoning": {"target": target}})
	d := di.decide(inp)
	d.allow == false
	"poisoned_tool" in di.codes(inp)
	some reason in d.reasons
	contains(reason.message, "read_credential_file")
}

test_call_to_tool_with_weak_evidence_allowed if {
	target := entry("/result/tools/2", "odd", [hit("hidden_instruction_tag", "hidden_block", "medium")])
	inp := di.tool_call("odd", {}, {"poisoning": {"target": target}})
	di.decide(inp).allow == true
}

test_poisoned_server_instructions_dropped if {
	item := object.union(entry("/result", null, [hit("ignore_previous_instructions", "instruction_override", "high")]), {"kind": "server_instructions"})
	inp := di.response("initialize", {"instructions": "x"}, {"poisoning": {"items": [item], "scanned": 1}})
	removed(inp) == {"/result/instructions"}
}

test_clean_list_untouched if {
	inp := listing([])
	removed(inp) == set()
	d := di.decide(inp)
	d.allow == true
	d.redact == []
}
