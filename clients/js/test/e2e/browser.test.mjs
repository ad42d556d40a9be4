// The built bundle in Debian's Chromium against the real wallet_bridge and spec_server.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  anyFreePort,
  binaries,
  decoy,
  freeRangePorts,
  launch,
  metrics,
  noUpgradeProxy,
  openPage,
  pageServer,
  sleep,
  startSpec,
  startWallet,
  tcpProxy,
  until,
} from "./harness.mjs";

const ACCOUNT = "0x9f2c4b1e6d0a7c3b5e8f1a2d4c6b8e0f1a3c5d7e";
// The wallet_bridge example's two tokens: each block has one log of each.
const TOKEN = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48";
const OTHER_TOKEN = "0x6b175474e89094c44da98b954eedeac495271d0f";
let bins;
let browser;
let pages;
const cleanup = [];

before(async () => {
  bins = binaries();
  browser = await launch();
  pages = await pageServer();
});

after(async () => {
  for (const c of cleanup.reverse()) await c();
  await browser?.close();
  pages?.close();
});

async function wallet(...extra) {
  const s = await startWallet(bins, await anyFreePort(), ...extra);
  cleanup.push(() => s.kill());
  return s;
}

const page = () => openPage(browser, `http://127.0.0.1:${pages.port}`);

/** Runs in the page: a client on `url` that records states, events and attempt times. */
function install(options) {
  return async (p) =>
    p.evaluate((o) => {
      const t0 = performance.now();
      window.events = [];
      window.attempts = [];
      window.sent = [];
      const Base = WebSocket;
      const Counting = class extends Base {
        constructor(u) {
          super(u);
          window.attempts.push(performance.now() - t0);
        }
        send(text) {
          window.sent.push(JSON.parse(text).method);
          super.send(text);
        }
      };
      window.c = window.lib.createClient({ ...o, WebSocket: Counting });
      for (const ev of ["state", "gap", "lagged", "reset", "error"])
        window.c.on(ev, (x) =>
          window.events.push({
            ev,
            at: performance.now() - t0,
            x:
              x instanceof Error
                ? { kind: x.kind, status: x.status, message: x.message }
                : x,
          }),
        );
      window.now = () => performance.now() - t0;
    }, options);
}

const waitOpen = (p, transport = "ws") =>
  p.waitForFunction(
    (t) => window.c.state === "open" && window.c.transport === t,
    transport,
    {
      timeout: 20000,
    },
  );

test("request, batch, notify and error mapping against spec_server", async () => {
  const spec = await startSpec(bins, await anyFreePort());
  cleanup.push(() => spec.kill());
  const p = await page();
  await install({ url: `ws://127.0.0.1:${spec.port}/` })(p);
  await waitOpen(p);
  const out = await p.evaluate(async () => {
    const c = window.c;
    const err = (e) => ({
      name: e.name,
      code: e.code,
      message: e.message,
      data: e.data,
    });
    return {
      server: c.server,
      subtract: await c.request("subtract", [42, 23]),
      named: await c.request("subtract", { subtrahend: 23, minuend: 42 }),
      batch: (
        await c.batch([
          { method: "sum", params: [1, 2, 4] },
          { method: "foo.get", params: { name: "myself" } },
          { method: "get_data" },
        ])
      ).map((e) => (e.error ? { error: err(e.error) } : e)),
      notify: await c.notify("notify_hello", [7]),
      missing: await c.request("nope").catch(err),
      badParams: await c.request("subtract", ["a"]).catch(err),
    };
  });
  assert.equal(out.server.name, "wsrpc");
  assert.equal(out.subtract, 19);
  assert.equal(out.named, 19);
  assert.deepEqual(out.batch[0], { result: 7 });
  assert.equal(out.batch[1].error.code, -32601);
  assert.deepEqual(out.batch[2], { result: ["hello", 5] });
  assert.equal(out.notify, undefined);
  assert.equal(out.missing.name, "RpcError");
  assert.equal(out.missing.code, -32601);
  assert.equal(out.badParams.code, -32602);
  await p.close();
});

