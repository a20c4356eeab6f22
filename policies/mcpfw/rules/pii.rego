# Package mcpfw.rules.pii acts on the PII detector's findings
# (input.findings.pii: {pointer, rule, start, end, part}, the shape of
# input.findings.secrets).
#
# Every message with personal data is tagged "pii" and "pii:<rule>". By
# default nothing else happens: personal data is often the point of a call (a
# CRM lookup, an email client).
#
# Configuration, data.mcpfw.config.detectors.pii:
#   redact_results    true: matches of the rules in redact_rules inside
#                     results (server to client) are replaced, span by span,
#                     by "[PII:<rule>]"
#   redact_rules      the rule ids redact_results applies to
#   arguments_action  "deny" refuses tools/call requests whose arguments
#                     carry personal data, "redact" redacts them; anything
#                     else: tag only
#
# The decision calls effects(config) only when the detector found something;
# the sets below are the same results, for tests and tools.
package mcpfw.rules.pii

obligations contains obligation if {
	input.findings.pii[0]
	some obligation in effects(data.mcpfw.config.detectors.pii).obligations
}

redact contains entry if {
	input.findings.pii[0]
	some entry in effects(data.mcpfw.config.detectors.pii).redact
}

deny contains reason if {
	input.findings.pii[0]
	some reason in effects(data.mcpfw.config.detectors.pii).deny
}

# effects(config) is what the personal data in this message calls for.
effects(config) := {
	"obligations": {{"type": "tag", "tag": "pii"}} | {{"type": "tag", "tag": concat(":", ["pii", finding.rule])} |
		some finding in input.findings.pii
	},
	"redact": {redaction(finding) |
		config.redact_results == true
		some finding in input.findings.pii
		finding.part == "result"
		finding.rule in config.redact_rules
	} | {redaction(finding) |
		config.arguments_action == "redact"
		some finding in input.findings.pii
		finding.part == "arguments"
	},
	"deny": {{"code": "pii_in_arguments", "message": sprintf(
		"tool %v: argument %s contains personal data (%s)",
		[object.get(input.tool, "name", null), finding.pointer, finding.rule],
	)} |
		config.arguments_action == "deny"
		some finding in input.findings.pii
		finding.part == "arguments"
	},
} if input.findings.pii[0]

# A redaction of one finding's span, [start, end) in characters of the string.
redaction(finding) := {
	"pointer": finding.pointer,
	"span": [finding.start, finding.end],
	"replacement": concat("", ["[PII:", finding.rule, "]"]),
}
