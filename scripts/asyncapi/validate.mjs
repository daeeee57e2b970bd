// Parse and validate an AsyncAPI document with @asyncapi/parser (schema + the AsyncAPI ruleset).
// Usage: node scripts/asyncapi/validate.mjs docs/asyncapi.yaml
// Prints one line per diagnostic; exits 1 on any error (or on warnings with --strict).
import { Parser, fromFile } from "@asyncapi/parser";

const args = process.argv.slice(2);
const strict = args.includes("--strict");
const path = args.find((a) => !a.startsWith("--"));
if (!path) {
  console.error("usage: validate.mjs [--strict] FILE");
  process.exit(2);
}
const names = ["error", "warning", "info", "hint"];
const { document, diagnostics } = await fromFile(new Parser(), path).parse();
for (const d of diagnostics) {
  const where = (d.path || []).join(".");
  console.log(`${names[d.severity] ?? d.severity}: ${d.code}: ${d.message} at ${where}`);
}
const errors = diagnostics.filter((d) => d.severity === 0).length;
const warnings = diagnostics.filter((d) => d.severity === 1).length;
if (document) {
  console.log(`parsed: asyncapi ${document.version()}, ${document.channels().length} channels, ` +
    `${document.operations().length} operations, ${document.messages().length} messages; ` +
    `${errors} errors, ${warnings} warnings`);
}
process.exit(!document || errors > 0 || (strict && warnings > 0) ? 1 : 0);
