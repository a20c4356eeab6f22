# Package mcpfw.rules.injection acts on the prompt-injection classifier's
# findings (input.findings.injection, filled for tools/call arguments and for
# tools/call, prompts/get and resources/read results).
#
# Each scored string is an item {pointer, kind, score, threshold, start, end,
# decoded?}. An item is flagged when its score reaches the threshold for its
# kind in config.thresholds, or the model's own calibrated threshold
# (item.threshold) for kinds not listed there.
#
# Configuration, data.mcpfw.config.detectors.injection:
#   thresholds        {kind: number}; kinds not listed use the model's
#   results_action    flagged strings in results (server to client):
#                     "redact" (the whole string becomes `replacement`),
#                     "deny" (the response becomes an error), anything else:
#                     tag only
#   arguments_action  the same for tools/call arguments, and "approve": the
#                     call waits for a person's approval (mcpfw approvals)
#   replacement       the text a redacted string becomes
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

# effects(config) is what the flagged items of this message call for.
effects(config) := result if {
	flagged := [item | some item in input.findings.injection.items; item.score >= threshold(config, item)]
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

threshold(config, item) := t if {
	t := config.thresholds[item.kind]
	is_number(t)
} else := item.threshold

_action_key := "results_action" if input.direction == "server_to_client"

_action_key := "arguments_action" if input.direction == "client_to_server"
