# Package mcpfw.rules.injection acts on the prompt-injection classifier's
# findings (input.findings.injection, filled for tools/call arguments and for
# tools/call, prompts/get and resources/read results).
#
# Each scored string is an item {pointer, kind, score, label, threshold, start,
# end, decoded?}. An item is flagged when its score reaches the threshold for
# its kind in config.thresholds; for kinds not listed there the model's own
# decision at its calibrated threshold counts (item.label == "injection", made
# on the exact score). item.score and item.threshold are rounded with as many
# decimals as it takes (4 at least) to compare like the exact values, so for
# the firewall's own items item.score >= item.threshold agrees with the label
# even for thresholds close to 1; an item without a label (another producer)
# falls back to that comparison. A threshold set in config.thresholds is
# compared with item.score, which keeps at least 4 decimals.
#
# Configuration, data.mcpfw.config.detectors.injection:
#   thresholds        {kind: number}; kinds not listed use the model's
#                     calibrated thresholds (models/injection_classifier.json)
#   results_action    flagged strings in results (server to client):
#                     "redact" (the whole string becomes `replacement`),
#                     "deny" (the response becomes an error), anything else:
#                     tag only
#   arguments_action  the same for tools/call arguments, and "approve": the
#                     call waits for a person's approval (mcpfw approvals)
#   replacement       the text a redacted string becomes
#   unscanned_results_action
#                     a result holding more text than the detector reads
#                     (detectors.injection.max_chars in the firewall's
#                     configuration, 200,000 characters by default; findings
#                     say truncated: true): "deny" (the default: what was not
#                     read could hold the injection), anything else: tag only
#                     ("injection_scan_incomplete"). Arguments are tagged.
#
# Flagged messages are tagged "prompt_injection". The decision calls
# effects(config) only when the detector listed items; `deny`, `redact` and
# `obligations` below are the same results as sets, for tests and tools.
package mcpfw.rules.injection

deny contains reason if {
	input.findings.injection.items[0]
	some reason in effects(data.mcpfw.config.detectors.injection).deny
}

redact contains entry if {
	input.findings.injection.items[0]
	some entry in effects(data.mcpfw.config.detectors.injection).redact
}

obligations contains obligation if {
	input.findings.injection.items[0]
	some obligation in effects(data.mcpfw.config.detectors.injection).obligations
}

deny contains reason if {
	input.findings.injection.truncated == true
	some reason in unscanned(data.mcpfw.config.detectors.injection).deny
}

obligations contains obligation if {
	input.findings.injection.truncated == true
	some obligation in unscanned(data.mcpfw.config.detectors.injection).obligations
}

# unscanned(config) is what a message the detector did not read to its end
# calls for (the decision calls it when findings.injection.truncated).
unscanned(config) := {
	"deny": {reason |
		input.direction == "server_to_client"
		object.get(config, "unscanned_results_action", "deny") == "deny"
		reason := {"code": "injection_scan_incomplete", "message": "the result holds more text than the prompt-injection detector reads (detectors.injection.max_chars); what it did not read could hold an injection"}
	},
	"obligations": {{"type": "tag", "tag": "injection_scan_incomplete"}},
}

# effects(config) is what the flagged items of this message call for.
effects(config) := result if {
	flagged := [item | some item in input.findings.injection.items; flagged_item(config, item)]
	flagged[0]
	action := object.get(config, _action_key, "tag")
	result := {
		"deny": {reason |
			action == "deny"
			some item in flagged
			reason := {"code": "prompt_injection", "message": sprintf(
				"suspected prompt injection at %s (score %.2f, %s)",
				[item.pointer, item.score, item.kind],
			)}
		},
		# The whole string: the flagged window is where the model was most
		# certain, not necessarily all of the injected text.
		"redact": {{"pointer": item.pointer, "replacement": config.replacement} |
			action == "redact"
			some item in flagged
		},
		"obligations": {{"type": "tag", "tag": "prompt_injection"}} | {{
			"type": "require_approval",
			"message": sprintf("suspected prompt injection in the arguments (%s, score %.2f)", [item.pointer, item.score]),
		} |
			action == "approve"
			input.kind == "request"
			some item in flagged
		},
	}
}

flagged_item(config, item) if {
	t := config.thresholds[item.kind]
	is_number(t)
	item.score >= t
}

flagged_item(config, item) if {
	not _configured(config, item.kind)
	item.label == "injection"
}

flagged_item(config, item) if {
	not _configured(config, item.kind)
	not item.label
	item.score >= item.threshold
}

_configured(config, kind) if is_number(config.thresholds[kind])

_action_key := "results_action" if input.direction == "server_to_client"

_action_key := "arguments_action" if input.direction == "client_to_server"