test("-32005 carries retry_after_ms to the caller", async () => {
  const w = await wallet();
  const p = await page();
  await install({ url: `ws://127.0.0.1:${w.port}/` })(p);
  await waitOpen(p);
  const errors = await p.evaluate(async (account) => {
    const tx = [{ from: account, to: account, value: "0x1" }];
    const settle = (pr) =>
      pr.then(
        () => null,
        (e) => ({ code: e.code, retryAfterMs: e.retryAfterMs, data: e.data }),
      );
    return Promise.all(
      [1, 2, 3].map(() => settle(window.c.request("eth_sendTransaction", tx))),
    );
  }, ACCOUNT);
  const limited = errors.filter(Boolean);
  assert.ok(limited.length >= 1, "the signing class allows 1/s");
  for (const e of limited) {
    assert.equal(e.code, -32005);
    assert.ok(
      e.retryAfterMs > 0 && e.retryAfterMs <= 1000,
      `retryAfterMs ${e.retryAfterMs}`,
    );
    assert.equal(e.data.retry_after_ms, e.retryAfterMs);
  }
  await p.close();
});

test("EIP-1193: eth_subscribe('logs', filter) gets only the logs the filter matches", async () => {
  const w = await wallet("--block-ms", "100");
  const p = await page();
  await install({ url: `ws://127.0.0.1:${w.port}/` })(p);
  await waitOpen(p);
  const out = await p.evaluate(async (token) => {
    const pr = window.lib.toEip1193(window.c);
    const got = {};
    pr.on("message", (m) =>
      (got[m.data.subscription] ??= []).push(m.data.result.address),
    );
    const mine = await pr.request({
      method: "eth_subscribe",
      params: ["logs", { address: token }],
    });
    const all = await pr.request({ method: "eth_subscribe", params: ["logs"] });
    await new Promise((r) => setTimeout(r, 700));
    return { mine: got[mine] ?? [], all: got[all] ?? [] };
  }, TOKEN);
  assert.ok(out.mine.length >= 2, `filtered logs arrived (${out.mine.length})`);
  assert.deepEqual([...new Set(out.mine)], [TOKEN]);
  assert.deepEqual([...new Set(out.all)].sort(), [OTHER_TOKEN, TOKEN].sort());
  await p.close();
  await w.kill();
});

