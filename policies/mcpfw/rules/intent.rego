# Package mcpfw.rules.intent acts on the intent detector's finding
# (input.findings.intent): how unlikely a tools/call is to fit the declared
# task (a configured purpose, or the client's _meta "dev.mcpfw/intent") or
# the client's earlier legitimate calls.
#
# Configuration, data.mcpfw.config.detectors.intent:
#   thresholds  {source: number} for the sources "purpose", "meta" and
#               "history"; a finding whose score reaches its source's
#               threshold is a mismatch, tagged "intent_mismatch"
#   action      "deny" also refuses mismatches; "approve" holds them until a
#               person approves (mcpfw approvals); default tag only: embedding
#               distance is evidence for review, and a legitimate but unusual
#               call should not break an agent's task unless a team says so
#
# The decision calls effects(config) only when there is a finding; the sets
# below are the same results, for tests and tools.
package mcpfw.rules.intent

obligations contains obligation if {
	input.findings.intent
	some obligation in effects(data.mcpfw.config.detectors.intent).obligations
}

deny contains reason if {
	input.findings.intent
	some reason in effects(data.mcpfw.config.detectors.intent).deny
}

# effects(config) is what a mismatching call calls for.
effects(config) := result if {
	finding := input.findings.intent
	finding.score >= config.thresholds[finding.source]
	nearest := object.get(finding.nearest, "pattern", object.get(finding.nearest, "text", ""))
	message := sprintf(
		"tool %v does not fit the declared task (score %.2f, %s; nearest: %v)",
		[finding.tool, finding.score, finding.source, nearest],
	)
	result := {
		"obligations": {{"type": "tag", "tag": "intent_mismatch"}} | {{"type": "require_approval", "message": message} |
			config.action == "approve"
			input.kind == "request"
		},
		"deny": {{"code": "intent_mismatch", "message": message} | config.action == "deny"},
	}
}
