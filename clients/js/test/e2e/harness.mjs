// End-to-end harness: the real wsrpc example servers as child processes, Debian's Chromium
// driven by playwright-core, a page server for the built bundle, and decoys and proxies.
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const pkgRoot = resolve(
  dirname(fileURLToPath(import.meta.url)),
  "../..",
);
export const repoRoot = resolve(pkgRoot, "../..");
export const RANGE = [8766, 8800];
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const CHROMIUM = process.env.WSRPC_CHROMIUM ?? "/usr/bin/chromium";

/** The example binaries, built with cargo unless WSRPC_EXAMPLES_DIR points at them. */
export function binaries() {
  const dir =
    process.env.WSRPC_EXAMPLES_DIR ?? join(repoRoot, "target/debug/examples");
  const wallet = join(dir, "wallet_bridge");
  const spec = join(dir, "spec_server");
  if (!process.env.WSRPC_EXAMPLES_DIR) {
    execFileSync(
      "cargo",
      [
        "build",
        "-q",
        "-p",
        "wsrpc-examples",
        "--example",
        "wallet_bridge",
        "--example",
        "spec_server",
      ],
      { cwd: repoRoot, stdio: "inherit" },
    );
  }
  for (const b of [wallet, spec])
    if (!existsSync(b)) throw new Error(`missing ${b}`);
  return { wallet, spec };
}

/** A child server process; `port` once it said where it listens. */
export async function startServer(bin, args) {
  const child = spawn(bin, args, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: "warn" },
  });
  let out = "";
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  const port = await new Promise((ok, fail) => {
    const timer = setTimeout(
      () => fail(new Error(`${bin} did not start: ${err}`)),
      15000,
    );
    child.stdout.on("data", (d) => {
      out += d;
      const m =
        out.match(/^port (\d+)$/m) ?? out.match(/^listening on [^:]+:(\d+)$/m);
      if (m) {
        clearTimeout(timer);
        ok(Number(m[1]));
      }
    });
    child.on("exit", (code) =>
      fail(new Error(`${bin} exited ${code}: ${err}`)),
    );
  });
  return {
    port,
    child,
    signal: (sig) => child.kill(sig),
    async kill() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const gone = new Promise((r) => child.once("exit", r));
      child.kill("SIGKILL");
      await gone;
    },
  };
}

export const startWallet = (bins, port, ...extra) =>
  startServer(bins.wallet, ["--port", String(port), ...extra]);
export const startSpec = (bins, port, ...extra) =>
  startServer(bins.spec, ["--port", String(port), ...extra]);

/** A free port on 127.0.0.1 outside the discovery range (the OS picks it). */
export function anyFreePort() {
  return new Promise((ok, fail) => {
    const s = net.createServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/**
 * Tries to listen on `port`; the server, or undefined when something else holds it. Its
 * `close` also ends the connections it holds (a silent decoy keeps the browser's probes open,
 * and a plain `close` would wait for them forever).
 */
export function hold(
  port,
  server = net.createServer((s) => s.on("error", () => {})),
) {
  const sockets = new Set();
  server.on("connection", (s) => {
    sockets.add(s);
    s.once("close", () => sockets.delete(s));
  });
  const close = server.close.bind(server);
  server.close = (cb) => {
    for (const s of sockets) s.destroy();
    return close(cb);
  };
  return new Promise((ok) => {
    server.once("error", () => ok(undefined));
    server.listen(port, "127.0.0.1", () => ok(server));
  });
}

/** Ports of the discovery range that nothing holds now. */
export async function freeRangePorts() {
  const free = [];
  for (let p = RANGE[0]; p <= RANGE[1]; p++) {
    const s = await hold(p);
    if (s) {
      free.push(p);
      await new Promise((r) => s.close(r));
    }
  }
  return free;
}

/** The server's metrics, read over HTTP without an Origin (as a monitor would). */
export async function metrics(port) {
  const r = await fetch(`http://127.0.0.1:${port}/`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: '{"jsonrpc":"2.0","id":1,"method":"rpc.metrics"}',
  });
  return (await r.json()).result;
}

/** Serves the bundle and an empty page that loads it into `window.lib`. */
export async function pageServer() {
  const bundle = readFileSync(join(pkgRoot, "dist/index.js"));
  const page =
    '<!doctype html><meta charset="utf-8"><title>e2e</title><script type="module">' +
    'window.lib = await import("/dist/index.js"); window.ready = true;</script>';
  const server = http.createServer((req, res) => {
    if (req.url === "/dist/index.js") {
      res.writeHead(200, { "content-type": "text/javascript" });
      return res.end(bundle);
    }
    res.writeHead(200, { "content-type": "text/html" });
    res.end(page);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { port: server.address().port, close: () => server.close() };
}

/** Chromium with `evil.test` resolving to 127.0.0.1 (a page from a disallowed origin). */
export async function launch() {
  if (!existsSync(CHROMIUM))
    throw new Error(`no browser at ${CHROMIUM} (scripts/install-chromium.sh)`);
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--host-resolver-rules=MAP evil.test 127.0.0.1",
    ],
  });
}

/** A new page of `browser` at `origin` with the bundle loaded. */
export async function openPage(browser, origin) {
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e));
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => window.ready === true);
  return page;
}

