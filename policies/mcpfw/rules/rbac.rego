# Package mcpfw.rules.rbac: role-based tool access per tenant, kept as data.
#
# Who may call which tool is data.mcpfw.config.rbac (config/rbac/data.json,
# or policy.data in the firewall's configuration), so that access changes
# without touching Rego:
#
#   enforce        "when_identified" (default): callers with an identity are
#                  held to their roles, anonymous ones (auth off) are not;
#                  "always": an anonymous tools/call is denied too; "off"
#   tenants        {tenant: {"roles": {role: {"tools": [glob], "deny_tools": [glob]}}}};
#                  the tenant "*" applies to every tenant without an entry
#                  of its own (a tenant's entry replaces it, not merges)
#   scope_roles    {scope: role}: OAuth scopes that grant a role
#   default_roles  roles of every identified caller
#
# A caller may call a tool when one of its roles lists a pattern matching the
# tool's name and none of that role's deny_tools does. tools/list results are
# filtered the same way: a caller never sees a tool it may not call.
package mcpfw.rules.rbac

deny contains reason if {
	some reason in effects(data.mcpfw.config.rbac).deny
}

remove contains pointer if {
	some pointer in effects(data.mcpfw.config.rbac).remove
}

# The roles of the caller: its own, those its scopes grant, and the defaults.
roles(config) := {role | some role in input.identity.roles} | {role |
	some scope in input.identity.scopes
	role := config.scope_roles[scope]
} | {role | some role in config.default_roles}

# The role table of the caller's tenant ("*" when it has none of its own).
tenant_roles(config) := config.tenants[input.identity.tenant].roles

tenant_roles(config) := config.tenants["*"].roles if {
	not config.tenants[input.identity.tenant]
}

granted(config, tool) if {
	some role in roles(config)
	grant := tenant_roles(config)[role]
	some pattern in grant.tools
	glob.match(pattern, [], tool)
	not refused(grant, tool)
}

refused(grant, tool) if {
	some pattern in object.get(grant, "deny_tools", [])
	glob.match(pattern, [], tool)
}

# effects(config): {"deny", "remove"} for a tools/call request or a tools/list result.
effects(config) := {"deny": deny_set} if {
	config.enforce != "off"
	input.kind == "request"
	input.method == "tools/call"
	is_object(input.identity)
	tool := input.tool.name
	deny_set := {{"code": "rbac_denied", "message": sprintf(
		"tenant %v, subject %v: no role grants tool %v (roles: %v)",
		[input.identity.tenant, input.identity.subject, tool, sort([r | some r in roles(config)])],
	)} |
		not granted(config, tool)
	}
}

effects(config) := {"deny": {{"code": "unauthenticated", "message": "tool calls need an authenticated caller"}}} if {
	config.enforce == "always"
	input.kind == "request"
	input.method == "tools/call"
	not is_object(input.identity)
}

effects(config) := {"remove": remove_set} if {
	config.enforce != "off"
	input.kind == "response"
	input.method == "tools/list"
	is_object(input.identity)
	remove_set := {sprintf("/result/tools/%d", [i]) |
		some i, tool in input.result.tools
		not granted(config, tool.name)
	}
}
