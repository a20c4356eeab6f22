# Package mcpfw.rules.registry enforces the tool registry (input.registry,
# filled by the firewall's registry enricher; see docs/registry.md).
#
#   list results      blocked definitions are removed from what the client
#                     sees (list_action "hide", the default), or the whole
#                     result is refused (list_action "deny")
#   tools/call,       using a blocked definition is denied, and so is using
#   prompts/get       one this session's client did not receive in its
#                     filtered list (hidden_use "deny"): a client can never
#                     use what it could not see; and one of a kind the server
#                     announced a change to (list_changed) that no list has
#                     shown since (announced_use "deny": registry_unverified)
#   resources/read    the same for the resource templates the URI matches;
#                     denied only when none of them may be used
#   initialize,       an era or capabilities change against the pinned
#   server/discover   protocol is tagged (protocol_action "deny" refuses it)
#   list_changed      tagged when definitions of the server await review
#
# A definition is blocked when its status is in block_statuses (default: new,
# changed, rejected, unlisted) or when its name shadows another server's and
# it is not approved in the registry file (shadowing "block").
#
# The decision calls effects(data.mcpfw.config.registry) for messages that
# carry input.registry; deny, remove and obligations below are the same
# result as sets, for tests and tools. Helpers live in mcpfw.lib.registry.
package mcpfw.rules.registry

deny contains reason if {
	input.registry.event
	some reason in effects(data.mcpfw.config.registry).deny
}

remove contains pointer if {
	input.registry.event
	some pointer in effects(data.mcpfw.config.registry).remove
}

obligations contains obligation if {
	input.registry.event
	some obligation in effects(data.mcpfw.config.registry).obligations
}

# effects(config) is {"deny", "remove", "obligations"} for a message the
# registry judged (one body per input.registry.event); undefined otherwise.
effects(config) := {"deny": deny_set, "remove": remove_set, "obligations": obligation_set} if {
	reg := input.registry
	reg.event == "list"
	blocked := [item | some item in reg.items; data.mcpfw.lib.registry.blocked(item, config)]
	remove_set := {item.pointer | config.list_action == "hide"; some item in blocked}
	deny_set := {data.mcpfw.lib.registry.reason(reg, item, config) | config.list_action == "deny"; some item in blocked}
	obligation_set := {data.mcpfw.lib.registry.tag("registry_change") | count(reg.items) + count(reg.removed) > 0} | {
		data.mcpfw.lib.registry.tag("registry_blocked") | blocked[0]
	}
}

effects(config) := {"deny": deny_set, "obligations": obligation_set} if {
	reg := input.registry
	reg.event == "use"
	deny_set := data.mcpfw.lib.registry.use_refusals(reg, config)
	obligation_set := {data.mcpfw.lib.registry.tag("registry_blocked") | deny_set[_]}
}

effects(config) := {"deny": deny_set, "obligations": obligation_set} if {
	reg := input.registry
	reg.event == "protocol"
	drift := {true | data.mcpfw.lib.registry.protocol_drift(reg.protocol, config)}
	deny_set := {data.mcpfw.lib.registry.protocol_reason(reg) | drift[_]; config.protocol_action == "deny"}
	obligation_set := {data.mcpfw.lib.registry.tag("registry_protocol_drift") | drift[_]}
}

effects(config) := {"obligations": obligation_set} if {
	reg := input.registry
	reg.event == "list_changed"
	obligation_set := {data.mcpfw.lib.registry.tag("registry_change") | reg.pending[0]}
}
