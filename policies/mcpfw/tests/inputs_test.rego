# Package mcpfw_test.inputs builds policy inputs (version 1, see
# firewall/schemas/policy-input.v1.json) for the policy unit tests. Test
# packages live outside data.mcpfw so that they are never evaluated as part
# of a decision.
package mcpfw_test.inputs

base := {
	"version": 1,
	"direction": "client_to_server",
	"kind": "request",
	"method": "ping",
	"id": 1,
	"params": {},
	"tool": null,
	"result": null,
	"error": null,
	"request": null,
	"resources": {"paths": [], "urls": []},
	"protocol": {"era": "2025-11-25", "version": "2025-11-25"},
	"transport": "stdio",
	"server": {
		"name": "test-server",
		"command": ["test-server"],
		"url": null,
		"info": null,
		"capabilities": null,
		"roots": [],
	},
	"client": {"info": {"name": "test-client", "version": "1.0"}, "capabilities": {}},
	"session": {"id": "test-session"},
	"findings": {},
	"identity": null,
	"rate": null,
	"registry": null,
}

# A client -> server request.
request(method, params) := object.union(base, {"method": method, "params": params})

# A server -> client request (sampling, elicitation, roots/list, ping).
server_request(method, params) := object.union(request(method, params), {"direction": "server_to_client"})

# A notification; notifications carry no id.
notification(direction, method, params) := object.remove(
	object.union(base, {"direction": direction, "kind": "notification", "method": method, "params": params}),
	["id"],
)

# A tools/call request from the client.
tool_call(name, arguments) := object.union(
	request("tools/call", {"name": name, "arguments": arguments}),
	{"tool": {"name": name, "arguments": arguments}},
)

# The server's response to a tools/call request.
tool_result(name, arguments, result) := object.union(base, {
	"direction": "server_to_client",
	"kind": "response",
	"method": "tools/call",
	"params": null,
	"tool": {"name": name, "arguments": arguments},
	"result": result,
	"request": {"method": "tools/call", "params": {"name": name, "arguments": arguments}},
})

# A response to a request of `method`, sent in `direction`.
response(direction, method, result) := object.union(base, {
	"direction": direction,
	"kind": "response",
	"method": method,
	"params": null,
	"result": result,
	"request": {"method": method, "params": {}},
})

# An error response from the server.
error_response(method, error) := object.union(base, {
	"direction": "server_to_client",
	"kind": "error_response",
	"method": method,
	"params": null,
	"error": error,
	"request": {"method": method, "params": {}},
})

# `inp` with the given file arguments (PathRef objects).
with_paths(inp, refs) := object.union(inp, {"resources": {"paths": refs, "urls": []}})

# `inp` for a server with the given configured roots.
with_roots(inp, roots) := object.union(inp, {"server": {"roots": roots}})

# A PathRef as the firewall produces it; `pointer` points into the message.
path_ref(pointer, raw, canonical) := {"pointer": pointer, "raw": raw, "canonical": canonical}

# A file tool call reading `canonical` (given as `raw`) on a server with `roots`.
file_call(raw, canonical, roots) := with_roots(
	with_paths(tool_call("read_file", {"path": raw}), [path_ref("/params/arguments/path", raw, canonical)]),
	roots,
)

# The decision for `inp`.
decide(inp) := decision if {
	decision := data.mcpfw.decision with input as inp
}

# The reason codes of the decision for `inp`.
codes(inp) := {reason.code | some reason in decide(inp).reasons}

# Whether `inp` is allowed without any reason.
clean_allow(inp) if {
	decision := decide(inp)
	decision.allow == true
	count(decision.reasons) == 0
	count(decision.redact) == 0
}
