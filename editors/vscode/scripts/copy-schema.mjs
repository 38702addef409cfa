// Copies the repository's one config schema into the extension for `yamlValidation`, and the
// repository's LICENSE for vsce, so neither is duplicated in git (both copies are ignored). Fails loudly when
// the source is missing or is not JSON: a .vsix without its schema must not be built.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const extension = join(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(extension, '..', '..', 'schemas', 'hb_compile.schema.json');
const target = join(extension, 'schemas', 'hb_compile.schema.json');

const text = readFileSync(source, 'utf8');
const schema = JSON.parse(text);
if (typeof schema !== 'object' || schema === null || typeof schema.properties !== 'object') {
  throw new Error(`${source}: not a JSON Schema with properties`);
}
mkdirSync(dirname(target), { recursive: true });
writeFileSync(target, text);
console.log(`copied ${source} -> ${target}`);

const license = join(extension, '..', '..', 'LICENSE');
writeFileSync(join(extension, 'LICENSE'), readFileSync(license, 'utf8'));
console.log(`copied ${license} -> ${join(extension, 'LICENSE')}`);
