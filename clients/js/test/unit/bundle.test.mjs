// The size gate: the shipped module, minified and gzipped, stays under 8 KiB, and the build
// fails when it would not.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

test("dist/index.js is one ES module under 8 KiB gzipped, exporting createClient and toEip1193", async () => {
  const js = readFileSync(join(root, "dist/index.js"));
  const gz = gzipSync(js, { level: 9 }).length;
  assert.ok(gz <= 8192, `${gz} bytes gzipped`);
  assert.deepEqual(
    JSON.parse(readFileSync(join(root, "dist/size.json"), "utf8")),
    {
      minified: js.length,
      gzipped: gz,
      budget: 8192,
    },
  );
  const mod = await import(join(root, "dist/index.js"));
  assert.equal(typeof mod.createClient, "function");
  assert.equal(typeof mod.toEip1193, "function");
  const dts = readFileSync(join(root, "dist/index.d.ts"), "utf8");
  assert.match(dts, /createClient/);
  assert.match(dts, /toEip1193/);
});

test("the build fails above the budget", () => {
  const out = mkdtempSync(join(tmpdir(), "wsrpc-build-"));
  try {
    const r = spawnSync(
      process.execPath,
      [join(root, "scripts/build.mjs"), "--outdir", out],
      {
        env: { ...process.env, WSRPC_BUNDLE_BUDGET: "1024" },
        encoding: "utf8",
      },
    );
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.match(r.stderr, /over budget/);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
