// Validate an AsyncAPI document with the official parser (@asyncapi/parser): the
// AsyncAPI JSON Schema of its version, reference resolution and the parser's own rules.
// Prints every diagnostic; exits 1 on any error or warning, 0 otherwise.
import { Parser, fromFile } from '@asyncapi/parser';

const path = process.argv[2];
if (!path) {
  console.error('usage: node validate.mjs ASYNCAPI_FILE');
  process.exit(2);
}
const severities = ['error', 'warning', 'info', 'hint'];
const { document, diagnostics } = await fromFile(new Parser(), path).parse();
let failed = document === undefined;
for (const d of diagnostics) {
  if (d.severity <= 1) failed = true;
  console.log(`${severities[d.severity]} ${d.code} at /${d.path.join('/')}: ${d.message}`);
}
console.log(failed ? `${path}: invalid` : `${path}: valid AsyncAPI ${document.version()}`);
process.exit(failed ? 1 : 0);