test("EIP-1193: connect, message, chainChanged, accountsChanged, disconnect and error codes", async () => {
  const w = await wallet("--block-ms", "200");
  const p = await page();
  await install({
    url: `ws://127.0.0.1:${w.port}/`,
    backoff: { minMs: 200, maxMs: 1000 },
  })(p);
  await p.evaluate(() => {
    window.pevents = [];
    window.provider = window.lib.toEip1193(window.c);
    for (const ev of [
      "connect",
      "disconnect",
      "chainChanged",
      "accountsChanged",
      "message",
    ])
      window.provider.on(ev, (x) =>
        window.pevents.push({
          ev,
          x:
            x instanceof Error
              ? { name: x.name, code: x.code, message: x.message }
              : x,
        }),
      );
  });
  await p.waitForFunction(
    () => window.pevents.some((e) => e.ev === "connect"),
    null,
    { timeout: 20000 },
  );
  const out = await p.evaluate(async () => {
    const pr = window.provider;
    const err = (e) => ({ name: e.name, code: e.code });
    const id = await pr.request({
      method: "eth_subscribe",
      params: ["newHeads"],
    });
    await new Promise((r) => setTimeout(r, 700));
    const accounts = await pr.request({ method: "eth_accounts" });
    await pr.request({
      method: "wallet_switchEthereumChain",
      params: [{ chainId: "0xaa36a7" }],
    });
    await pr.request({
      method: "wallet_revokePermissions",
      params: [{ eth_accounts: {} }],
    });
    const afterRevoke = await pr.request({ method: "eth_accounts" });
    await pr.request({ method: "eth_requestAccounts" });
    // Chain switching is a signing-class call: one per second.
    await new Promise((r) => setTimeout(r, 1100));
    return {
      id,
      accounts,
      afterRevoke,
      unknown: await pr.request({ method: "eth_notAMethod" }).catch(err),
      unknownChain: await pr
        .request({
          method: "wallet_switchEthereumChain",
          params: [{ chainId: "0x5" }],
        })
        .catch(err),
      unsubscribed: await pr.request({
        method: "eth_unsubscribe",
        params: [id],
      }),
      connected: pr.isConnected(),
    };
  });
  const events = await p.evaluate(() => window.pevents);
  assert.deepEqual(events[0], { ev: "connect", x: { chainId: "0x1" } });
  const messages = events.filter((e) => e.ev === "message");
  assert.ok(messages.length >= 2, `newHeads arrived (${messages.length})`);
  for (const m of messages) {
    assert.equal(m.x.type, "eth_subscription");
    assert.equal(m.x.data.subscription, out.id);
    assert.match(m.x.data.result.number, /^0x[0-9a-f]+$/);
  }
  assert.deepEqual(out.accounts, [ACCOUNT]);
  assert.deepEqual(out.afterRevoke, []);
  assert.deepEqual(
    events.filter((e) => e.ev === "chainChanged").map((e) => e.x),
    ["0xaa36a7"],
  );
  assert.deepEqual(
    events.filter((e) => e.ev === "accountsChanged").map((e) => e.x),
    [[], [ACCOUNT]],
  );
  assert.deepEqual(out.unknown, { name: "ProviderRpcError", code: 4200 });
  assert.equal(out.unknownChain.code, 4902);
  assert.equal(out.unsubscribed, true);
  assert.equal(out.connected, true);
  await w.kill();
  await p.waitForFunction(
    () => window.pevents.some((e) => e.ev === "disconnect"),
    null,
    { timeout: 10000 },
  );
  const disconnect = (await p.evaluate(() => window.pevents)).find(
    (e) => e.ev === "disconnect",
  );
  assert.deepEqual(disconnect.x, {
    name: "ProviderRpcError",
    code: 4900,
    message: "The Provider is disconnected from all chains.",
  });
  await p.close();
});

test("EIP-1193: a user's rejection passes through as 4001", async () => {
  const w = await wallet("--reject");
  const p = await page();
  await install({ url: `ws://127.0.0.1:${w.port}/` })(p);
  const e = await p.evaluate(async (account) => {
    const pr = window.lib.toEip1193(window.c);
    return pr
      .request({ method: "personal_sign", params: ["0x68656c6c6f", account] })
      .catch((x) => ({ name: x.name, code: x.code, message: x.message }));
  }, ACCOUNT);
  assert.deepEqual(e, {
    name: "ProviderRpcError",
    code: 4001,
    message: "User rejected the request.",
  });
  await p.close();
});

/** Seqs delivered per epoch, in order. */
const collect = (p, topic) =>
  p.evaluate(async (t) => {
    window.got = [];
    window.sub = await window.c.subscribe(t, (value, meta) =>
      window.got.push({ seq: meta.seq, epoch: meta.epoch, value }),
    );
    return window.sub.position;
  }, topic);

function assertContiguous(got, what) {
  for (let i = 1; i < got.length; i++) {
    if (got[i].epoch !== got[i - 1].epoch) continue;
    assert.equal(
      got[i].seq,
      got[i - 1].seq + 1,
      `${what}: ${got[i - 1].seq} then ${got[i].seq}`,
    );
  }
}

