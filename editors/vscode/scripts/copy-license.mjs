// Copies the repository's LICENSE into the extension for vsce, so it is not duplicated in git (the copy is ignored).
// The config schema is not contributed to the Red Hat YAML extension (`yamlValidation`): hblsp validates the same
// files, and yaml-language-server's second copy of every problem (and its YAML 1.2 reading of `debug: yes` as a
// string) disagreed with hb_compile.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const extension = join(dirname(fileURLToPath(import.meta.url)), '..');
const license = join(extension, '..', '..', 'LICENSE');
writeFileSync(join(extension, 'LICENSE'), readFileSync(license, 'utf8'));
console.log(`copied ${license} -> ${join(extension, 'LICENSE')}`);