/** Waits until `fn()` is truthy, polling; fails after `ms`. */
export async function until(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** A TCP proxy to `target` that can be cut (connections dropped, port closed) and restored. */
export async function tcpProxy(target, port = 0) {
  const sockets = new Set();
  let server;
  const listen = () =>
    new Promise((ok) => {
      server = net.createServer((client) => {
        const upstream = net.connect(target, "127.0.0.1");
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on("error", () => {});
          s.on("close", () => sockets.delete(s));
        }
        client.pipe(upstream).pipe(client);
      });
      server.listen(port, "127.0.0.1", () => {
        port = server.address().port;
        ok();
      });
    });
  await listen();
  return {
    get port() {
      return port;
    },
    async cut() {
      await new Promise((r) => {
        server.close(r);
        for (const s of sockets) s.destroy();
      });
    },
    restore: listen,
    close() {
      server.close();
      for (const s of sockets) s.destroy();
    },
  };
}

/** An HTTP proxy that forwards requests to `target` but refuses WebSocket upgrades, like a
 * middlebox that does not pass them. */
export async function noUpgradeProxy(target) {
  const server = http.createServer((req, res) => {
    const up = http.request(
      {
        host: "127.0.0.1",
        port: target,
        method: req.method,
        path: req.url,
        headers: req.headers,
      },
      (r) => {
        res.writeHead(r.statusCode, r.headers);
        r.pipe(res);
      },
    );
    up.on("error", () => res.destroy());
    req.pipe(up);
  });
  server.on("upgrade", (_req, socket) => {
    socket.end(
      "HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { port: server.address().port, close: () => server.close() };
}

/** Listeners that are not wsrpc: an HTTP server (404), a silent TCP listener, and a
 * WebSocket server that echoes, in turn. Returns undefined when the port is taken. */
export async function decoy(port, kind) {
  if (kind === "silent")
    return hold(
      port,
      net.createServer((s) => s.on("error", () => {})),
    );
  const server = http.createServer((_req, res) => {
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not here\n");
  });
  server.on("upgrade", (req, socket) => {
    socket.on("error", () => {});
    if (kind === "http")
      return socket.end("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    const accept = createHash("sha1")
      .update(
        req.headers["sec-websocket-key"] +
          "258EAFA5-E914-47DA-95CA-C5AB0DC85B11",
      )
      .digest("base64");
    socket.write(
      `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
    );
    // Echo text frames back unmasked (payloads under 126 bytes are enough for a probe).
    socket.on("data", (buf) => {
      if (buf.length < 6 || (buf[0] & 0x0f) !== 1 || (buf[1] & 0x7f) > 125)
        return;
      const len = buf[1] & 0x7f;
      const mask = buf.subarray(2, 6);
      const data = Buffer.from(
        buf.subarray(6, 6 + len).map((b, i) => b ^ mask[i % 4]),
      );
      socket.write(Buffer.concat([Buffer.from([0x81, len]), data]));
    });
  });
  return hold(port, server);
}