test("a dropped connection to the same server resumes with no gap and no duplicate; calls in flight fail and are not re-sent", async () => {
  const w = await wallet("--block-ms", "100");
  const proxy = await tcpProxy(w.port);
  cleanup.push(() => proxy.close());
  const p = await page();
  await install({
    url: `ws://127.0.0.1:${proxy.port}/`,
    backoff: { minMs: 300, maxMs: 2000 },
  })(p);
  await waitOpen(p);
  const start = await collect(p, "newHeads");
  await sleep(600);
  const inflight = p.evaluate(
    (account) =>
      window.c
        .request("eth_sendTransaction", [{ from: account, to: account }])
        .then(
          () => "answered",
          (e) => e.kind,
        ),
    ACCOUNT,
  );
  await sleep(50);
  await proxy.cut();
  assert.equal(await inflight, "disconnected");
  const before = await p.evaluate(() => window.got.length);
  await sleep(1500); // blocks published meanwhile, within the replay window
  await proxy.restore();
  await waitOpen(p);
  await sleep(800);
  const got = await p.evaluate(() => window.got);
  const events = await p.evaluate(() => window.events);
  assert.ok(
    got.length > before + 15,
    `blocks published while down were replayed (${before} → ${got.length})`,
  );
  assert.equal(got[0].seq, start.seq + 1, "from the subscription's position");
  assert.ok(got.every((g) => g.epoch === start.epoch));
  assertContiguous(got, "across the drop");
  assert.deepEqual(
    new Set(got.map((g) => g.seq)).size,
    got.length,
    "no duplicate",
  );
  assert.ok(!events.some((e) => e.ev === "reset" || e.ev === "gap"));
  const sent = await p.evaluate(() => window.sent);
  assert.equal(
    sent.filter((m) => m === "eth_sendTransaction").length,
    1,
    "the interrupted call was not re-sent",
  );
  await p.close();
});

test("kill and restart the server: reconnect within the backoff bounds, reset on the new epoch, no gap, no duplicate", async () => {
  const port = await anyFreePort();
  let w = await startWallet(bins, port, "--block-ms", "100");
  const backoff = { minMs: 400, maxMs: 1600 };
  const p = await page();
  await install({ url: `ws://127.0.0.1:${port}/`, backoff })(p);
  await waitOpen(p);
  const start = await collect(p, "newHeads");
  await sleep(500);
  await w.kill();
  const killedAt = await p.evaluate(() => window.now());
  const attemptsBefore = await p.evaluate(() => window.attempts.length);
  await sleep(3000); // down: attempts back off
  w = await startWallet(bins, port, "--block-ms", "100");
  cleanup.push(() => w.kill());
  const restartedAt = await p.evaluate(() => window.now());
  await waitOpen(p);
  await sleep(600);
  const { got, events, attempts } = await p.evaluate(() => ({
    got: window.got,
    events: window.events,
    attempts: window.attempts,
  }));
  // Attempts after the loss: each within its full-jitter bound of the previous one.
  const lostAt = events.find(
    (e) => e.ev === "state" && e.x.state === "reconnecting",
  ).at;
  assert.ok(lostAt - killedAt < 1000, "the loss is seen at once");
  const tries = [lostAt, ...attempts.slice(attemptsBefore)];
  const slack = 500; // timer and process scheduling on a busy machine
  for (let i = 1; i < tries.length; i++) {
    const bound = Math.min(backoff.maxMs, backoff.minMs * 2 ** (i - 1));
    assert.ok(
      tries[i] - tries[i - 1] <= bound + slack,
      `attempt ${i}: ${tries[i] - tries[i - 1]} ms > ${bound}`,
    );
  }
  const openedAt = events
    .filter((e) => e.ev === "state" && e.x.state === "open")
    .at(-1).at;
  assert.ok(
    openedAt - restartedAt <= backoff.maxMs + 1000,
    `reconnected ${openedAt - restartedAt} ms after the restart`,
  );
  // A restarted server is a new epoch: the client says so, then takes its stream from seq 1.
  const resets = events.filter((e) => e.ev === "reset");
  assert.equal(resets.length, 1);
  assert.equal(resets[0].x.previousEpoch, start.epoch);
  assert.notEqual(resets[0].x.epoch, start.epoch);
  const fresh = got.filter((g) => g.epoch === resets[0].x.epoch);
  assert.equal(
    fresh[0].seq,
    1,
    "blocks the new server published before the reconnect were replayed",
  );
  assert.ok(fresh.length >= 5);
  assertContiguous(got, "restart");
  await p.close();
});

