# Package mcpfw_test.registry tests mcpfw.rules.registry and mcpfw.lib.registry.
package mcpfw_test.registry

base := {
	"version": 1,
	"direction": "server_to_client",
	"kind": "response",
	"method": "tools/list",
	"id": 3,
	"params": null,
	"tool": null,
	"result": {"tools": [{"name": "add"}, {"name": "echo"}, {"name": "read_file"}]},
	"error": null,
	"request": {"method": "tools/list", "params": {}},
	"resources": {"paths": [], "urls": []},
	"protocol": {"era": "2025-11-25", "version": "2025-11-25"},
	"transport": "stdio",
	"server": {"name": "drift", "command": ["drift"], "url": null, "info": null, "capabilities": null, "roots": []},
	"client": {"info": {"name": "agent", "version": "1"}, "capabilities": {}},
	"session": {"id": "s1"},
	"findings": {},
	"identity": null,
	"rate": null,
	"registry": null,
}

item(index, name, status, shadows) := {
	"name": name, "pointer": sprintf("/result/tools/%d", [index]), "status": status,
	"digest": "sha256:bb", "pinned_digest": "sha256:aa", "fields": [], "shadows": shadows,
}

changed(index, name, fields) := object.union(item(index, name, "changed", []), {
	"fields": fields, "diff": {"description": "Adds [-two-]{+three+} numbers."},
})

listing(items, removed) := object.union(base, {"registry": {
	"event": "list", "tenant": "default", "server": "drift", "mode": "tofu", "kind": "tools",
	"complete": true, "first_use": false, "checked": 3, "items": items, "removed": removed,
}})

use(target) := object.union(base, {
	"direction": "client_to_server", "kind": "request", "method": "tools/call", "request": null, "result": null,
	"params": {"name": target.name, "arguments": {}}, "tool": {"name": target.name, "arguments": {}},
	"registry": {"event": "use", "tenant": "default", "server": "drift", "mode": "tofu", "kind": "tools", "target": target},
})

target(name, status, visible) := {
	"name": name, "status": status, "digest": "sha256:bb", "pinned_digest": "sha256:aa",
	"visible": visible, "fields": [], "shadows": [], "announced": false,
}

announced(t) := object.union(t, {"announced": true})

read(uri, matches) := object.union(base, {
	"direction": "client_to_server", "kind": "request", "method": "resources/read", "request": null, "result": null,
	"params": {"uri": uri},
	"registry": {
		"event": "use", "tenant": "default", "server": "drift", "mode": "tofu", "kind": "resource_templates",
		"target": matches[0], "uri": uri, "matches": matches,
	},
})

protocol(status, fields) := object.union(base, {"method": "initialize", "request": {"method": "initialize", "params": {}}, "result": {}, "registry": {
	"event": "protocol", "tenant": "default", "server": "drift", "mode": "tofu",
	"protocol": {
		"status": status, "fields": fields,
		"pinned": {"era": "2025-11-25", "version": "2025-11-25", "capabilities": {"tools": {}}},
		"observed": {"era": "2026-07-28", "version": "2026-07-28", "capabilities": {"tools": {}, "prompts": {}}},
	},
}})

decide(inp) := d if {
	d := data.mcpfw.decision with input as inp
}

tags(inp) := {o.tag | some o in decide(inp).obligations; o.type == "tag"}

codes(inp) := {r.code | some r in decide(inp).reasons}

# -- list results -----------------------------------------------------------------

test_changed_and_new_tools_removed_from_the_list if {
	d := decide(listing([changed(0, "add", ["description"]), item(2, "read_file", "new", [])], []))
	d.allow == true
	{p | some p in d.remove} == {"/result/tools/0", "/result/tools/2"}
	{"registry_change", "registry_blocked"} == tags(listing([item(2, "read_file", "new", [])], [])) & {"registry_change", "registry_blocked"}
}

test_clean_list_untouched if {
	d := decide(listing([], []))
	d.allow == true
	d.remove == []
	not "registry_change" in tags(listing([], []))
}

test_removed_tool_is_tagged_not_blocked if {
	inp := listing([], [{"name": "gone", "status": "removed", "pinned_digest": "sha256:aa"}])
	decide(inp).remove == []
	"registry_change" in tags(inp)
	not "registry_blocked" in tags(inp)
}

