// A scripted client on the official TypeScript MCP SDK, over HTTP, SSE or WebSocket.
// Usage: node ts_http_client.mjs streamableHttp|sse|websocket URL PLAN_JSON
// PLAN_JSON: {"calls": [{"tool": name, "arguments": {...}}]}
// Prints one JSON document: {"server", "tools", "results", "seen"}.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { WebSocketClientTransport } from "@modelcontextprotocol/sdk/client/websocket.js";
import { CreateMessageRequestSchema, ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const [kind, url, planText] = process.argv.slice(2);
const plan = JSON.parse(planText ?? "{}");
const client = new Client(
  { name: "mcpfw-ts-http-client", version: "1.0.0" },
  { capabilities: { sampling: {}, elicitation: {} } },
);
const seen = { sampling: [], elicitation: [] };
client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
  seen.sampling.push(request.params.messages?.[0]?.content?.text ?? null);
  return { model: "test-model", role: "assistant", content: { type: "text", text: "sampled by the TS client" } };
});
client.setRequestHandler(ElicitRequestSchema, async (request) => {
  seen.elicitation.push(request.params.message);
  return { action: "accept", content: { username: "ada", email: "ada@example.com" } };
});

// MCPFW_TEST_BEARER: a bearer token (or API key) sent on every request, as a configured client would.
const bearer = process.env.MCPFW_TEST_BEARER;
const requestInit = bearer ? { headers: { Authorization: `Bearer ${bearer}` } } : undefined;
const transports = {
  streamableHttp: () => new StreamableHTTPClientTransport(new URL(url), { requestInit }),
  sse: () => new SSEClientTransport(new URL(url)),
  websocket: () => new WebSocketClientTransport(new URL(url)),
};
await client.connect(transports[kind]());
const out = { server: client.getServerVersion(), tools: [], results: [], seen };
out.tools = (await client.listTools()).tools.map((t) => t.name);
for (const call of plan.calls ?? []) {
  try {
    const result = await client.callTool({ name: call.tool, arguments: call.arguments ?? {} });
    out.results.push({ ok: !result.isError, content: result.content });
  } catch (err) {
    out.results.push({ ok: false, error: { code: err.code ?? null, message: String(err.message ?? err) } });
  }
}
await client.close();
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(0);
