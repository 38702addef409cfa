/**
 * The extension's settings, read in one place. Settings the server itself uses (`debounceMs`,
 * `checkFiles`, …) are not read here: the server pulls the `hblsp` section through
 * `workspace/configuration`, and the client tells it when the section changes.
 */

import * as vscode from 'vscode';
import { DEFAULT_FILE_PATTERNS } from './protocol';

export const SECTION = 'hblsp';

export interface ExtensionSettings {
  serverCommand: string[];
  filePatterns: string[];
}

function stringList(value: unknown): string[] | undefined {
  return Array.isArray(value) && value.every((v) => typeof v === 'string') ? [...value] : undefined;
}

export function readSettings(): ExtensionSettings {
  const config = vscode.workspace.getConfiguration(SECTION);
  return {
    serverCommand: stringList(config.get('server.command')) ?? [],
    filePatterns: stringList(config.get('filePatterns')) ?? [...DEFAULT_FILE_PATTERNS],
  };
}

/** Changes that need a new client: another server command or another document selector. */
export function needsRestart(event: vscode.ConfigurationChangeEvent): boolean {
  return event.affectsConfiguration(`${SECTION}.server`) || event.affectsConfiguration(`${SECTION}.filePatterns`);
}

/** The documents sent to hblsp: YAML files whose name matches a config pattern. */
export interface ConfigFilter {
  scheme: 'file';
  language: 'yaml';
  pattern: string;
}

export function documentSelector(patterns: readonly string[]): ConfigFilter[] {
  return patterns.map((pattern) => ({ scheme: 'file', language: 'yaml', pattern: `**/${pattern}` }));
}
