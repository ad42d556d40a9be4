// Unit tests of the client on a virtual clock with in-memory sockets.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  ClientError,
  createClient,
  expandPorts,
  RpcError,
} from "../../dist/index.js";
import { FakeClock, World } from "./fakes.mjs";

const URL1 = "ws://127.0.0.1:9001/";

function setup(options = {}, world = new World()) {
  const clock = new FakeClock();
  const states = [];
  const client = createClient({
    url: URL1,
    WebSocket: world.WebSocket,
    timers: clock.timers,
    storage: null,
    fetch: undefined,
    heartbeat: false,
    random: () => 0.5,
    ...options,
  });
  client.on("state", (s) => states.push({ ...s, at: clock.time }));
  return { clock, world, client, states };
}

test("full-jitter backoff: delays are random(0, min(max, min * 2^n))", async () => {
  for (const r of [0.5, 0.999, 0.001]) {
    const world = new World();
    const { clock } = setup({ random: () => r, http: false }, world);
    const opened = [];
    world.behave = () => (opened.push(clock.time), "refuse");
    await clock.advance(0);
    while (opened.length < 10) await clock.advance(Math.max(1, r * 30000));
    const gaps = opened.slice(1).map((t, i) => t - opened[i]);
    gaps.forEach((gap, i) => {
      const cap = Math.min(30000, 1000 * 2 ** i);
      assert.equal(
        gap,
        r * cap,
        `attempt ${i + 1}: ${gap} ms, bound ${cap} ms`,
      );
    });
  }
});

test("the heartbeat detects a silent server within interval + timeout", async () => {
  const world = new World();
  const { clock, client, states } = setup(
    { heartbeat: { everyMs: 1000, timeoutMs: 400 } },
    world,
  );
  await clock.advance(10);
  assert.equal(client.state, "open");
  // Answering: never declared dead.
  await clock.advance(10000);
  assert.equal(client.state, "open");
  const stoppedAt = clock.time;
  world.silent = true;
  await clock.advance(1400);
  const lost = states.find((s) => s.state === "reconnecting");
  assert.ok(lost, "detected");
  assert.ok(
    lost.at - stoppedAt <= 1400,
    `detected after ${lost.at - stoppedAt} ms`,
  );
  assert.match(lost.error.message, /heartbeat/);
  client.close();
});

test("requests fail with 'disconnected' when the connection drops, and are never re-sent", async () => {
  const world = new World();
  const { clock, client } = setup({}, world);
  await clock.advance(1);
  const p = client.request("eth_sendTransaction", [{ to: "0x1" }]);
  await clock.advance(1);
  assert.equal(world.calls(0).length, 1);
  world.sockets[0].drop();
  await assert.rejects(
    p,
    (e) => e instanceof ClientError && e.kind === "disconnected",
  );
  await clock.advance(2000);
  assert.equal(client.state, "open");
  assert.equal(world.sockets.length, 2);
  assert.deepEqual(world.calls(1), [], "nothing re-sent on the new connection");
  // A call made while reconnecting waits and is sent once the connection is back.
  world.sockets[1].drop();
  world.onMessage = (m) => ({ jsonrpc: "2.0", id: m.id, result: 7 });
  const later = client.request("eth_blockNumber");
  await clock.advance(2000);
  assert.equal(await later, 7);
  client.close();
});

test("-32005 surfaces retry_after_ms; timeouts and aborts are typed", async () => {
  const world = new World();
  world.onMessage = (m) =>
    m.method === "slow"
      ? undefined
      : {
          jsonrpc: "2.0",
          id: m.id,
          error: {
            code: -32005,
            message: "Limit exceeded: sensitive calls",
            data: { retry_after_ms: 750 },
          },
        };
  const { clock, client } = setup({}, world);
  await clock.advance(1);
  await assert.rejects(client.request("eth_sendTransaction", []), (e) => {
    assert.ok(e instanceof RpcError);
    assert.equal(e.code, -32005);
    assert.equal(e.retryAfterMs, 750);
    assert.deepEqual(e.data, { retry_after_ms: 750 });
    return true;
  });
  const slow = client.request("slow", [], { timeoutMs: 300 });
  const check = assert.rejects(slow, (e) => e.kind === "timeout");
  await clock.advance(301);
  await check;
  const ac = new AbortController();
  const aborted = client.request("slow", [], { signal: ac.signal });
  ac.abort();
  await assert.rejects(aborted, (e) => e.kind === "aborted");
  client.close();
  await assert.rejects(client.request("x"), (e) => e.kind === "closed");
});

