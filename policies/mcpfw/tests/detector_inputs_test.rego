# Package mcpfw_test.detector_inputs builds policy inputs carrying detector
# findings for the injection, poisoning, intent and pii tests.
package mcpfw_test.detector_inputs

base := {
	"version": 1,
	"direction": "client_to_server",
	"kind": "request",
	"method": "ping",
	"id": 7,
	"params": {},
	"tool": null,
	"result": null,
	"error": null,
	"request": null,
	"resources": {"paths": [], "urls": []},
	"protocol": {"era": "2025-11-25", "version": "2025-11-25"},
	"transport": "stdio",
	"server": {"name": "srv", "command": ["srv"], "url": null, "info": null, "capabilities": null, "roots": []},
	"client": {"info": {"name": "agent", "version": "1"}, "capabilities": {}},
	"session": {"id": "s1"},
	"findings": {},
	"identity": null,
	"rate": null,
	"registry": null,
}

tool_call(name, arguments, findings) := object.union(base, {
	"method": "tools/call",
	"params": {"name": name, "arguments": arguments},
	"tool": {"name": name, "arguments": arguments},
	"findings": findings,
})

response(method, result, findings) := object.union(base, {
	"direction": "server_to_client",
	"kind": "response",
	"method": method,
	"params": null,
	"result": result,
	"request": {"method": method, "params": {}},
	"findings": findings,
})

tool_result(name, result, findings) := object.union(response("tools/call", result, findings), {"tool": {"name": name, "arguments": {}}})

decide(inp) := d if {
	d := data.mcpfw.decision with input as inp
}

tags(inp) := {o.tag | some o in decide(inp).obligations; o.type == "tag"}

codes(inp) := {r.code | some r in decide(inp).reasons}
