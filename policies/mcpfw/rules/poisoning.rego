# Package mcpfw.rules.poisoning keeps poisoned tool, prompt and resource
# definitions away from the model (input.findings.poisoning: `items` on list
# results and on the initialize and server/discover results (instructions,
# serverInfo title and description), `target` on a tools/call, prompts/get or
# resources/read of a definition listed with evidence).
#
# A definition is poisoned when its evidence has a hit whose severity is in
# block_severities, or medium-severity hits in at least medium_categories
# distinct categories, or (when classifier_threshold is a number) an
# injection-classifier score at or above it.
#
# Configuration, data.mcpfw.config.detectors.poisoning:
#   action  "hide": poisoned definitions are removed from list results
#           (`remove` pointers such as "/result/tools/3"; poisoned initialize
#           instructions are dropped); "deny": a list holding one is refused
#           as a whole; anything else: tag only
#   block_severities, medium_categories, classifier_threshold  (above)
#
# Whatever the action, using a poisoned definition is denied, and messages
# with poisoned definitions are tagged "tool_poisoning". The decision calls
# effects(config) only when the detector reported; the sets below are the
# same results, for tests and tools.
package mcpfw.rules.poisoning

remove contains pointer if {
	input.findings.poisoning
	some pointer in effects(data.mcpfw.config.detectors.poisoning).remove
}

deny contains reason if {
	input.findings.poisoning
	some reason in effects(data.mcpfw.config.detectors.poisoning).deny
}

obligations contains obligation if {
	input.findings.poisoning
	some obligation in effects(data.mcpfw.config.detectors.poisoning).obligations
}

# effects(config) is what the poisoned definitions of this message call for.
effects(config) := result if {
	items := [item | some item in input.findings.poisoning.items; poisoned(config, item)]
	targets := [target | target := input.findings.poisoning.target; poisoned(config, target)]
	count(items) + count(targets) > 0
	result := {
		"remove": {removal(item) | config.action == "hide"; some item in items},
		"deny": {{"code": "tool_poisoning", "message": sprintf("%s %v is poisoned (%s)", [item.kind, item.name, evidence(item)])} |
			config.action == "deny"
			some item in items
		} | {{"code": "poisoned_tool", "message": sprintf(
			"%s %v was listed with hidden instructions (%s)",
			[target.kind, target.name, evidence(target)],
		)} |
			some target in targets
		},
		"obligations": {{"type": "tag", "tag": "tool_poisoning"}},
	}
}

# poisoned(config, entry): a definition's evidence is enough to call it poisoned.
poisoned(config, entry) if {
	some hit in entry.hits
	hit.severity in config.block_severities
}

poisoned(config, entry) if {
	medium := {hit.category | some hit in entry.hits; hit.severity == "medium"}
	count(medium) >= config.medium_categories
}

poisoned(config, entry) if {
	is_number(config.classifier_threshold)
	is_number(entry.score)
	entry.score >= config.classifier_threshold
}

removal(item) := "/result/instructions" if item.kind == "server_instructions"

removal(item) := item.pointer if item.kind != "server_instructions"

# A readable summary of a definition's evidence: "ansi_escape, conceal_from_user".
evidence(entry) := concat(", ", sort({hit.rule | some hit in entry.hits}))