test_list_action_deny_refuses_the_whole_list if {
	inp := listing([changed(0, "add", ["description", "inputSchema"])], [])
	d := decide(inp) with data.mcpfw.config.registry.list_action as "deny"
	d.allow == false
	some r in d.reasons
	r.code == "registry_drift"
	contains(r.message, "tool 'add' of server 'drift' changed since it was pinned (description, inputSchema)")
}

test_pinned_shadow_removed_approved_shadow_kept if {
	inp := listing([item(1, "echo", "pinned", ["other"]), item(2, "read_file", "approved", ["fs"])], [])
	decide(inp).remove == ["/result/tools/1"]
}

test_shadowing_tag_mode_keeps_trusted_shadows if {
	inp := listing([item(1, "echo", "pinned", ["other"]), item(2, "read_file", "new", ["fs"])], [])
	d := decide(inp) with data.mcpfw.config.registry.shadowing as "tag"
	d.remove == ["/result/tools/2"]
}

test_unverified_and_trusted_statuses_not_blocked if {
	config := data.mcpfw.config.registry
	not data.mcpfw.lib.registry.blocked(target("a", "approved", true), config)
	not data.mcpfw.lib.registry.blocked(target("a", "pinned", null), config)
	not data.mcpfw.lib.registry.blocked(target("a", "unverified", null), config)
	data.mcpfw.lib.registry.blocked(target("a", "unlisted", null), config)
}

test_package_sets_match_the_decision if {
	inp := listing([changed(0, "add", ["description"])], [])
	r := data.mcpfw.rules.registry.remove with input as inp
	r == {"/result/tools/0"}
	o := data.mcpfw.rules.registry.obligations with input as inp
	{x.tag | some x in o} == {"registry_change", "registry_blocked"}
	d := data.mcpfw.rules.registry.deny with input as use(target("x", "new", null))
	{x.code | some x in d} == {"registry_unapproved"}
}

# -- use of a definition ----------------------------------------------------------

test_call_to_drifted_tool_denied_naming_the_drift if {
	t := object.union(target("add", "changed", false), {"fields": ["description"]})
	d := decide(use(t))
	d.allow == false
	codes(use(t)) == {"registry_drift"}
	some r in d.reasons
	contains(r.message, "changed since it was pinned (description)")
	contains(r.message, "mcpfw registry diff drift")
	"registry_blocked" in tags(use(t))
}

test_call_to_new_tool_denied_with_approval_hint if {
	d := decide(use(target("multiply", "new", false)))
	d.allow == false
	some r in d.reasons
	r.code == "registry_unapproved"
	contains(r.message, "mcpfw registry approve drift multiply")
}

test_call_statuses_have_their_codes if {
	codes(use(target("x", "rejected", null))) == {"registry_rejected"}
	codes(use(target("x", "unlisted", null))) == {"registry_unlisted"}
	codes(use(object.union(target("x", "pinned", true), {"shadows": ["fs"]}))) == {"registry_shadowing"}
}

test_poisoned_drift_mentions_the_rules if {
	poisoned := object.union(changed(0, "add", ["description"]), {"poisoning": ["conceal_from_user"]})
	d := decide(listing([poisoned], [])) with data.mcpfw.config.registry.list_action as "deny"
	some r in d.reasons
	contains(r.message, "poisoning rules: conceal_from_user")
}

test_call_to_tool_hidden_from_this_session_denied if {
	inp := use(target("echo", "pinned", false))
	codes(inp) == {"registry_hidden"}
	d := decide(inp) with data.mcpfw.config.registry.hidden_use as "allow"
	d.allow == true
}

test_calls_to_trusted_tools_allowed if {
	decide(use(target("echo", "pinned", true))).allow == true
	decide(use(target("echo", "approved", null))).allow == true
	decide(use(target("echo", "unverified", null))).allow == true
}

# -- protocol and change notifications --------------------------------------------

test_protocol_era_change_tagged if {
	inp := protocol("changed", ["capabilities", "era", "version"])
	decide(inp).allow == true
	"registry_protocol_drift" in tags(inp)
}

test_protocol_version_only_change_not_drift if {
	not "registry_protocol_drift" in tags(protocol("changed", ["version"]))
	not "registry_protocol_drift" in tags(protocol("pinned", []))
}

test_protocol_action_deny_refuses_the_drift if {
	d := decide(protocol("changed", ["era"])) with data.mcpfw.config.registry.protocol_action as "deny"
	d.allow == false
	some r in d.reasons
	r.code == "registry_protocol_drift"
	contains(r.message, "era 2025-11-25 -> 2026-07-28")
}

