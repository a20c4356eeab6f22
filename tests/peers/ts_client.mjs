// A scripted client built on the official TypeScript MCP SDK, used by the tests to drive a
// server through the firewall. Usage: node ts_client.mjs PLAN_JSON -- COMMAND [ARGS...]
// PLAN_JSON: {"calls": [{"tool": name, "arguments": {...}, "task": bool}], "capabilities": {...}}
// A call with "task": true runs as a task (SEP-1686): tools/call with a task, then
// tasks/get and tasks/result, as the SDK's callToolStream does them.
// Prints one JSON document: {"tools": [...], "results": [...], "server": {...}}.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { CreateMessageRequestSchema, ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

const sep = process.argv.indexOf("--");
const plan = JSON.parse(process.argv[2]);
const [command, ...args] = process.argv.slice(sep + 1);

const client = new Client(
  { name: "mcpfw-ts-test-client", version: "1.0.0" },
  { capabilities: { sampling: {}, elicitation: {} } },
);
const seen = { sampling: [], elicitation: [] };
client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
  seen.sampling.push(request.params);
  return { model: "test-model", role: "assistant", content: { type: "text", text: "sampled by the TS client" } };
});
client.setRequestHandler(ElicitRequestSchema, async (request) => {
  seen.elicitation.push(request.params.message);
  return { action: "accept", content: { name: "Ada Lovelace", check: true } };
});

const transport = new StdioClientTransport({ command, args, stderr: "inherit" });
await client.connect(transport);
const out = { server: client.getServerVersion(), protocol: transport.protocolVersion ?? null, tools: [], results: [], seen };
out.tools = (await client.listTools()).tools.map((t) => t.name);
for (const call of plan.calls ?? []) {
  try {
    if (call.task) {
      const stream = client.experimental.tasks.callToolStream(
        { name: call.tool, arguments: call.arguments ?? {}, task: { ttl: 60000 } });
      const steps = [];
      let entry = { ok: false, error: { code: null, message: "no terminal message", data: null } };
      for await (const message of stream) {
        steps.push(message.type);
        if (message.type === "result") entry = { ok: !message.result.isError, result: message.result };
        if (message.type === "error") {
          const err = message.error;
          entry = { ok: false, error: { code: err.code ?? null, message: String(err.message ?? err), data: err.data ?? null } };
        }
      }
      out.results.push({ ...entry, steps });
      continue;
    }
    const result = await client.callTool({ name: call.tool, arguments: call.arguments ?? {} });
    out.results.push({ ok: !result.isError, result });
  } catch (err) {
    out.results.push({ ok: false, error: { code: err.code ?? null, message: String(err.message ?? err), data: err.data ?? null } });
  }
}
await client.close();
process.stdout.write(JSON.stringify(out) + "\n");
