# Package mcpfw.lib.registry holds the logic of mcpfw.rules.registry: which
# definitions the tool registry's verdict (input.registry) keeps from the
# client, and the reasons given. Every function takes the configuration
# (data.mcpfw.config.registry) as an argument rather than reading data: the
# decision reads it once, and regorus 0.13 loses a module's imports inside a
# function called from another module.
package mcpfw.lib.registry

label(kind) := {"tools": "tool", "prompts": "prompt", "resource_templates": "resource template"}[kind]

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

# The use of a definition this session's client did not receive in its list.
hidden_reason(reg) := {"code": "registry_hidden", "message": msg} if {
	msg := sprintf(
		"registry: %s '%s' was not in the list this session received from server '%s'; list again",
		[label(reg.kind), reg.target.name, reg.server],
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
