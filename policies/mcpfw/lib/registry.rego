# Package mcpfw.lib.registry holds the logic of mcpfw.rules.registry: which
# definitions the tool registry's verdict (input.registry) keeps from the
# client, and the reasons given. Every function takes the configuration
# (data.mcpfw.config.registry) as an argument rather than reading data: the
# decision reads it once, and regorus 0.13 loses a module's imports inside a
# function called from another module.
package mcpfw.lib.registry

label(kind) := {"tools": "tool", "prompts": "prompt", "resource_templates": "resource template"}[kind]

plural(kind) := {"tools": "tools", "prompts": "prompts", "resource_templates": "resource templates"}[kind]

list_method(kind) := {"tools": "tools/list", "prompts": "prompts/list", "resource_templates": "resources/templates/list"}[kind]

# blocked(item, config): a definition (a list item or the target of a use)
# that the client may neither see nor use.
blocked(item, config) if item.status in config.block_statuses

blocked(item, config) if unapproved_shadow(item, config)

# unapproved_shadow(item, config): the name was offered first by another
# server of the tenant, and nobody approved this server's definition in the
# registry file.
unapproved_shadow(item, config) if {
	config.shadowing == "block"
	item.shadows[0]
	item.status != "approved"
}

# reason(reg, item, config) names what is wrong, most specific first.
reason(reg, item, config) := {"code": "registry_rejected", "message": msg} if {
	item.status == "rejected"
	msg := sprintf("registry: %s '%s' of server '%s' is a definition the registry rejects", [label(reg.kind), item.name, reg.server])
} else := {"code": "registry_drift", "message": msg} if {
	item.status == "changed"
	msg := sprintf(
		"registry: %s '%s' of server '%s' changed since it was pinned (%s)%s; review with `mcpfw registry diff %s`",
		[label(reg.kind), item.name, reg.server, concat(", ", item.fields), poisoning_note(item), reg.server],
	)
} else := {"code": "registry_shadowing", "message": msg} if {
	unapproved_shadow(item, config)
	msg := sprintf(
		"registry: %s '%s' of server '%s' shadows the %s of the same name offered by %s, and is not approved",
		[label(reg.kind), item.name, reg.server, label(reg.kind), concat(", ", item.shadows)],
	)
} else := {"code": "registry_unlisted", "message": msg} if {
	item.status == "unlisted"
	msg := sprintf("registry: %s '%s' was never listed by server '%s' and is not in the registry", [label(reg.kind), item.name, reg.server])
} else := {"code": "registry_unapproved", "message": msg} if {
	msg := sprintf(
		"registry: %s '%s' of server '%s' is not approved (%s)%s; approve with `mcpfw registry approve %s %s`",
		[label(reg.kind), item.name, reg.server, item.status, poisoning_note(item), reg.server, item.name],
	)
}

poisoning_note(item) := sprintf("; its definition also matches poisoning rules: %s", [concat(", ", item.poisoning)]) if {
	item.poisoning[0]
} else := ""

# use_refusals(reg, config): the reasons a use (input.registry.event "use") is
# refused; empty when it is allowed. tools/call and prompts/get go by their
# target; a resources/read (reg.matches: every resource template its URI
# matches, the likeliest usable first, as reg.target) is refused only when no
# matching template may be used, with the reasons of the first.
use_refusals(reg, config) := refusals(reg, reg.target, config) if {
	not reg.matches
} else := set() if {
	some item in reg.matches
	count(refusals(reg, item, config)) == 0
} else := refusals(reg, reg.target, config)

# refusals(reg, item, config): why using one definition is refused: blocked,
# else unverified (a change announced and not listed since), else not in the
# list this session received.
refusals(reg, item, config) := {reason(reg, item, config) | blocked(item, config)} | {
	unverified_reason(reg, item) |
		unverified(item, config)
		not blocked(item, config)
} | {
	hidden_reason(reg, item) |
		item.visible == false
		config.hidden_use == "deny"
		not blocked(item, config)
		not unverified(item, config)
}

# unverified(item, config): the server announced a change to this kind of
# definition (list_changed) and no list answered since has shown this name:
# what a use reaches may differ from anything compared with the registry.
unverified(item, config) if {
	item.announced == true
	config.announced_use == "deny"
}

unverified_reason(reg, item) := {"code": "registry_unverified", "message": msg} if {
	msg := sprintf(
		"registry: server '%s' announced a change to its %s; list them again (%s) before using %s '%s'",
		[reg.server, plural(reg.kind), list_method(reg.kind), label(reg.kind), item.name],
	)
}

# The use of a definition this session's client did not receive in its list.
hidden_reason(reg, item) := {"code": "registry_hidden", "message": msg} if {
	msg := sprintf(
		"registry: %s '%s' was not in the list this session received from server '%s'; list again",
		[label(reg.kind), item.name, reg.server],
	)
}

# The protocol era or capabilities differ from the pinned ones.
protocol_drift(protocol, config) if {
	protocol.status == "changed"
	some name in protocol.fields
	name in config.protocol_fields
}

protocol_reason(reg) := {"code": "registry_protocol_drift", "message": msg} if {
	p := reg.protocol
	msg := sprintf(
		"registry: server '%s' changed its protocol (%s): era %v -> %v, version %v -> %v",
		[reg.server, concat(", ", p.fields), p.pinned.era, p.observed.era, p.pinned.version, p.observed.version],
	)
}

tag(name) := {"type": "tag", "tag": name}