test("discovery: wsrpc on one port, decoys that are not wsrpc below it, found by identity", async () => {
  const free = await freeRangePorts();
  // The wsrpc port: 8790 when free, else the free port nearest to it; decoys take every free
  // port below it (other holders of the range, such as another test run, are left alone).
  const target = free.reduce((a, b) =>
    Math.abs(b - 8790) < Math.abs(a - 8790) ? b : a,
  );
  const below = free.filter((port) => port < target);
  const kinds = ["http", "silent", "echo"];
  const name = `wsrpc-e2e-${process.pid}`;
  let wrongName;
  for (const [i, port] of below.entries()) {
    if (i === 1) {
      wrongName = await startSpec(bins, port); // a wsrpc server with another name
      cleanup.push(() => wrongName.kill());
      continue;
    }
    const d = await decoy(port, kinds[i % kinds.length]);
    if (d) cleanup.push(() => new Promise((r) => d.close(r)));
  }
  const w = await startWallet(bins, target, "--name", name);
  cleanup.push(() => w.kill());
  const p = await page();
  await install({ discover: { host: "127.0.0.1", ports: [8766, 8800] }, name })(
    p,
  );
  await waitOpen(p);
  const found = await p.evaluate(() => ({
    url: window.c.url,
    server: window.c.server,
    remembered: Object.entries(localStorage),
    chain: null,
  }));
  assert.equal(found.url, `ws://127.0.0.1:${target}/`);
  assert.equal(found.server.name, name);
  assert.equal(found.server.port, target);
  assert.ok(
    found.remembered.some(([k, v]) => k.includes(name) && v === String(target)),
  );
  assert.equal(await p.evaluate(() => window.c.request("eth_chainId")), "0x1");
  await p.close();
});

test("upgrade refused but HTTP open: requests over HTTP, subscriptions unavailable", async () => {
  const spec = await startSpec(bins, await anyFreePort());
  cleanup.push(() => spec.kill());
  const proxy = await noUpgradeProxy(spec.port);
  cleanup.push(() => proxy.close());
  const p = await page();
  await install({
    url: `ws://127.0.0.1:${proxy.port}/`,
    backoff: { minMs: 1000, maxMs: 5000 },
  })(p);
  await waitOpen(p, "http");
  const out = await p.evaluate(async () => ({
    subtract: await window.c.request("subtract", [42, 23]),
    batch: (
      await window.c.batch([
        { method: "sum", params: [1, 2] },
        { method: "nope" },
      ])
    ).map((e) => (e.error ? { error: { code: e.error.code } } : e)),
    missing: await window.c.request("nope").catch((e) => e.code ?? e.message),
    subscribe: await window.c.subscribe("ticks", () => {}).catch((e) => e.kind),
  }));
  assert.equal(out.subtract, 19);
  assert.deepEqual(out.batch[0], { result: 3 });
  assert.equal(out.batch[1].error.code, -32601);
  assert.equal(out.missing, -32601);
  assert.equal(out.subscribe, "unavailable");
  assert.deepEqual(
    await p.evaluate(() => window.sent),
    [],
    "nothing went over a WebSocket",
  );
  const m = await metrics(spec.port);
  assert.ok(m.http_requests >= 4, "the calls reached the server over HTTP");
  await p.close();
});

