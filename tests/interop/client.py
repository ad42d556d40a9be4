#!/usr/bin/env python3
"""Interop check with Python `websockets`: calls, a batch and a subscription.

usage: client.py WS_URL [compressed]  (the server publishes to "interop" when asked with the
`publish` call). With `compressed`, also checks that permessage-deflate was negotiated (the
default of `websockets`) and makes a large call and a subscription with large notifications.
A wss:// URL is verified against the CA certificate in the PEM file named by $WSRPC_CA.
Prints one line per check and exits non-zero on the first failure.
"""
import asyncio
import json
import os
import ssl
import sys

import websockets


async def main(url, compressed):
    tls = None
    if url.startswith("wss://"):
        tls = ssl.create_default_context(cafile=os.environ["WSRPC_CA"])
    async with websockets.connect(url, max_size=2**24, ssl=tls) as ws:
        inbox = []  # messages read while waiting for a response, for later readers

        async def call(method, params, id_):
            await ws.send(json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": id_}))
            while True:
                msg = json.loads(await ws.recv())
                if isinstance(msg, dict) and msg.get("id") == id_:
                    return msg
                inbox.append(msg)

        async def next_message():
            return inbox.pop(0) if inbox else json.loads(await ws.recv())

        r = await call("add", [2, 3], 1)
        assert r == {"jsonrpc": "2.0", "result": 5, "id": 1}, r
        print("python: call ok")

        await ws.send(json.dumps([
            {"jsonrpc": "2.0", "method": "add", "params": [1, 1], "id": "a"},
            {"jsonrpc": "2.0", "method": "add", "params": [2, 2]},
            {"jsonrpc": "2.0", "method": "nope", "id": "b"},
        ]))
        batch = json.loads(await ws.recv())
        assert isinstance(batch, list) and len(batch) == 2, batch
        by_id = {r["id"]: r for r in batch}
        assert by_id["a"]["result"] == 2 and by_id["b"]["error"]["code"] == -32601, batch
        print("python: batch ok")

        r = await call("subscribe", ["interop"], 2)
        sub = r["result"]["subscription"]
        r = await call("publish", ["interop", 3], 3)
        assert r["result"] == 3, r
        seqs = []
        while len(seqs) < 3:
            msg = await next_message()
            if msg.get("method") == "subscription":
                assert msg["params"]["subscription"] == sub, msg
                seqs.append(msg["params"]["seq"])
        assert seqs == [1, 2, 3], seqs
        print("python: subscription ok")

        if compressed:
            names = [e.name for e in ws.protocol.extensions]
            assert names == ["permessage-deflate"], names
            big = {"rows": [{"price": 40000 + i, "qty": 1.5, "side": "buy"} for i in range(200)]}
            r = await call("echo", big, 10)
            assert r["result"] == big, r
            print("python: compressed call ok")
            r = await call("subscribe", ["interop-big"], 11)
            sub = r["result"]["subscription"]
            await call("publish", ["interop-big", 2, 100], 12)
            notes = []
            while len(notes) < 2:
                msg = await next_message()
                if msg.get("method") == "subscription" and msg["params"]["subscription"] == sub:
                    notes.append(msg["params"])
            assert [n["seq"] for n in notes] == [1, 2], notes
            assert all(len(n["result"]["rows"]) == 100 for n in notes), notes
            print("python: compressed subscription ok")
        await ws.close()


asyncio.run(main(sys.argv[1], sys.argv[2:] == ["compressed"]))
