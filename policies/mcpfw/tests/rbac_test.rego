# Package mcpfw_test.rbac tests mcpfw.rules.rbac: role-based tool access per tenant.
package mcpfw_test.rbac

import data.mcpfw_test.detector_inputs as di

who(tenant, roles, scopes) := {
	"subject": "alice", "tenant": tenant, "roles": roles, "scopes": scopes,
	"key_id": null, "auth_method": "jwt", "claims": {},
}

call(tool, identity) := object.union(di.tool_call(tool, {"path": "/srv/a.txt"}, {}), {"identity": identity})

listing(identity) := object.union(di.response("tools/list", {"tools": [
	{"name": "read_text_file", "inputSchema": {"type": "object"}},
	{"name": "write_file", "inputSchema": {"type": "object"}},
	{"name": "delete_everything", "inputSchema": {"type": "object"}},
]}, {}), {"identity": identity})

codes(inp) := {r.code | some r in di.decide(inp).reasons}

test_reader_reads_but_does_not_write if {
	di.decide(call("read_text_file", who("acme", ["reader"], []))).allow == true
	d := di.decide(call("write_file", who("acme", ["reader"], [])))
	d.allow == false
	some reason in d.reasons
	reason.code == "rbac_denied"
	contains(reason.message, "write_file")
	contains(reason.message, "acme")
}

test_no_role_no_tools if {
	"rbac_denied" in codes(call("read_text_file", who("acme", [], [])))
}

test_scope_grants_a_role if {
	di.decide(call("read_text_file", who("acme", [], ["mcp:read"]))).allow == true
	"rbac_denied" in codes(call("write_file", who("acme", [], ["mcp:read"])))
}

test_operator_deny_patterns if {
	di.decide(call("write_file", who("acme", ["operator"], []))).allow == true
	"rbac_denied" in codes(call("delete_everything", who("acme", ["operator"], [])))
	di.decide(call("delete_everything", who("acme", ["admin"], []))).allow == true
}

test_tenant_table_replaces_the_default if {
	tables := {"*": {"roles": {"reader": {"tools": ["*"]}}}, "globex": {"roles": {"reader": {"tools": ["echo"]}}}}
	inp := call("read_text_file", who("globex", ["reader"], []))
	d := data.mcpfw.decision with input as inp with data.mcpfw.config.rbac.tenants as tables
	d.allow == false
	other := call("read_text_file", who("acme", ["reader"], []))
	d2 := data.mcpfw.decision with input as other with data.mcpfw.config.rbac.tenants as tables
	d2.allow == true
}

test_anonymous_calls_pass_unless_enforced_always if {
	di.decide(call("write_file", null)).allow == true
	d := data.mcpfw.decision with input as call("write_file", null) with data.mcpfw.config.rbac.enforce as "always"
	d.allow == false
	some reason in d.reasons
	reason.code == "unauthenticated"
}

test_enforce_off if {
	d := data.mcpfw.decision with input as call("write_file", who("acme", [], [])) with data.mcpfw.config.rbac.enforce as "off"
	d.allow == true
}

test_listing_hides_what_the_caller_may_not_call if {
	d := di.decide(listing(who("acme", ["reader"], [])))
	d.allow == true
	{p | some p in d.remove} == {"/result/tools/1", "/result/tools/2"}
	admin := di.decide(listing(who("acme", ["admin"], [])))
	count(object.get(admin, "remove", [])) == 0
}

test_anonymous_listing_untouched if {
	count(object.get(di.decide(listing(null)), "remove", [])) == 0
}

# The call was judged on its way in; its result is not held to the roles again (even
# with enforce "always"), so a result never reaches RBAC.
test_results_of_calls_are_not_judged_again if {
	result := object.union(di.response("tools/call", {"content": [{"type": "text", "text": "done"}]}, {}), {
		"identity": who("acme", [], []),
		"tool": {"name": "write_file", "arguments": {}},
	})
	di.decide(result).allow == true
	anonymous := object.union(result, {"identity": null})
	d := data.mcpfw.decision with input as anonymous with data.mcpfw.config.rbac.enforce as "always"
	d.allow == true
}