test("disallowed origin: refused, the client says why, and no reconnect storm", async () => {
  const w = await wallet();
  const p = await openPage(browser, `http://evil.test:${pages.port}`);
  await install({
    url: `ws://127.0.0.1:${w.port}/`,
    backoff: { minMs: 100, maxMs: 400 },
  })(p);
  await p.waitForFunction(() => window.c.state === "closed", null, {
    timeout: 20000,
  });
  await sleep(3000); // a storm at this backoff would be dozens of attempts
  const { events, attempts, providerError } = await p.evaluate(async () => ({
    events: window.events,
    attempts: window.attempts.length,
    providerError: await window.lib
      .toEip1193(window.c)
      .request({ method: "eth_chainId" })
      .catch((e) => e.code),
  }));
  const error = events.find((e) => e.ev === "error");
  assert.equal(error.x.kind, "forbidden");
  assert.equal(error.x.status, 403);
  assert.equal(events.filter((e) => e.ev === "state").at(-1).x.state, "closed");
  assert.equal(providerError, 4100);
  assert.equal(attempts, 1, "one WebSocket attempt");
  const m = await metrics(w.port);
  // The refused upgrade and the one GET that read why (plus this metrics request).
  assert.equal(m.http_requests, 3, "two refused requests in all");
  assert.ok(m.errors.auth >= 2);
  await sleep(1500);
  assert.equal(
    (await metrics(w.port)).http_requests,
    4,
    "still two, plus the metrics reads",
  );
  await p.close();
});

test("a stopped server (SIGSTOP) is detected within heartbeat interval + timeout, and the client recovers", async () => {
  const w = await wallet();
  const p = await page();
  const heartbeat = { everyMs: 1000, timeoutMs: 1000 };
  await install({
    url: `ws://127.0.0.1:${w.port}/`,
    heartbeat,
    backoff: { minMs: 200, maxMs: 1000 },
    connectTimeoutMs: 1000,
  })(p);
  await waitOpen(p);
  await sleep(2500); // heartbeats answered: still open
  assert.equal(await p.evaluate(() => window.c.state), "open");
  w.signal("SIGSTOP");
  const stoppedAt = await p.evaluate(() => window.now());
  await p.waitForFunction(() => window.c.state === "reconnecting", null, {
    timeout: 10000,
  });
  const events = await p.evaluate(() => window.events);
  const lost = events.find(
    (e) => e.ev === "state" && e.x.state === "reconnecting",
  );
  const bound = heartbeat.everyMs + heartbeat.timeoutMs;
  assert.ok(
    lost.at - stoppedAt <= bound + 500,
    `detected after ${lost.at - stoppedAt} ms (bound ${bound})`,
  );
  assert.match(lost.x.error.message, /heartbeat/);
  w.signal("SIGCONT");
  await waitOpen(p);
  assert.equal(await p.evaluate(() => window.c.request("eth_chainId")), "0x1");
  await p.close();
});

test("wallet_bridge --demo serves a page that finds the wallet, calls it and shows newHeads", async () => {
  const w = await wallet("--demo", "--block-ms", "200");
  const p = await browser.newPage();
  const errors = [];
  p.on("pageerror", (e) => errors.push(e));
  await p.goto(`http://127.0.0.1:${w.port}/demo`);
  await p.waitForFunction(
    () => document.getElementById("state").textContent === "open (ws)",
    null,
    {
      timeout: 20000,
    },
  );
  await p.waitForFunction(
    () => /^0x/.test(document.getElementById("block").textContent),
    null,
    {
      timeout: 10000,
    },
  );
  await p.click("#accounts");
  await p.waitForFunction(() =>
    document
      .getElementById("log")
      .textContent.includes("← eth_requestAccounts"),
  );
  const page = await p.evaluate(() => ({
    server: document.getElementById("server").textContent,
    chain: document.getElementById("chain").textContent,
    log: document.getElementById("log").textContent,
  }));
  assert.equal(page.server, `ws://127.0.0.1:${w.port}/ (wsrpc-wallet-bridge)`);
  assert.equal(page.chain, "0x1");
  assert.match(page.log, /connect \{"chainId":"0x1"\}/);
  assert.deepEqual(errors, []);
  if (process.env.WSRPC_DEMO_SCREENSHOT)
    await p.screenshot({ path: process.env.WSRPC_DEMO_SCREENSHOT });
  await p.close();
});
