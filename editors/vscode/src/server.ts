/**
 * The hblsp client: finds the server command, starts the `LanguageClient` over stdio, and on a
 * restart stops the old client and drops its listeners before the new one starts. Results
 * (`hblsp/compileResult`) go into the shared store; progress goes to whoever listens.
 */

import * as fs from 'fs';
import * as os from 'os';
import * as vscode from 'vscode';
import { WorkDoneProgressCancelNotification } from 'vscode-languageclient';
import { LanguageClient, LanguageClientOptions, RevealOutputChannelOn, ServerOptions, TransportKind } from 'vscode-languageclient/node';
import { StageTracker } from './progress';
import { COMPILE_RESULT, isCompileResult } from './protocol';
import { ResultStore } from './results';
import { ServerCommand, resolveServerCommand } from './serverCommand';
import { ConfigFilter, SECTION, documentSelector, readSettings } from './settings';
import { RunningStage } from './status';

export interface ServerInfo {
  name: string;
  module: string;
}

function isFile(file: string): boolean {
  try {
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

export class HbServer implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private readonly stages = new StageTracker();
  private selector: ConfigFilter[] = documentSelector(readSettings().filePatterns);
  private listeners: vscode.Disposable[] = [];
  private starting: Promise<void> = Promise.resolve();
  private readonly running = new vscode.EventEmitter<RunningStage | undefined>();
  private readonly started = new vscode.EventEmitter<void>();
  /** The running stage of the newest run (undefined when idle). */
  readonly onRunning = this.running.event;
  /** A client (re)started: selectors may have changed. */
  readonly onStarted = this.started.event;

  constructor(
    private readonly info: ServerInfo,
    private readonly log: vscode.LogOutputChannel,
    private readonly results: ResultStore,
  ) {
    this.stages.onDidChange((stage) => this.running.fire(stage));
  }

  get languageClient(): LanguageClient | undefined {
    return this.client?.isRunning() ? this.client : undefined;
  }

  /** Does hblsp see this document (a YAML file named like a config)? */
  handles(document: vscode.TextDocument): boolean {
    return vscode.languages.match(this.selector, document) > 0;
  }

  /** Commands the running server advertises (`executeCommandProvider`). */
  serverCommands(): string[] {
    return this.languageClient?.initializeResult?.capabilities.executeCommandProvider?.commands ?? [];
  }

  /** Ask the server to stop the runs it reported as cancellable; how many were asked. */
  cancelRuns(): number {
    const client = this.languageClient;
    const tokens = client ? this.stages.cancellable() : [];
    for (const token of tokens) {
      void client!.sendNotification(WorkDoneProgressCancelNotification.type, { token });
    }
    return tokens.length;
  }

  /** Stop any running client, then start one with the current settings (calls are serialised). */
  restart(): Promise<void> {
    this.starting = this.starting.then(() => this.doRestart(), () => this.doRestart());
    return this.starting;
  }

  private resolve(): ServerCommand | undefined {
    const settings = readSettings();
    return resolveServerCommand({
      configured: settings.serverCommand,
      workspaceFolders: (vscode.workspace.workspaceFolders ?? []).filter((f) => f.uri.scheme === 'file').map((f) => f.uri.fsPath),
      module: this.info.module,
      platform: process.platform,
      pathEnv: process.env.PATH,
      home: os.homedir(),
      isFile,
    });
  }

  private async doRestart(): Promise<void> {
    await this.stop();
    const settings = readSettings();
    this.selector = documentSelector(settings.filePatterns);
    const command = this.resolve();
    if (!command) {
      const message = `${this.info.name} not found: no .venv in the workspace and no '${this.info.module}' on PATH. ` +
        `Create the workspace's .venv with hbcompile in it (make venv), or set ${SECTION}.server.command.`;
      this.log.error(message);
      void vscode.window.showErrorMessage(message, 'Open Settings').then((choice) => choice &&
        vscode.commands.executeCommand('workbench.action.openSettings', `${SECTION}.server.command`));
      return;
    }
    this.log.info(`starting ${[command.command, ...command.args].join(' ')} (from ${command.source})`);
    const serverOptions: ServerOptions = {
      command: command.command,
      args: command.args,
      options: { cwd: command.cwd },
      transport: TransportKind.stdio,
    };
    const clientOptions: LanguageClientOptions = {
      documentSelector: this.selector,
      outputChannel: this.log,
      revealOutputChannelOn: RevealOutputChannelOn.Never,
      synchronize: { configurationSection: SECTION },
      middleware: {
        // Also feed the status bar; the client's own progress display still gets every value.
        handleWorkDoneProgress: (token, params, next) => {
          this.stages.update(token, params);
          next(token, params);
        },
      },
    };
    const client = new LanguageClient(SECTION, this.info.name, serverOptions, clientOptions);
    this.listeners.push(
      client.onNotification(COMPILE_RESULT, (params: unknown) => {
        if (isCompileResult(params)) {
          this.results.put(params);
        } else {
          this.log.warn(`ignored a malformed ${COMPILE_RESULT}: ${JSON.stringify(params).slice(0, 200)}`);
        }
      }),
    );
    this.client = client;
    try {
      await client.start();
      this.started.fire();
    } catch (error) {
      const message = `${this.info.name} did not start (${[command.command, ...command.args].join(' ')}): ${String(error)}`;
      this.log.error(message);
      void vscode.window.showErrorMessage(`${message}. See the ${this.info.name} output.`);
    }
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    for (const listener of this.listeners.splice(0)) {
      listener.dispose();
    }
    this.stages.clear();
    if (client) {
      try {
        await client.stop(2000);
      } catch (error) {
        this.log.warn(`stopping ${this.info.name}: ${String(error)}`);
      }
    }
  }

  dispose(): void {
    void this.stop();
    this.running.dispose();
    this.started.dispose();
  }
}
