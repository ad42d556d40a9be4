// The EIP-1193 provider over a client on in-memory sockets: payload shapes and error codes.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  ClientError,
  createClient,
  ProviderRpcError,
  RpcError,
  toEip1193,
  toProviderError,
} from "../../dist/index.js";
import { FakeClock, World } from "./fakes.mjs";

test("errors map to EIP-1193 codes", () => {
  assert.equal(
    toProviderError(new RpcError(-32601, "Method not found")).code,
    4200,
  );
  assert.equal(
    toProviderError(new RpcError(4001, "User rejected the request.")).code,
    4001,
  );
  assert.equal(
    toProviderError(new RpcError(-32005, "Limit", { retry_after_ms: 5 })).data
      .retry_after_ms,
    5,
  );
  assert.equal(
    toProviderError(new ClientError("forbidden", "no", 403)).code,
    4100,
  );
  assert.equal(
    toProviderError(new ClientError("unauthorized", "no", 401)).code,
    4100,
  );
  assert.equal(
    toProviderError(new ClientError("disconnected", "gone")).code,
    4900,
  );
  assert.ok(
    toProviderError(new ClientError("timeout", "slow")) instanceof
      ProviderRpcError,
  );
});

test("connect, message, chainChanged, accountsChanged and disconnect payloads", async () => {
  const clock = new FakeClock();
  const world = new World();
  world.health = {
    status: "ok",
    name: "w",
    pubsub: {
      subscribe: "eth_subscribe",
      unsubscribe: "eth_unsubscribe",
      notification: "eth_subscription",
      lagged: "l",
      gap: "g",
      eth_style: true,
      epoch: 1,
    },
  };
  const ids = {
    newHeads: "0xa",
    chainChanged: "0xb",
    accountsChanged: "0xc",
    logs: "0xd",
  };
  world.onMessage = (m) => {
    const r = (result) => ({ jsonrpc: "2.0", id: m.id, result });
    if (m.method === "eth_chainId") return r("0x1");
    if (m.method === "eth_accounts") return r(["0xabc"]);
    if (m.method === "eth_subscribe")
      return r({
        subscription: ids[m.params[0]],
        topic: m.params[0],
        seq: 0,
        epoch: 1,
      });
    if (m.method === "eth_unsubscribe") return r(true);
    return {
      jsonrpc: "2.0",
      id: m.id,
      error: { code: -32601, message: "Method not found" },
    };
  };
  const client = createClient({
    url: "ws://127.0.0.1:1/",
    WebSocket: world.WebSocket,
    timers: clock.timers,
    storage: null,
    heartbeat: false,
    random: () => 0.5,
  });
  const provider = toEip1193(client);
  const events = [];
  for (const ev of [
    "connect",
    "disconnect",
    "chainChanged",
    "accountsChanged",
    "message",
  ])
    provider.on(ev, (p) => events.push([ev, p]));
  await clock.advance(5);
  assert.deepEqual(events, [["connect", { chainId: "0x1" }]]);
  assert.equal(provider.isConnected(), true);
  assert.deepEqual(
    await Promise.all([
      provider.request({ method: "eth_accounts" }),
      clock.advance(1),
    ]).then(([a]) => a),
    ["0xabc"],
  );
  const subP = provider.request({
    method: "eth_subscribe",
    params: ["newHeads"],
  });
  await clock.advance(1);
  const id = await subP;
  const push = (sub, seq, result) =>
    world.sockets[0].push({
      jsonrpc: "2.0",
      method: "eth_subscription",
      params: { subscription: sub, topic: "x", seq, result },
    });
  push("0xa", 1, { number: "0x10" });
  push("0xb", 1, "0xaa36a7");
  push("0xc", 1, []);
  assert.deepEqual(events.slice(1), [
    [
      "message",
      {
        type: "eth_subscription",
        data: { subscription: id, result: { number: "0x10" } },
      },
    ],
    ["chainChanged", "0xaa36a7"],
    ["accountsChanged", []],
  ]);
  // A log filter reaches the server (with the resume keys), so the server filters.
  const logsP = provider.request({
    method: "eth_subscribe",
    params: ["logs", { address: "0xa0b8", topics: [null, "0x01"] }],
  });
  await clock.advance(1);
  await logsP;
  const logsSent = world.sockets[0].sent.find(
    (m) => m.method === "eth_subscribe" && m.params[0] === "logs",
  );
  assert.deepEqual(logsSent.params, [
    "logs",
    { address: "0xa0b8", topics: [null, "0x01"], since: null, epoch: null },
  ]);
  const failed = assert.rejects(
    provider.request({ method: "eth_nope" }),
    (e) => e instanceof ProviderRpcError && e.code === 4200,
  );
  await clock.advance(1);
  await failed;
  world.sockets[0].drop();
  await clock.advance(1);
  const [ev, err] = events.at(-1);
  assert.equal(ev, "disconnect");
  assert.ok(err instanceof ProviderRpcError);
  assert.equal(err.code, 4900);
  const unsub = provider.request({ method: "eth_unsubscribe", params: [id] });
  await clock.advance(2000);
  assert.equal(await unsub, true);
  assert.equal(
    events.filter(([e]) => e === "connect").length,
    2,
    "connect again after the reconnect",
  );
  client.close();
});
