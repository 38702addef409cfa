/**
 * The last `hblsp/compileResult` per config, shared by the status bar and the table panel
 * (no `vscode` import: the extension and the Node tests use the same store).
 */

import { CompileResult } from './protocol';

export type Listener = (result: CompileResult) => void;

export class ResultStore {
  private readonly byUri = new Map<string, CompileResult>();
  private readonly listeners = new Set<Listener>();

  get(uri: string): CompileResult | undefined {
    return this.byUri.get(uri);
  }

  /** Keep a result unless an older version of the same config arrives after a newer one. */
  put(result: CompileResult): boolean {
    const known = this.byUri.get(result.uri);
    if (known && typeof known.version === 'number' && typeof result.version === 'number' && result.version < known.version) {
      return false;
    }
    this.byUri.set(result.uri, result);
    for (const listener of [...this.listeners]) {
      listener(result);
    }
    return true;
  }

  clear(): void {
    this.byUri.clear();
  }

  onDidChange(listener: Listener): { dispose(): void } {
    this.listeners.add(listener);
    return { dispose: () => this.listeners.delete(listener) };
  }
}
