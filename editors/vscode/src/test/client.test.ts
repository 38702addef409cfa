/** The extension's pure parts: the server lookup, the status text, the result store, the manifest. */

import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { COMPILE_RESULT, ClientCommand, CompileResult, DEFAULT_FILE_PATTERNS, ServerCommand } from '../protocol';
import { StageTracker } from '../progress';
import { ResultStore } from '../results';
import { ServerCommandInput, resolveServerCommand } from '../serverCommand';
import { statusView } from '../status';
import { REPO } from './lspClient';

const EXTENSION = path.join(REPO, 'editors', 'vscode');

function lookup(files: string[], extra: Partial<ServerCommandInput> = {}): ReturnType<typeof resolveServerCommand> {
  return resolveServerCommand({
    configured: [], workspaceFolders: ['/ws/a', '/ws/b'], module: 'hblsp', platform: 'linux',
    pathEnv: '/usr/local/bin:/usr/bin', home: '/home/me', isFile: (f) => files.includes(f), ...extra,
  });
}

describe('finding the server', () => {
  test('the first workspace folder with a .venv wins over PATH', () => {
    const found = lookup(['/ws/b/.venv/bin/python', '/usr/bin/hblsp']);
    assert.deepEqual(found && { command: found.command, args: found.args, cwd: found.cwd },
      { command: '/ws/b/.venv/bin/python', args: ['-m', 'hblsp'], cwd: '/ws/b' });
  });

  test('the setting wins over everything, with ${workspaceFolder} and ${userHome} replaced', () => {
    const found = lookup(['/ws/a/.venv/bin/python'], { configured: ['${userHome}/py', '-m', 'hblsp', '--log-file', '${workspaceFolder}/l'] });
    assert.deepEqual([found?.command, ...(found?.args ?? [])], ['/home/me/py', '-m', 'hblsp', '--log-file', '/ws/a/l']);
    assert.equal(found?.source, 'the hblsp.server.command setting');
  });

  test('hblsp on PATH when there is no .venv', () => {
    const found = lookup(['/usr/bin/hblsp']);
    assert.deepEqual([found?.command, found?.args], ['/usr/bin/hblsp', []]);
  });

  test('nothing found is undefined, so the extension can say how to fix it', () => {
    assert.equal(lookup([]), undefined);
    assert.equal(lookup([], { workspaceFolders: [], pathEnv: undefined }), undefined);
  });

  test('Windows: Scripts\\python.exe and hblsp.exe', () => {
    assert.equal(lookup(['C:\\ws\\.venv\\Scripts\\python.exe'], { platform: 'win32', workspaceFolders: ['C:\\ws'] })?.command,
      'C:\\ws\\.venv\\Scripts\\python.exe');
    assert.equal(lookup(['C:\\py\\hblsp.exe'], { platform: 'win32', workspaceFolders: ['C:\\ws'], pathEnv: 'C:\\x;C:\\py' })?.command,
      'C:\\py\\hblsp.exe');
  });
});

function result(extra: Partial<CompileResult> = {}): CompileResult {
  return {
    uri: 'file:///w/m.hb.yaml', version: 2, ok: true, cancelled: false, seconds: 1.5, stages: [], problems: [], artefacts: {},
    table: { calibrated: true, outputs: [{ tensor: 'logits', cosine: 0.99991, quantized_cosine: 0.99987, l1: 0, l2: 0, chebyshev: 0 }],
      nodes: [{ node: 'a', node_type: 'Conv', on: 'BPU', tensor: 't', threshold: 1, calibrated_cosine: 0.95, quantized_cosine: 0.95, output_dtype: 'si8' }] },
    thresholds: { node: 0.99, output: 0.8 },
    ...extra,
  };
}

describe('status bar text', () => {
  test('the running stage wins: its name and percentage, the whole report in the tooltip', () => {
    const view = statusView(result(), { title: 'hb_compile', message: 'calibrate: calibration sample 15/32 (90.2 samples/s)', percentage: 46.9 });
    assert.equal(view.text, '$(sync~spin) hb: calibrate 47%');
    assert.equal(view.tooltip, 'hb_compile: calibrate: calibration sample 15/32 (90.2 samples/s) 47% — click to cancel');
    assert.equal(view.severity, 'running');
  });

  test('after a run: the worst output cosine, a warning when nodes are under the threshold', () => {
    const view = statusView(result(), undefined);
    assert.equal(view.text, '$(pulse) hb: 0.9999');
    assert.equal(view.severity, 'warning');
    assert.match(view.tooltip, /Output logits: cosine 0\.999870 in 1\.5 s\n1 node\(s\) under 0\.99/);
  });

  test('an output under the output threshold is an error', () => {
    const bad = result();
    bad.table!.outputs[0].quantized_cosine = 0.5;
    assert.deepEqual([statusView(bad, undefined).text, statusView(bad, undefined).severity], ['$(warning) hb: 0.5000', 'error']);
  });

  test('failed and cancelled runs say so', () => {
    const failed = statusView(result({ ok: false, table: null, problems: [{ severity: 'warning', message: 'w' }, { severity: 'error', message: 'no model' }] }), undefined);
    assert.deepEqual([failed.text, failed.tooltip, failed.severity], ['$(error) hb: failed', 'no model', 'error']);
    assert.equal(statusView(result({ cancelled: true, ok: false }), undefined).text, '$(circle-slash) hb: cancelled');
    assert.equal(statusView(undefined, undefined).severity, 'none');
  });
});

