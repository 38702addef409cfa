/**
 * Which process to start as the language server (no `vscode` import: unit-tested in Node).
 *
 * Order: the user's `hblsp.server.command`; else the workspace's own `.venv` (the project's
 * environment has the engine the config is for): its `hblsp` script, else its Python running
 * `-m hblsp`; else `hblsp` on PATH. Each answer says where it came from, so the log explains a
 * surprising choice.
 *
 * The script, not `python -m`: the server runs with the workspace as its working directory, and
 * `-m` puts that directory first on sys.path, so a project's own `engine.py` (torchvision's
 * detection references ship one), `engine/` or `hblsp/` would replace hbcompile's packages and
 * kill the server at import. `-m` stays only for a .venv without the script (hbcompile not
 * installed in it), where the workspace itself is what provides the package (its checkout).
 */

import * as path from 'path';

export interface ServerCommandInput {
  /** `hblsp.server.command`; empty means "find it". */
  configured: readonly string[];
  /** File-system paths of the workspace folders, first one first. */
  workspaceFolders: readonly string[];
  /** The Python module that runs the server (`serverInfo.module` in package.json). */
  module: string;
  platform: NodeJS.Platform;
  /** The PATH value to search (process.env.PATH). */
  pathEnv: string | undefined;
  home?: string;
  isFile: (file: string) => boolean;
}

export interface ServerCommand {
  command: string;
  args: string[];
  /** Working directory: the first workspace folder, when there is one. */
  cwd?: string;
  /** Why this command, in words for the log. */
  source: string;
}

/** The console script pip installs for `name` in a folder's .venv (`hblsp`, `hblsp.exe`). */
export function venvScript(folder: string, name: string, platform: NodeJS.Platform): string {
  return platform === 'win32'
    ? path.win32.join(folder, '.venv', 'Scripts', `${name}.exe`)
    : path.posix.join(folder, '.venv', 'bin', name);
}

/** `${workspaceFolder}` and `${userHome}` in a configured command, as VS Code's own settings allow. */
export function substitute(part: string, workspaceFolder: string | undefined, home: string | undefined): string {
  return part
    .replace(/\$\{workspaceFolder\}/g, workspaceFolder ?? '${workspaceFolder}')
    .replace(/\$\{userHome\}/g, home ?? '${userHome}');
}

export function findOnPath(name: string, input: Pick<ServerCommandInput, 'platform' | 'pathEnv' | 'isFile'>): string | undefined {
  const win = input.platform === 'win32';
  const join = win ? path.win32.join : path.posix.join;
  const dirs = (input.pathEnv ?? '').split(win ? ';' : ':').filter((d) => d.length > 0);
  const names = win ? [`${name}.exe`, `${name}.cmd`, name] : [name];
  for (const dir of dirs) {
    for (const candidate of names) {
      const file = join(dir, candidate);
      if (input.isFile(file)) {
        return file;
      }
    }
  }
  return undefined;
}

/** The server command, or undefined when nothing was configured or found (the caller says how to fix it). */
export function resolveServerCommand(input: ServerCommandInput): ServerCommand | undefined {
  const cwd = input.workspaceFolders[0];
  if (input.configured.length > 0) {
    const [command, ...args] = input.configured.map((p) => substitute(p, cwd, input.home));
    return { command, args, cwd, source: 'the hblsp.server.command setting' };
  }
  for (const folder of input.workspaceFolders) {
    const script = venvScript(folder, input.module, input.platform);
    if (input.isFile(script)) {
      return { command: script, args: [], cwd: folder, source: `the workspace's .venv (${folder})` };
    }
    const python = venvScript(folder, 'python', input.platform);
    if (input.isFile(python)) {
      return { command: python, args: ['-m', input.module], cwd: folder, source: `the workspace's .venv (${folder})` };
    }
  }
  const onPath = findOnPath(input.module, input);
  if (onPath !== undefined) {
    return { command: onPath, args: [], cwd, source: 'hblsp on PATH' };
  }
  return undefined;
}