test("batches map answers by id, errors included", async () => {
  const world = new World();
  world.onMessage = (batch) =>
    batch
      .slice()
      .reverse()
      .map((m) =>
        m.method === "missing"
          ? {
              jsonrpc: "2.0",
              id: m.id,
              error: { code: -32601, message: "Method not found" },
            }
          : { jsonrpc: "2.0", id: m.id, result: m.params[0] * 2 },
      );
  const { clock, client } = setup({}, world);
  await clock.advance(1);
  const out = await client.batch([
    { method: "double", params: [1] },
    { method: "missing" },
    { method: "double", params: [5] },
  ]);
  assert.deepEqual(out[0], { result: 2 });
  assert.equal(out[1].error.code, -32601);
  assert.deepEqual(out[2], { result: 10 });
  client.close();
});

function pubsubWorld(epoch) {
  const world = new World();
  world.health = {
    status: "ok",
    name: "wsrpc",
    pubsub: {
      subscribe: "subscribe",
      unsubscribe: "unsubscribe",
      notification: "subscription",
      lagged: "lagged",
      gap: "gap",
      eth_style: false,
      epoch,
    },
  };
  world.epoch = epoch;
  world.top = 5;
  world.nextId = () => "0x1";
  world.onMessage = (m) =>
    m.method === "subscribe"
      ? {
          jsonrpc: "2.0",
          id: m.id,
          result: {
            subscription: world.nextId(),
            topic: m.params.topic,
            seq: world.top,
            epoch: world.epoch,
          },
        }
      : { jsonrpc: "2.0", id: m.id, result: true };
  return world;
}
const note = (seq, result = seq) => ({
  jsonrpc: "2.0",
  method: "subscription",
  params: { subscription: "0x1", topic: "prices", seq, result },
});

test("subscriptions drop duplicates by seq and resume with since after a drop", async () => {
  const world = pubsubWorld(111);
  const { clock, client } = setup({}, world);
  const got = [];
  const resets = [];
  client.on("reset", (r) => resets.push(r));
  const sub = await (async () => {
    const p = client.subscribe("prices", (v, meta) => got.push([v, meta.seq]));
    await clock.advance(1);
    return p;
  })();
  assert.deepEqual(sub.position, { epoch: 111, seq: 5 });
  const s0 = world.sockets[0];
  for (const seq of [6, 7, 7, 5, 8]) s0.push(note(seq));
  assert.deepEqual(
    got.map(([v]) => v),
    [6, 7, 8],
    "duplicates and old ones dropped",
  );
  s0.drop();
  world.top = 10;
  await clock.advance(1000);
  const again = world.calls(1).find((m) => m.method === "subscribe");
  assert.deepEqual(again.params, { topic: "prices", since: 8, epoch: 111 });
  const s1 = world.sockets[1];
  for (const seq of [8, 9, 10, 11]) s1.push(note(seq));
  assert.deepEqual(
    got.map(([v]) => v),
    [6, 7, 8, 9, 10, 11],
    "no gap, no duplicate",
  );
  assert.deepEqual(resets, []);
  assert.deepEqual(sub.position, { epoch: 111, seq: 11 });
  // The server restarted: another epoch is a reset, and its numbers start over.
  s1.drop();
  world.epoch = 222;
  world.top = 2;
  await clock.advance(1000);
  assert.deepEqual(resets, [
    { topic: "prices", epoch: 222, previousEpoch: 111 },
  ]);
  for (const seq of [1, 2]) world.sockets[2].push(note(seq, `new-${seq}`));
  assert.deepEqual(
    got.slice(-2).map(([v]) => v),
    ["new-1", "new-2"],
  );
  assert.deepEqual(sub.position, { epoch: 222, seq: 2 });
  // gap and lagged notices become events.
  const gaps = [];
  client.on("gap", (g) => gaps.push(g));
  world.sockets[2].push({
    jsonrpc: "2.0",
    method: "gap",
    params: {
      subscription: "0x1",
      topic: "prices",
      missed_from: 3,
      missed_to: 9,
    },
  });
  assert.deepEqual(gaps, [
    { topic: "prices", subscription: "0x1", from: 3, to: 9 },
  ]);
  assert.equal(await sub.unsubscribe(), true);
  client.close();
});

