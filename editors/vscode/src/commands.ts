/**
 * The extension's commands. Each one is thin: find the config it is about, send the server's
 * command (`workspace/executeCommand` with the URI and version) and show one message when that
 * fails. Compiling, caching and cancelling live in hblsp, so every editor gets the same.
 */

import * as path from 'path';
import * as vscode from 'vscode';
import { ExecuteCommandRequest } from 'vscode-languageclient';
import { ClientCommand, CompileResult, ServerCommand, isCompileResult } from './protocol';
import { ResultStore } from './results';
import { HbServer } from './server';
import { TablePanel } from './tablePanel';

export interface CommandContext {
  server: HbServer;
  results: ResultStore;
  panel: TablePanel;
}

/** The config a command is about: the active editor's, else the one the table shows. */
function targetUri(ctx: CommandContext): vscode.Uri | undefined {
  const document = vscode.window.activeTextEditor?.document;
  if (document && ctx.server.handles(document)) {
    return document.uri;
  }
  if (ctx.panel.uri) {
    return vscode.Uri.parse(ctx.panel.uri);
  }
  const visible = vscode.window.visibleTextEditors.map((e) => e.document).filter((d) => ctx.server.handles(d));
  return visible.length === 1 ? visible[0].uri : undefined;
}

function noConfig(): undefined {
  void vscode.window.showWarningMessage('hb_compile: open an hb_compile config (e.g. model.hb.yaml) first.');
  return undefined;
}

/** Send a server command; undefined (after one message) when there is no server or it failed. */
async function execute(ctx: CommandContext, command: string, args: unknown[]): Promise<unknown> {
  const client = ctx.server.languageClient;
  if (!client) {
    void vscode.window.showErrorMessage('hb_compile: hblsp is not running; see the hblsp output or run "hb_compile: Restart server".');
    return undefined;
  }
  try {
    return await client.sendRequest(ExecuteCommandRequest.type, { command, arguments: args });
  } catch (error) {
    const offered = ctx.server.serverCommands().includes(command) ? '' : ` (this hblsp does not advertise ${command}; update hbcompile)`;
    void vscode.window.showErrorMessage(`hb_compile: ${command} failed: ${error instanceof Error ? error.message : String(error)}${offered}`);
    return undefined;
  }
}

function versionOf(uri: vscode.Uri): number | undefined {
  return vscode.workspace.textDocuments.find((d) => d.uri.toString() === uri.toString())?.version;
}

async function compileNow(ctx: CommandContext): Promise<void> {
  const uri = targetUri(ctx) ?? noConfig();
  if (uri) {
    await execute(ctx, ServerCommand.compile, [{ uri: uri.toString(), version: versionOf(uri) }]);
  }
}

/** The last result for a config: ours if we saw it, else the server's (it may predate a restart). */
async function lastResult(ctx: CommandContext, uri: vscode.Uri): Promise<CompileResult | undefined> {
  const known = ctx.results.get(uri.toString());
  if (known) {
    return known;
  }
  const fetched = await execute(ctx, ServerCommand.showTable, [{ uri: uri.toString() }]);
  if (isCompileResult(fetched)) {
    ctx.results.put(fetched);
    return fetched;
  }
  return undefined;
}

async function showSimilarityTable(ctx: CommandContext): Promise<void> {
  const uri = targetUri(ctx) ?? noConfig();
  if (uri) {
    await lastResult(ctx, uri);
    ctx.panel.show(uri.toString());
  }
}

async function openWorkingDir(ctx: CommandContext): Promise<void> {
  const uri = targetUri(ctx) ?? noConfig();
  if (!uri) {
    return;
  }
  const dir = (await lastResult(ctx, uri))?.working_dir;
  if (!dir) {
    void vscode.window.showInformationMessage(`hb_compile: no working_dir yet for ${path.basename(uri.fsPath)}; compile it first.`);
    return;
  }
  const target = vscode.Uri.file(dir);
  const inWorkspace = vscode.workspace.getWorkspaceFolder(target) !== undefined;
  await vscode.commands.executeCommand(inWorkspace ? 'revealInExplorer' : 'revealFileInOS', target);
}

async function cancelCompile(ctx: CommandContext): Promise<void> {
  if (ctx.server.cancelRuns() > 0) {
    return;
  }
  const uri = targetUri(ctx) ?? noConfig();
  if (uri) {
    await execute(ctx, ServerCommand.cancel, [{ uri: uri.toString() }]);
  }
}

export function registerCommands(ctx: CommandContext): vscode.Disposable[] {
  return [
    vscode.commands.registerCommand(ClientCommand.compileNow, () => compileNow(ctx)),
    vscode.commands.registerCommand(ClientCommand.showSimilarityTable, () => showSimilarityTable(ctx)),
    vscode.commands.registerCommand(ClientCommand.openWorkingDir, () => openWorkingDir(ctx)),
    vscode.commands.registerCommand(ClientCommand.restartServer, () => ctx.server.restart()),
    vscode.commands.registerCommand(ClientCommand.cancelCompile, () => cancelCompile(ctx)),
  ];
}
