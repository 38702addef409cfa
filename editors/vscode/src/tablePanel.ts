/**
 * The similarity table in a webview beside the config. It renders `table.ts`'s page for one
 * config's last result and renders again when a newer result arrives or a header is clicked.
 */

import { randomBytes } from 'crypto';
import * as path from 'path';
import * as vscode from 'vscode';
import { ResultStore } from './results';
import { MODEL_ORDER, SortState, isSortKey, nextSort, renderPage } from './table';

export class TablePanel implements vscode.Disposable {
  private panel: vscode.WebviewPanel | undefined;
  private shown: string | undefined;
  private sort: SortState = MODEL_ORDER;
  private readonly subscription: vscode.Disposable;

  constructor(private readonly results: ResultStore) {
    this.subscription = results.onDidChange((result) => {
      if (this.panel && result.uri === this.shown) {
        this.render();
      }
    });
  }

  /** The config the open panel shows. */
  get uri(): string | undefined {
    return this.panel ? this.shown : undefined;
  }

  show(uri: string): void {
    if (!this.panel) {
      this.panel = vscode.window.createWebviewPanel('hbcompile.similarity', 'hb_compile similarity',
        { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true },
        { enableScripts: true, localResourceRoots: [] });
      this.panel.onDidDispose(() => {
        this.panel = undefined;
      });
      this.panel.webview.onDidReceiveMessage((message: { type?: unknown; key?: unknown }) => {
        if (message?.type === 'sort' && isSortKey(message.key)) {
          this.sort = nextSort(this.sort, message.key);
          this.render();
        }
      });
    }
    if (uri !== this.shown) {
      this.sort = MODEL_ORDER;
    }
    this.shown = uri;
    this.render();
    this.panel.reveal(undefined, true);
  }

  private render(): void {
    if (!this.panel || !this.shown) {
      return;
    }
    const name = path.basename(vscode.Uri.parse(this.shown).fsPath);
    this.panel.title = `Similarity: ${name}`;
    this.panel.webview.html = renderPage(this.results.get(this.shown), {
      nonce: randomBytes(16).toString('base64'),
      sort: this.sort,
      title: `hb_compile similarity — ${name}`,
    });
  }

  dispose(): void {
    this.subscription.dispose();
    this.panel?.dispose();
  }
}