test("a subscription given since resumes from it; eth-style servers get [topic, {since, epoch}]", async () => {
  const world = pubsubWorld(5);
  world.health.pubsub = {
    ...world.health.pubsub,
    subscribe: "eth_subscribe",
    notification: "eth_subscription",
    eth_style: true,
  };
  world.onMessage = (m) => ({
    jsonrpc: "2.0",
    id: m.id,
    result: { subscription: "0x9", topic: "newHeads", seq: 40, epoch: 5 },
  });
  const { clock, client } = setup({}, world);
  const p = client.subscribe("newHeads", () => {}, {
    since: { epoch: 5, seq: 31 },
  });
  await clock.advance(1);
  const sub = await p;
  const sent = world.calls(0)[0];
  assert.equal(sent.method, "eth_subscribe");
  assert.deepEqual(sent.params, ["newHeads", { since: 31, epoch: 5 }]);
  assert.deepEqual(sub.position, { epoch: 5, seq: 31 });
  client.close();
});

test("filtered subscriptions send their filter on every (re)subscription and are not merged", async () => {
  const world = pubsubWorld(7);
  let next = 0;
  world.nextId = () => `0x${(++next).toString(16)}`;
  world.top = 3;
  const { clock, client } = setup({}, world);
  const big = [];
  const all = [];
  const subs = Promise.all([
    client.subscribe("sizes", (v) => big.push(v), { filter: { min: 10 } }),
    client.subscribe("sizes", (v) => all.push(v)),
  ]);
  await clock.advance(1);
  const [sBig, sAll] = await subs;
  const sent = world.calls(0).filter((m) => m.method === "subscribe");
  assert.deepEqual(
    sent.map((m) => m.params),
    [
      { topic: "sizes", since: null, epoch: null, filter: { min: 10 } },
      { topic: "sizes", since: null, epoch: null },
    ],
  );
  assert.notEqual(sBig.id, sAll.id, "one server subscription each");
  const push = (sub, seq, result) =>
    world.sockets.at(-1).push({
      jsonrpc: "2.0",
      method: "subscription",
      params: { subscription: sub, topic: "sizes", seq, result },
    });
  push(sBig.id, 5, 12);
  push(sAll.id, 4, 3);
  push(sAll.id, 5, 12);
  assert.deepEqual([big, all], [[12], [3, 12]]);
  // After a drop, the renewal carries the filter and the position.
  world.sockets[0].drop();
  await clock.advance(1000);
  const again = world.calls(1).filter((m) => m.method === "subscribe");
  assert.deepEqual(
    again.map((m) => m.params),
    [
      { topic: "sizes", since: 5, epoch: 7, filter: { min: 10 } },
      { topic: "sizes", since: 5, epoch: 7 },
    ],
  );
  client.close();
});

test("a refused origin or token stops reconnecting and says why", async () => {
  for (const status of [403, 401]) {
    const world = new World();
    world.behave = () => "refuse";
    const fetched = [];
    const fetch = async (url, init) => {
      fetched.push([url, init?.method ?? "GET"]);
      return new Response("refused\n", { status });
    };
    const errors = [];
    const { clock, client } = setup({ fetch, token: "t k" }, world);
    client.on("error", (e) => errors.push(e));
    await clock.advance(600000);
    assert.equal(client.state, "closed");
    assert.equal(world.sockets.length, 1, "one attempt, no storm");
    assert.deepEqual(fetched, [["http://127.0.0.1:9001/?token=t%20k", "GET"]]);
    assert.equal(errors.length, 1);
    assert.equal(errors[0].kind, status === 403 ? "forbidden" : "unauthorized");
    assert.equal(errors[0].status, status);
    await assert.rejects(client.request("x"), (e) => e.status === status);
  }
});

