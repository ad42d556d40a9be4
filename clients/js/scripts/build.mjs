// Builds dist/index.js (one minified ES module) and its declarations, and fails when the
// module, minified and gzipped, is larger than the budget.
//   node scripts/build.mjs [--outdir DIR]
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { build } from "esbuild";

// WSRPC_BUNDLE_BUDGET lowers the budget, for the test that the gate fails the build.
export const BUDGET_BYTES = Number(process.env.WSRPC_BUNDLE_BUDGET ?? 8 * 1024);

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const at = process.argv.indexOf("--outdir");
const outdir = resolve(at > 0 ? process.argv[at + 1] : join(root, "dist"));

rmSync(outdir, { recursive: true, force: true });
mkdirSync(outdir, { recursive: true });
const result = await build({
  entryPoints: [join(root, "src/index.ts")],
  bundle: true,
  format: "esm",
  platform: "neutral",
  target: "es2022",
  minify: true,
  legalComments: "none",
  write: false,
});
const js = result.outputFiles[0].contents;
writeFileSync(join(outdir, "index.js"), js);
execFileSync(
  process.execPath,
  [
    join(root, "node_modules/typescript/bin/tsc"),
    "-p",
    join(root, "tsconfig.json"),
    "--emitDeclarationOnly",
    "--outDir",
    outdir,
  ],
  { stdio: "inherit" },
);
const gz = gzipSync(js, { level: 9 }).length;
writeFileSync(
  join(outdir, "size.json"),
  JSON.stringify({ minified: js.length, gzipped: gz, budget: BUDGET_BYTES }) +
    "\n",
);
console.log(
  `dist/index.js: ${js.length} bytes minified, ${gz} bytes gzipped (budget ${BUDGET_BYTES})`,
);
if (gz > BUDGET_BYTES) {
  console.error(`bundle over budget: ${gz} > ${BUDGET_BYTES} bytes gzipped`);
  process.exit(1);
}
