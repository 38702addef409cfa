/**
 * The status bar item for the active config: the running stage while hblsp compiles (click to
 * cancel), else the last output cosine (click for the table). Hidden for other files. It also
 * keeps the `hbcompile.isConfig` context key that puts the buttons on the editor title.
 */

import * as vscode from 'vscode';
import { ClientCommand } from './protocol';
import { ResultStore } from './results';
import { RunningStage, statusView } from './status';

export class StatusItem implements vscode.Disposable {
  private readonly item = vscode.window.createStatusBarItem('hbcompile.status', vscode.StatusBarAlignment.Left, 50);
  private running: RunningStage | undefined;
  private readonly subscriptions: vscode.Disposable[];

  constructor(private readonly results: ResultStore, private readonly isConfig: (document: vscode.TextDocument) => boolean) {
    this.item.name = 'hb_compile';
    this.subscriptions = [
      this.item,
      results.onDidChange(() => this.refresh()),
      vscode.window.onDidChangeActiveTextEditor(() => this.refresh()),
    ];
    this.refresh();
  }

  setRunning(stage: RunningStage | undefined): void {
    this.running = stage;
    this.refresh();
  }

  refresh(): void {
    const document = vscode.window.activeTextEditor?.document;
    const config = document !== undefined && this.isConfig(document);
    void vscode.commands.executeCommand('setContext', 'hbcompile.isConfig', config);
    if (!config && !this.running) {
      this.item.hide();
      return;
    }
    const view = statusView(config ? this.results.get(document.uri.toString()) : undefined, this.running);
    this.item.text = view.text;
    this.item.tooltip = view.tooltip;
    this.item.command = this.running ? ClientCommand.cancelCompile : ClientCommand.showSimilarityTable;
    this.item.backgroundColor = view.severity === 'error' ? new vscode.ThemeColor('statusBarItem.errorBackground')
      : view.severity === 'warning' ? new vscode.ThemeColor('statusBarItem.warningBackground') : undefined;
    this.item.show();
  }

  dispose(): void {
    for (const s of this.subscriptions) {
      s.dispose();
    }
  }
}