test("HTTP fallback: upgrade refused but POST answers", async () => {
  const world = new World();
  world.behave = () => "refuse";
  const posts = [];
  const fetch = async (url, init) => {
    if (!init?.method)
      return new Response("use a WebSocket upgrade\n", { status: 426 });
    const msg = JSON.parse(init.body);
    posts.push([url, init.headers.Authorization, msg]);
    const result =
      msg.method === "rpc.health"
        ? { status: "ok", name: "wsrpc" }
        : msg.params[0] - msg.params[1];
    return new Response(
      JSON.stringify({ jsonrpc: "2.0", id: msg.id, result }),
      { status: 200 },
    );
  };
  const { clock, client, states } = setup({ fetch, token: "abc" }, world);
  await clock.advance(1);
  assert.equal(client.state, "open");
  assert.equal(client.transport, "http");
  assert.deepEqual(states.at(-1).transport, "http");
  assert.equal(await client.request("subtract", [42, 23]), 19);
  assert.deepEqual(posts.at(-1).slice(0, 2), [
    "http://127.0.0.1:9001/",
    "Bearer abc",
  ]);
  await assert.rejects(
    client.subscribe("t", () => {}),
    (e) => e.kind === "unavailable",
  );
  // The WebSocket is tried again in the background, and taken when it opens.
  world.behave = () => "open";
  await clock.advance(2000);
  assert.equal(client.transport, "ws");
  client.close();
});

test("discovery accepts a port only on the right name, and tries the remembered port first", async () => {
  const world = new World();
  const names = { 9001: "other", 9003: "wallet" };
  world.behave = (url) =>
    new URL(url).port in names
      ? "open"
      : url.endsWith(":9004/")
        ? "hang"
        : "refuse";
  const base = world.WebSocket;
  world.health = undefined;
  const store = new Map();
  const storage = {
    getItem: (k) => store.get(k) ?? null,
    setItem: (k, v) => store.set(k, v),
  };
  const W = class extends base {
    send(text) {
      const msg = JSON.parse(text);
      if (msg.method === "rpc.health") {
        this.sent.push(msg);
        const name = names[new URL(this.url).port];
        queueMicrotask(() =>
          this.push({ jsonrpc: "2.0", id: 0, result: { status: "ok", name } }),
        );
        return;
      }
      super.send(text);
    }
  };
  const opts = {
    url: undefined,
    WebSocket: W,
    storage,
    discover: { ports: [9000, 9005], probeTimeoutMs: 500 },
    name: "wallet",
  };
  const { clock, client } = setup(opts, world);
  await clock.advance(600);
  assert.equal(client.state, "open");
  assert.equal(client.url, "ws://127.0.0.1:9003/");
  assert.equal(client.server.name, "wallet");
  assert.equal([...store.values()][0], "9003");
  client.close();
  const before = world.sockets.length;
  const second = setup(opts, world);
  await second.clock.advance(10);
  assert.equal(
    world.sockets[before].url,
    "ws://127.0.0.1:9003/",
    "remembered port first",
  );
  assert.equal(second.client.url, "ws://127.0.0.1:9003/");
  second.client.close();
});

test("port specs expand to ranges and lists", () => {
  assert.deepEqual(expandPorts([8766, 8769]), [8766, 8767, 8768, 8769]);
  assert.deepEqual(expandPorts([[1, 2], 5, [4, 5]]), [1, 2, 5, 4]);
});

test("the browser's online event cuts a long backoff short", async () => {
  const target = new EventTarget();
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
  try {
    const world = new World();
    world.behave = () => "refuse";
    const { clock, client } = setup(
      { random: () => 0.999, http: false },
      world,
    );
    await clock.advance(1000 + 2000 + 4000); // three failures: the next wait is up to 8 s
    const before = world.sockets.length;
    await clock.advance(100);
    assert.equal(world.sockets.length, before, "waiting");
    world.behave = () => "open";
    target.dispatchEvent(new Event("online"));
    await clock.advance(1);
    assert.equal(world.sockets.length, before + 1, "tried at once");
    assert.equal(client.state, "open");
    client.close();
    target.dispatchEvent(new Event("online"));
    await clock.advance(60000);
    assert.equal(
      world.sockets.length,
      before + 1,
      "a closed client stays closed",
    );
  } finally {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  }
});

