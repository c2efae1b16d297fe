// Validates an AsyncAPI document with the reference parser (@asyncapi/parser, its
// schema and its Spectral rules) and prints each diagnostic as one JSON line:
// {"severity": "error"|"warning"|"info"|"hint", "code", "message", "path"}.
// Exit status 0 when the document parses without an error, 1 otherwise, 2 on misuse.
//
//   node scripts/validate-asyncapi.js ../docs/asyncapi.yaml
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";

import { DiagnosticSeverity, Parser } from "@asyncapi/parser";

const SEVERITY = {
  [DiagnosticSeverity.Error]: "error",
  [DiagnosticSeverity.Warning]: "warning",
  [DiagnosticSeverity.Information]: "info",
  [DiagnosticSeverity.Hint]: "hint",
};

const [file] = process.argv.slice(2);
if (!file) {
  console.error("usage: node scripts/validate-asyncapi.js <asyncapi.yaml>");
  process.exit(2);
}
const source = resolve(file);
const { document, diagnostics } = await new Parser().parse(await readFile(source, "utf8"), {
  source,
});
for (const d of diagnostics) {
  const line = {
    severity: SEVERITY[d.severity],
    code: d.code,
    message: d.message,
    path: d.path.join("/"),
  };
  console.log(JSON.stringify(line));
}
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
process.exit(document === undefined || errors.length > 0 ? 1 : 0);