describe('progress tracking', () => {
  test('the newest run\'s latest report is the stage shown; end removes it', () => {
    const stages = new StageTracker();
    const heard: (string | undefined)[] = [];
    stages.onDidChange((s) => heard.push(s && `${s.title}|${s.message ?? ''}|${s.percentage ?? ''}`));
    stages.update('a', { kind: 'begin', title: 'hb_compile', message: 'parse', cancellable: true });
    stages.update('a', { kind: 'report', message: 'calibrate: 1 of 32 calibration files changed', percentage: 10 });
    stages.update('b', { kind: 'begin', title: 'hblsp: reading model' });
    assert.deepEqual(stages.cancellable(), ['a']);
    stages.update('b', { kind: 'end' });
    stages.update('a', { kind: 'report', percentage: 55 });
    stages.update('a', { kind: 'end' });
    stages.update('zzz', { kind: 'report', message: 'unknown token: ignored' });
    assert.deepEqual(heard, [
      'hb_compile|parse|', 'hb_compile|calibrate: 1 of 32 calibration files changed|10', 'hblsp: reading model||',
      'hb_compile|calibrate: 1 of 32 calibration files changed|10', 'hb_compile|calibrate: 1 of 32 calibration files changed|55',
      undefined,
    ]);
    assert.deepEqual(stages.cancellable(), []);
  });

  test('a report can withdraw cancellation, and clear forgets every run', () => {
    const stages = new StageTracker();
    stages.update(7, { kind: 'begin', title: 't', cancellable: true });
    stages.update(7, { kind: 'report', cancellable: false, message: 'writing the .bc' });
    assert.deepEqual(stages.cancellable(), []);
    stages.clear();
    assert.equal(stages.current, undefined);
  });
});

describe('result store', () => {
  test('keeps the newest version per config and tells listeners', () => {
    const store = new ResultStore();
    const seen: number[] = [];
    const sub = store.onDidChange((r) => seen.push(r.version!));
    assert.equal(store.put(result({ version: 3 })), true);
    assert.equal(store.put(result({ version: 2 })), false, 'a late older run must not replace a newer one');
    assert.equal(store.put(result({ version: 3, seconds: 0.2 })), true, 'a re-run of the same version (data changed) replaces');
    sub.dispose();
    store.put(result({ version: 4 }));
    assert.deepEqual(seen, [3, 3]);
    assert.equal(store.get('file:///w/m.hb.yaml')?.version, 4);
  });
});

describe('package.json', () => {
  const manifest = JSON.parse(fs.readFileSync(path.join(EXTENSION, 'package.json'), 'utf8'));

  test('contributes exactly the commands the extension registers, none clashing with the server\'s', () => {
    const contributed: string[] = manifest.contributes.commands.map((c: { command: string }) => c.command).sort();
    assert.deepEqual(contributed, Object.values(ClientCommand).sort());
    const clashes = Object.values(ServerCommand).filter((id) => manifest.contributes.commands.some((c: { command: string }) => c.command === id));
    assert.deepEqual(clashes, [], 'vscode-languageclient registers the server\'s commands itself');
    assert.equal(COMPILE_RESULT, 'hblsp/compileResult');
  });

  test('the file pattern default is hblsp\'s, and no schema goes to the Red Hat YAML extension', () => {
    assert.deepEqual(manifest.contributes.configuration.properties['hblsp.filePatterns'].default, DEFAULT_FILE_PATTERNS);
    for (const pattern of ['*.hb.yaml', '*.hb.yml', '*hb_compile*.yaml', '*hb_compile*.yml']) {
      assert.ok(DEFAULT_FILE_PATTERNS.includes(pattern), pattern);
    }
    assert.equal(manifest.contributes.yamlValidation, undefined, 'hblsp validates these files; a second validator doubles every problem');
  });

  test('main exists', () => {
    assert.ok(fs.existsSync(path.join(EXTENSION, manifest.main)), manifest.main);
  });
});
