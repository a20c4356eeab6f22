# Package mcpfw is the policy entry point.
#
# The firewall evaluates exactly one document, data.mcpfw.decision (decision
# document v1, see firewall/schemas/decision.v1.json), once per message. It is
# assembled from the topic packages under data.mcpfw.rules. A topic that
# applies to a message contributes up to four sets:
#
#   deny         reasons {"code", "message"}; any reason blocks the message
#   redact       redactions {"pointer", "pattern"? | "span"?, "replacement"?}
#   obligations  e.g. {"type": "tag", "tag": "..."} to tag the audit record
#   remove       JSON pointers of members or array elements to delete
#
# This package routes: it evaluates a topic only for the messages the topic
# can act on, decided from `input` alone, so that a message no topic cares
# about (tools/list, notifications, most responses) costs almost nothing.
# Do not iterate data.mcpfw.rules[_] here: regorus then evaluates every rule
# of every topic package for every message, and reading data (configuration,
# another package's rule) costs a scan of all loaded modules each time.
# Hence the shape of the routes below:
#
#   * each route starts with cheap `input` checks (its gate), and a gate
#     must hold whenever the topic could contribute anything;
#   * the filesystem, commands and secrets topics run on most tools/call
#     traffic: the route calls their `effects(config)` function (no data
#     scan) with the configuration read once, through `settings`;
#   * the detector topics (injection, pii, poisoning, intent) and the
#     registry act on findings or registry events that are absent from most
#     messages: the route evaluates the whole package, and its sets are read
#     from it.
#
# A new topic package under mcpfw.rules needs a route here and its name in
# `topics`; data.mcpfw_test.decision.test_every_rules_package_is_routed fails
# until it has one. The protocol invariants below hold even if every topic
# package is removed. Configuration lives in data.mcpfw.config (config/
# data.json, overridable from the firewall's configuration file). Unit tests
# live in the mcpfw_test.* packages (tests/), outside data.mcpfw.
package mcpfw

# The topic packages the routes below evaluate.
topics := {"filesystem", "commands", "secrets", "injection", "pii", "poisoning", "intent", "registry", "rbac", "rate"}

decision := {
	"version": 1,
	"allow": count(deny) == 0,
	"reasons": [reason | some reason in deny],
	"redact": [entry | some entry in redact],
	"obligations": [obligation | some obligation in obligations],
	"remove": [pointer | some pointer in remove],
} if {
	# What each applicable topic contributes: objects with deny, redact,
	# obligations and remove sets (any of them may be missing).
	effects := {effect |
		# Filesystem: a request naming files (or more than the firewall
		# could check). effects() checks the rest.
		names_files
		input.kind == "request"
		effect := data.mcpfw.rules.filesystem.effects(settings.filesystem)
	} | {effect |
		# Commands: a client's tools/call.
		input.method == "tools/call"
		input.kind == "request"
		input.direction == "client_to_server"
		effect := data.mcpfw.rules.commands.effects(settings.commands)
	} | {effect |
		# Options smuggled into a revision or branch argument: any client's tools/call.
		input.method == "tools/call"
		input.kind == "request"
		input.direction == "client_to_server"
		effect := data.mcpfw.rules.commands.option_effects(settings.commands)
	} | {effect |
		# Secrets: the credential detector found something.
		input.findings.secrets[0]
		effect := data.mcpfw.rules.secrets.effects(settings.secrets)
	} | {effect |
		input.findings.injection.items[0]
		effect := data.mcpfw.rules.injection.effects(settings.detectors.injection)
	} | {effect |
		# ... and a message longer than the detector reads.
		input.findings.injection.truncated == true
		effect := data.mcpfw.rules.injection.unscanned(settings.detectors.injection)
	} | {effect |
		# RBAC: a tools/call request (anonymous ones too: enforce "always" refuses them) ...
		input.method == "tools/call"
		input.kind == "request"
		effect := data.mcpfw.rules.rbac.effects(settings.rbac)
	} | {effect |
		# ... and a tools/list result for an identified caller (tools it may not call are removed).
		input.method == "tools/list"
		input.kind == "response"
		is_object(input.identity)
		effect := data.mcpfw.rules.rbac.effects(settings.rbac)
	} | {effect |
		input.findings.pii[0]
		effect := data.mcpfw.rules.pii
	} | {effect |
		input.findings.poisoning
		effect := data.mcpfw.rules.poisoning
	} | {effect |
		input.findings.intent
		effect := data.mcpfw.rules.intent
	} | {effect |
		# Registry: the server registry reported an event for this message. It
		# judges every tools/call, so its configuration is passed in.
		input.registry.event
		not registry_quiet_use
		effect := data.mcpfw.rules.registry.effects(settings.registry)
	} | {effect |
		# Rate limits: input.rate (null unless a configured rule covers the
		# request) has an exceeded limit or a counter store error.
		some _ in array.concat(input.rate.exceeded, [1 | is_string(input.rate.error)])
		effect := data.mcpfw.rules.rate.effects(input.rate)
	}
	# Reasons that hold for any policy (inline: a rule of its own costs more):
	# an input of another version, a tools/call request without a usable tool
	# name or with arguments that are not an object.
	deny := {reason | some effect in effects; some reason in effect.deny} | {{"code": "unsupported_input", "message": "unsupported policy input version (expected 1)"} |
		not input.version == 1
	} | {{"code": "invalid_tool_call", "message": "tools/call request without a tool name"} |
		input.method == "tools/call"
		input.kind == "request"
		input.direction == "client_to_server"
		count({name | name := input.tool.name; is_string(name); name != ""}) == 0
	} | {{"code": "invalid_tool_call", "message": "tools/call arguments must be an object"} |
		input.method == "tools/call"
		input.kind == "request"
		input.direction == "client_to_server"
		arguments := input.params.arguments
		arguments != null
		not is_object(arguments)
	}
	redact := {entry | some effect in effects; some entry in effect.redact}
	obligations := {obligation | some effect in effects; some obligation in effect.obligations}
	remove := {pointer | some effect in effects; some pointer in effect.remove}
}

# Most tools/call traffic uses a definition the registry trusts and the client
# saw: mcpfw.rules.registry has nothing to add then, and is not evaluated.
names_files if input.resources.paths[0]

names_files if input.resources.truncated == true

registry_quiet_use if {
	input.registry.event == "use"
	target := input.registry.target
	not target.status in settings.registry.block_statuses
	not target.shadows[0]
	target.visible != false
	not target.announced
}

# The configuration (data.mcpfw.config), read once per evaluation and only by
# a route that needs it. Not named `config`: that would be data.mcpfw.config.
settings := data.mcpfw.config
