"""HTTP-family transports (Streamable HTTP, legacy SSE, WebSocket) in front of remote MCP servers."""
