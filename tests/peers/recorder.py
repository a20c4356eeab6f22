"""A probe that stands where an MCP server would and writes every line it receives, byte
for byte, to the file named by its first argument; it answers each request with an empty
result so that clients keep going. Used to prove the firewall forwards allowed bytes unchanged."""

import json
import sys

with open(sys.argv[1], "ab", buffering=0) as log:
    for line in sys.stdin.buffer:
        log.write(line)
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        items = msg if isinstance(msg, list) else [msg]
        replies = [
            {"jsonrpc": "2.0", "id": m["id"], "result": {"echo": m.get("params")}}
            for m in items
            if isinstance(m, dict) and "method" in m and "id" in m
        ]
        if replies:
            out = replies if isinstance(msg, list) else replies[0]
            sys.stdout.buffer.write(json.dumps(out).encode() + b"\n")
            sys.stdout.buffer.flush()