test("at a given URL, a server with another name is reported and not used", async () => {
  const world = new World();
  world.health = { status: "ok", name: "someone-else" };
  const { clock, client } = setup({ name: "wallet", http: false }, world);
  const errors = [];
  client.on("error", (e) => errors.push(e));
  await clock.advance(5000);
  assert.notEqual(client.state, "open");
  assert.ok(errors.length >= 1);
  assert.equal(errors[0].kind, "identity");
  client.close();
});

test("a subscription waiting for the connection is told when only HTTP comes up", async () => {
  const world = new World();
  world.behave = () => "refuse";
  const fetch = async (_url, init) =>
    init?.method
      ? new Response(
          JSON.stringify({
            jsonrpc: "2.0",
            id: 0,
            result: { status: "ok", name: "wsrpc" },
          }),
        )
      : new Response("", { status: 426 });
  const { clock, client } = setup({ fetch }, world);
  const waiting = assert.rejects(
    client.subscribe("t", () => {}),
    (e) => e.kind === "unavailable",
  );
  await clock.advance(1);
  await waiting;
  assert.equal(client.transport, "http");
  client.close();
});

test("a broker's reset and stalled notices become events, and a renewal refused for now is asked again", async () => {
  const world = pubsubWorld(111);
  const { clock, client } = setup({}, world);
  const got = [];
  const resets = [];
  const stalls = [];
  client.on("reset", (r) => resets.push(r));
  client.on("stalled", (s) => stalls.push(s));
  const sub = await (async () => {
    const p = client.subscribe("prices", (v, meta) => got.push(meta.seq));
    await clock.advance(1);
    return p;
  })();
  const s0 = world.sockets[0];
  s0.push(note(6));
  s0.push({
    jsonrpc: "2.0",
    method: "lagged",
    params: {
      subscription: "0x1",
      topic: "prices",
      missed_from: 7,
      broker: "down",
    },
  });
  assert.deepEqual(stalls, [{ topic: "prices", subscription: "0x1", from: 7 }]);
  s0.push({
    jsonrpc: "2.0",
    method: "reset",
    params: { subscription: "0x1", topic: "prices", epoch: 333 },
  });
  assert.deepEqual(resets, [
    { topic: "prices", epoch: 333, previousEpoch: 111 },
  ]);
  s0.push(note(1));
  assert.deepEqual(got, [6, 1], "numbers start over after the reset");
  assert.deepEqual(sub.position, { epoch: 333, seq: 1 });
  // The connection drops; the broker is down, so the renewal is refused for now.
  let refuse = 2;
  const answer = world.onMessage;
  world.onMessage = (m) =>
    m.method === "subscribe" && refuse-- > 0
      ? {
          jsonrpc: "2.0",
          id: m.id,
          error: { code: -32002, message: "broker unavailable" },
        }
      : answer(m);
  s0.drop();
  world.epoch = 333;
  world.top = 1;
  const renewals = () =>
    world.sockets
      .flatMap((_, i) => world.calls(i))
      .filter((m) => m.method === "subscribe");
  // When each renewal went out, on the virtual clock.
  const before = renewals().length;
  const times = [];
  for (let step = 0; step < 100 && times.length < 3; step++) {
    await clock.advance(100);
    while (renewals().length - before > times.length) times.push(clock.time);
  }
  assert.equal(times.length, 3, "refused twice, then accepted");
  assert.ok(
    times[1] - times[0] >= 1000,
    `asked again after ${times[1] - times[0]} ms`,
  );
  assert.ok(
    times[2] - times[1] >= 2 * (times[1] - times[0]) - 100,
    `the delay doubles: ${times}`,
  );
  world.sockets.at(-1).push(note(2));
  assert.deepEqual(got, [6, 1, 2], "the subscription was kept at its position");
  client.close();
});
