/**
 * A bare LSP client for the tests: starts `<python> -m hblsp` over stdio and talks to it with
 * `vscode-languageserver-protocol`, the library VS Code's client is built on. It records what the
 * server pushes (diagnostics per version, `hblsp/compileResult`, `$/progress`) so a test can wait
 * for exactly the message it expects.
 */

import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { pathToFileURL } from 'url';
import {
  ConfigurationRequest,
  InitializeResult,
  ProtocolConnection,
  PublishDiagnosticsNotification,
  PublishDiagnosticsParams,
  StreamMessageReader,
  StreamMessageWriter,
  WorkDoneProgress,
  WorkDoneProgressBegin,
  WorkDoneProgressCreateRequest,
  WorkDoneProgressEnd,
  WorkDoneProgressReport,
  createProtocolConnection,
} from 'vscode-languageserver-protocol/node';
import { COMPILE_RESULT, CompileResult } from '../protocol';

/** editors/vscode/out/test → the repository. */
export const REPO = path.resolve(__dirname, '..', '..', '..', '..');

export function serverPython(): string {
  return process.env.HBLSP_PYTHON ?? path.join(REPO, '.venv', 'bin', 'python');
}

export function fileUri(file: string): string {
  return pathToFileURL(file).href;
}

type ProgressValue = WorkDoneProgressBegin | WorkDoneProgressReport | WorkDoneProgressEnd;

export class HbTestClient {
  readonly diagnostics: PublishDiagnosticsParams[] = [];
  readonly results: CompileResult[] = [];
  readonly progress: { token: string | number; value: ProgressValue }[] = [];
  readonly stderr: string[] = [];
  private constructor(readonly process: ChildProcess, readonly connection: ProtocolConnection) {}

  /** Start the server; `settings` is what it gets for the `hblsp` configuration section. */
  static start(cwd: string, settings: Record<string, unknown> = {}): HbTestClient {
    const child = spawn(serverPython(), ['-m', 'hblsp'], { cwd, env: { ...process.env, PYTHONPATH: REPO } });
    const connection = createProtocolConnection(new StreamMessageReader(child.stdout!), new StreamMessageWriter(child.stdin!));
    const client = new HbTestClient(child, connection);
    child.stderr!.on('data', (chunk: Buffer) => client.stderr.push(chunk.toString()));
    connection.onNotification(PublishDiagnosticsNotification.type, (params) => client.diagnostics.push(params));
    connection.onNotification(COMPILE_RESULT, (params: CompileResult) => client.results.push(params));
    connection.onRequest(ConfigurationRequest.type, (params) => params.items.map(() => settings));
    connection.onRequest(WorkDoneProgressCreateRequest.type, (params) => {
      const token = params.token;
      connection.onProgress(WorkDoneProgress.type, token, (value) => client.progress.push({ token, value }));
    });
    connection.listen();
    return client;
  }

  async initialize(rootPath: string): Promise<InitializeResult> {
    const result = await this.connection.sendRequest('initialize', {
      processId: process.pid,
      rootUri: fileUri(rootPath),
      workspaceFolders: [{ uri: fileUri(rootPath), name: path.basename(rootPath) }],
      capabilities: {
        workspace: { configuration: true, didChangeConfiguration: { dynamicRegistration: false } },
        window: { workDoneProgress: true },
        textDocument: {
          publishDiagnostics: { versionSupport: true, relatedInformation: true },
          completion: { completionItem: { snippetSupport: true, documentationFormat: ['markdown', 'plaintext'] } },
          hover: { contentFormat: ['markdown', 'plaintext'] },
          codeAction: { codeActionLiteralSupport: { codeActionKind: { valueSet: ['quickfix'] } } },
        },
      },
    }) as InitializeResult;
    await this.connection.sendNotification('initialized', {});
    return result;
  }

  open(file: string, text: string, version = 1): string {
    const uri = fileUri(file);
    void this.connection.sendNotification('textDocument/didOpen', { textDocument: { uri, languageId: 'yaml', version, text } });
    return uri;
  }

  /** Resolves with the first value `probe` returns (polled), or rejects naming what it waited for. */
  async waitFor<T>(what: string, probe: () => T | undefined | Promise<T | undefined>, timeoutMs = 20000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = await probe();
      if (value !== undefined) {
        return value;
      }
      if (this.process.exitCode !== null) {
        throw new Error(`hblsp exited (${this.process.exitCode}) while waiting for ${what}:\n${this.stderr.join('')}`);
      }
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  /** The first non-empty diagnostics published for `uri` at `version`. */
  waitDiagnostics(uri: string, version: number, where: (p: PublishDiagnosticsParams) => boolean = (p) => p.diagnostics.length > 0) {
    return this.waitFor(`diagnostics for ${uri} v${version}`,
      () => this.diagnostics.find((p) => p.uri === uri && p.version === version && where(p))?.diagnostics);
  }

  /** shutdown + exit, then the process's exit code. */
  async stop(): Promise<number | null> {
    if (this.process.exitCode === null) {
      const exited = new Promise<number | null>((resolve) => this.process.once('exit', (code) => resolve(code)));
      try {
        await this.connection.sendRequest('shutdown');
        await this.connection.sendNotification('exit');
      } catch {
        this.process.kill();
      }
      const timer = setTimeout(() => this.process.kill(), 5000);
      const code = await exited;
      clearTimeout(timer);
      this.connection.dispose();
      return code;
    }
    this.connection.dispose();
    return this.process.exitCode;
  }
}

/** A temp workspace with the bundled digits example's model and calibration data. */
export function digitsWorkspace(): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'hblsp-vscode-'));
  const example = path.join(REPO, 'examples', 'digits');
  fs.copyFileSync(path.join(example, 'digits.onnx'), path.join(root, 'digits.onnx'));
  fs.cpSync(path.join(example, 'calibration_data'), path.join(root, 'calibration_data'), { recursive: true });
  return root;
}

export function digitsConfig(): string {
  return fs.readFileSync(path.join(REPO, 'examples', 'digits', 'digits.hb.yaml'), 'utf8');
}