test_list_changed_with_pending_review_tagged if {
	pending := object.union(base, {"direction": "server_to_client", "kind": "notification", "registry": {
		"event": "list_changed", "tenant": "default", "server": "drift", "mode": "tofu", "kind": "tools",
		"pending": [{"name": "add", "status": "changed"}], "subscription": null,
	}})
	"registry_change" in tags(pending)
	quiet := object.union(pending, {"registry": object.union(pending.registry, {"pending": []})})
	not "registry_change" in tags(quiet)
	decide(pending).allow == true
}

test_messages_without_registry_verdict_unaffected if {
	d := decide(base)
	d.allow == true
	d.remove == []
	not "registry_change" in tags(base)
}

# The decision skips the registry package for quiet uses; that shortcut must
# never skip a use the package would refuse.
test_quiet_use_shortcut_only_for_uses_the_package_allows if {
	quiet := [target("echo", "pinned", true), target("echo", "approved", null), target("echo", "unverified", null)]
	every t in quiet {
		data.mcpfw.registry_quiet_use with input as use(t)
		denied := data.mcpfw.rules.registry.deny with input as use(t)
		tagged := data.mcpfw.rules.registry.obligations with input as use(t)
		count(denied) + count(tagged) == 0
	}
	loud := [
		target("echo", "pinned", false), target("echo", "new", true), target("echo", "unlisted", null),
		object.union(target("echo", "pinned", true), {"shadows": ["fs"]}),
		announced(target("echo", "pinned", true)),
	]
	every t in loud {
		not data.mcpfw.registry_quiet_use with input as use(t)
		denied := data.mcpfw.rules.registry.deny with input as use(t)
		count(denied) > 0
	}
}

# -- change announcements -----------------------------------------------------------

test_use_after_a_change_announcement_is_unverified if {
	inp := use(announced(target("add", "pinned", true)))
	d := decide(inp)
	d.allow == false
	codes(inp) == {"registry_unverified"}
	some r in d.reasons
	r.message == "registry: server 'drift' announced a change to its tools; list them again (tools/list) before using tool 'add'"
	"registry_blocked" in tags(inp)
	decide(inp).allow == false
	allowed := decide(inp) with data.mcpfw.config.registry.announced_use as "allow"
	allowed.allow == true
}

test_announced_drift_names_the_drift_and_hidden_names_the_announcement if {
	codes(use(announced(target("add", "changed", false)))) == {"registry_drift"}
	codes(use(announced(target("add", "pinned", false)))) == {"registry_unverified"}
	codes(use(announced(target("add", "unverified", null)))) == {"registry_unverified"}
	prompt := object.union(use(announced(target("summarize", "pinned", true))), {"method": "prompts/get", "tool": null})
	p := object.union(prompt, {"registry": object.union(prompt.registry, {"kind": "prompts"})})
	some r in decide(p).reasons
	contains(r.message, "announced a change to its prompts; list them again (prompts/list) before using prompt 'summarize'")
}

# -- resources/read against resource templates ---------------------------------------

test_read_through_a_hidden_template_denied if {
	drifted := object.union(target("notes://{id}", "changed", false), {"fields": ["description"]})
	inp := read("notes://1", [drifted])
	d := decide(inp)
	d.allow == false
	codes(inp) == {"registry_drift"}
	some r in d.reasons
	contains(r.message, "resource template 'notes://{id}' of server 'drift' changed since it was pinned (description)")
	codes(read("notes://1", [target("notes://{id}", "pinned", false)])) == {"registry_hidden"}
	codes(read("notes://1", [target("notes://{id}", "new", null)])) == {"registry_unapproved"}
	codes(read("notes://1", [announced(target("notes://{id}", "pinned", true))])) == {"registry_unverified"}
}

test_read_allowed_when_any_matching_template_may_be_used if {
	visible := target("files://{+path}", "pinned", true)
	hidden := target("files://notes/{id}", "new", false)
	decide(read("files://notes/1", [visible, hidden])).allow == true
	# Whichever comes first: the policy looks at every match.
	decide(read("files://notes/1", [hidden, visible])).allow == true
	decide(read("files://notes/1", [hidden, announced(visible)])).allow == false
	codes(read("files://notes/1", [hidden, announced(visible)])) == {"registry_unapproved"}
	decide(read("files://notes/1", [target("files://{+path}", "approved", null)])).allow == true
}
