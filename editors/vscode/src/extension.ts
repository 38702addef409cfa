/**
 * Activation only: the log channel, the shared result store, the status item and table panel,
 * the commands, and a server restart when its command or the config file patterns change.
 */

import * as vscode from 'vscode';
import { registerCommands } from './commands';
import { ResultStore } from './results';
import { HbServer, ServerInfo } from './server';
import { needsRestart } from './settings';
import { StatusItem } from './statusBar';
import { TablePanel } from './tablePanel';

let server: HbServer | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const info = (context.extension.packageJSON as { serverInfo: ServerInfo }).serverInfo;
  const log = vscode.window.createOutputChannel(info.name, { log: true });
  const results = new ResultStore();
  const panel = new TablePanel(results);
  server = new HbServer(info, log, results);
  const hb = server;
  const status = new StatusItem(results, (document) => hb.handles(document));
  context.subscriptions.push(
    log, panel, hb, status,
    hb.onRunning((stage) => status.setRunning(stage)),
    hb.onStarted(() => status.refresh()),
    ...registerCommands({ server: hb, results, panel }),
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (needsRestart(event)) {
        void hb.restart();
      }
    }),
  );
  await hb.restart();
}

export async function deactivate(): Promise<void> {
  await server?.stop();
  server = undefined;
}
