#!/usr/bin/env python3
"""A JSON-RPC echo server on Python `websockets` (permessage-deflate on, its default), for
checking wsrpc's compressing client against an independent server.

usage: server.py  -> prints "listening PORT", then for each connection the extensions it
negotiated ("extensions permessage-deflate ...") and serves `echo` until stdin closes.
"""
import asyncio
import json
import sys

import websockets


async def handler(ws):
    names = [e.name for e in ws.protocol.extensions]
    print("extensions", " ".join(names) or "none", flush=True)
    async for message in ws:
        req = json.loads(message)
        if req.get("method") == "echo":
            await ws.send(json.dumps({"jsonrpc": "2.0", "result": req.get("params"), "id": req["id"]}))
        elif "id" in req:
            await ws.send(json.dumps({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": req["id"]}))


async def main():
    async with websockets.serve(handler, "127.0.0.1", 0, max_size=2**24) as server:
        port = server.sockets[0].getsockname()[1]
        print("listening", port, flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)


asyncio.run(main())
