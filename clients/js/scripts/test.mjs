// npm test: build (with the size gate), type-check, format check, then the unit tests and
// the end-to-end tests in Chromium against the real servers, in one test-runner run.
import { execFileSync } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const run = (args) =>
  execFileSync(process.execPath, args, { cwd: root, stdio: "inherit" });
run([join(root, "scripts/build.mjs")]);
run([
  join(root, "node_modules/typescript/bin/tsc"),
  "-p",
  "tsconfig.json",
  "--noEmit",
]);
run([join(root, "node_modules/prettier/bin/prettier.cjs"), "--check", "."]);
const only = process.argv.slice(2);
try {
  run([
    "--test",
    "--test-concurrency=1",
    // A hung test fails with its name instead of holding the run forever.
    "--test-timeout=120000",
    ...(only.length ? only : ["test/unit/", "test/e2e/"]),
  ]);
} catch (e) {
  process.exit(e.status ?? 1);
}
