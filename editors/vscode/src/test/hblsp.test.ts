/**
 * hblsp over stdio, the way VS Code's client talks to it: initialize → diagnostics → completion →
 * hover → quick fix → compile → `hblsp/compileResult` (data: a temp copy of examples/digits).
 */

import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CodeAction, CompletionItem, CompletionList, Hover, InitializeResult, MarkupContent } from 'vscode-languageserver-protocol';
import { COMPILE_RESULT, CompileResult, ServerCommand } from '../protocol';
import { ResultStore } from '../results';
import { escapeHtml, renderPage } from '../table';
import { HbTestClient, digitsConfig, digitsWorkspace, serverPython } from './lspClient';

const BAD_ENUM = "The specified input_type_rt is invalid, the input_type_rt: 'nv13' can only be specified as values in " +
  "['nv12', 'yuv444', 'rgb', 'bgr', 'gray', 'featuremap']";

/** Line and column of the first `needle` in `text` (0-based, UTF-16 as LSP counts). */
function positionOf(text: string, needle: string): { line: number; character: number } {
  const lines = text.split('\n');
  const line = lines.findIndex((l) => l.includes(needle));
  assert.ok(line >= 0, `'${needle}' not in the config`);
  return { line, character: lines[line].indexOf(needle) };
}

describe('hblsp over stdio', { skip: fs.existsSync(serverPython()) ? false : `no Python at ${serverPython()} (run make venv)` }, () => {
  let root: string;
  let client: HbTestClient;
  let init: InitializeResult;
  const good = digitsConfig();
  const broken = good.replace('input_type_rt: gray', 'input_type_rt: nv13');
  let goodUri: string;
  let brokenUri: string;

  before(async () => {
    root = digitsWorkspace();
    fs.writeFileSync(path.join(root, 'digits.hb.yaml'), good);
    fs.writeFileSync(path.join(root, 'broken.hb.yaml'), broken);
    client = HbTestClient.start(root, { debounceMs: 20 });
    init = await client.initialize(root);
    brokenUri = client.open(path.join(root, 'broken.hb.yaml'), broken);
    goodUri = client.open(path.join(root, 'digits.hb.yaml'), good);
  });

  after(async () => {
    const code = await client.stop();
    fs.rmSync(root, { recursive: true, force: true });
    assert.equal(code, 0, `hblsp exit code after shutdown/exit; stderr:\n${client.stderr.join('')}`);
  });

  test('initialize advertises what the extension relies on', () => {
    const caps = init.capabilities;
    assert.equal(init.serverInfo?.name, 'hblsp');
    assert.ok(caps.completionProvider, 'completionProvider');
    assert.equal(caps.hoverProvider, true);
    assert.ok(caps.codeActionProvider, 'codeActionProvider');
    assert.ok(caps.executeCommandProvider, 'executeCommandProvider (may list no commands yet)');
  });

  test('a bad enum value gets hb_compile\'s error on the value', async () => {
    const diagnostics = await client.waitDiagnostics(brokenUri, 1);
    const start = positionOf(broken, 'nv13');
    const enumError = diagnostics.find((d) => d.code === 'invalid-enum');
    assert.ok(enumError, `no invalid-enum diagnostic in ${JSON.stringify(diagnostics)}`);
    assert.equal(enumError.message, BAD_ENUM);
    assert.equal(enumError.severity, 1);
    assert.deepEqual(enumError.range, { start, end: { line: start.line, character: start.character + 4 } });
  });

  test('once the model is read: its input name is offered, and the good config has no errors', async () => {
    const line = good.split('\n').findIndex((l) => l.includes('input_name: input'));
    const character = good.split('\n')[line].length;
    const detail = await client.waitFor('input_name completion from digits.onnx', async () => {
      const answer = await client.connection.sendRequest('textDocument/completion',
        { textDocument: { uri: goodUri }, position: { line, character } }) as CompletionList | CompletionItem[] | null;
      const items = Array.isArray(answer) ? answer : answer?.items ?? [];
      return items.find((i) => i.label === 'input')?.detail;
    });
    assert.equal(detail, 'input 1x1x32x32 float32');
    await new Promise((resolve) => setTimeout(resolve, 200)); // checks that needed the model publish again
    const published = client.diagnostics.filter((p) => p.uri === goodUri);
    assert.ok(published.length > 0, 'nothing published for the good config');
    assert.deepEqual(published[published.length - 1].diagnostics.filter((d) => d.severity === 1), []);
  });

  test('completion after input_type_rt: offers what a gray input_type_train converts to', async () => {
    const at = positionOf(broken, 'nv13');
    const answer = await client.connection.sendRequest('textDocument/completion',
      { textDocument: { uri: brokenUri }, position: at }) as CompletionList | CompletionItem[] | null;
    const items = Array.isArray(answer) ? answer : answer?.items ?? [];
    assert.deepEqual(items.map((i) => i.label), ['gray'], 'a gray model converts to gray only (reference §9)');
  });

  test('hover on a key shows its documentation', async () => {
    const at = positionOf(good, 'input_type_rt');
    const hover = await client.connection.sendRequest('textDocument/hover',
      { textDocument: { uri: goodUri }, position: { line: at.line, character: at.character + 3 } }) as Hover | null;
    assert.ok(hover, 'no hover');
    const text = typeof hover.contents === 'string' ? hover.contents : (hover.contents as MarkupContent).value;
    assert.match(text, /input_type_rt/);
    assert.match(text, /nv12/);
  });

  test('a quick fix replaces the bad enum value with the one legal for input_type_train gray', async () => {
    const diagnostics = await client.waitDiagnostics(brokenUri, 1);
    const enumError = diagnostics.find((d) => d.code === 'invalid-enum')!;
    const actions = await client.connection.sendRequest('textDocument/codeAction', {
      textDocument: { uri: brokenUri }, range: enumError.range, context: { diagnostics: [enumError], only: ['quickfix'] },
    }) as CodeAction[] | null;
    const edits = (actions ?? []).flatMap((a) => a.edit?.changes?.[brokenUri] ?? []);
    assert.ok(edits.some((e) => e.newText === 'gray' && JSON.stringify(e.range) === JSON.stringify(enumError.range)),
      `no edit of nv13 to gray in ${JSON.stringify(actions)}`);
  });

  describe('compile', () => {
    const advertised = () => init.capabilities.executeCommandProvider?.commands ?? [];

    test('hblsp.compile sends hblsp/compileResult with the similarity table', async (t) => {
      if (!advertised().includes(ServerCommand.compile)) {
        t.skip(`this hblsp does not advertise ${ServerCommand.compile} yet (commands: ${JSON.stringify(advertised())})`);
        return;
      }
      const started = await client.connection.sendRequest('workspace/executeCommand',
        { command: ServerCommand.compile, arguments: [{ uri: goodUri, version: 1 }] });
      assert.deepEqual(started, { started: true });
      const result = await client.waitFor(COMPILE_RESULT, () => client.results.find((r) => r.uri === goodUri), 120000);
      assert.equal(result.ok, true, JSON.stringify(result.problems));
      assert.equal(result.cancelled, false);
      assert.equal(result.version, 1);
      assert.equal(fs.realpathSync(result.working_dir!), fs.realpathSync(path.join(root, 'model_output')));
      const names = result.stages.map((s) => s.name);
      for (const stage of ['parse', 'optimize', 'calibrate', 'report']) {
        assert.ok(names.includes(stage), `stage ${stage} missing from ${JSON.stringify(names)}`);
      }
      const bc = Object.values(result.artefacts).find((p) => p.endsWith('_quantized_model.bc'));
      assert.ok(bc && fs.existsSync(bc), `no quantized .bc among ${JSON.stringify(result.artefacts)}`);

      const table = result.table!;
      assert.ok(table, 'table is null after a full run');
      assert.equal(table.calibrated, true);
      assert.ok(table.nodes.length >= 5, `${table.nodes.length} node rows`);
      assert.deepEqual(table.outputs.map((o) => o.tensor), ['logits']);
      assert.ok(table.outputs[0].cosine > 0.99, `output cosine ${table.outputs[0].cosine}`);
      assert.ok(table.nodes.some((n) => n.node_type === 'Conv+Relu'), 'no fused Conv+Relu row');

      // What the panel would show: every node (escaped), and the outputs.
      const html = renderPage(result, { nonce: 'n0nce' });
      for (const row of table.nodes) {
        assert.ok(html.includes(`<code>${escapeHtml(row.node)}</code>`), row.node);
      }
      // The same result, fetched again the way "Show similarity table" does after a restart.
      const store = new ResultStore();
      store.put(result);
      const shown = await client.connection.sendRequest('workspace/executeCommand',
        { command: ServerCommand.showTable, arguments: [{ uri: goodUri }] }) as CompileResult;
      assert.deepEqual(shown, store.get(goodUri));
    });

    test('the run reports each stage as $/progress', async (t) => {
      if (!advertised().includes(ServerCommand.compile)) {
        t.skip(`this hblsp does not advertise ${ServerCommand.compile} yet`);
        return;
      }
      await client.waitFor(COMPILE_RESULT, () => client.results.find((r) => r.uri === goodUri), 120000);
      const kinds = client.progress.map((p) => p.value.kind);
      assert.ok(kinds.includes('begin') && kinds.includes('end'), `progress kinds ${JSON.stringify(kinds)}`);
      const messages = client.progress.map((p) => (p.value.kind === 'end' ? undefined : p.value.message)).filter(Boolean);
      assert.ok(messages.some((m) => /^calibrate\b/.test(m!)), `no calibrate report in ${JSON.stringify(messages)}`);
    });

    test('compiling a broken config reports its problems and no table', async (t) => {
      if (!advertised().includes(ServerCommand.compile)) {
        t.skip(`this hblsp does not advertise ${ServerCommand.compile} yet`);
        return;
      }
      await client.connection.sendRequest('workspace/executeCommand',
        { command: ServerCommand.compile, arguments: [{ uri: brokenUri, version: 1 }] });
      const result = await client.waitFor(`${COMPILE_RESULT} for broken.hb.yaml`,
        () => client.results.find((r) => r.uri === brokenUri), 60000);
      assert.equal(result.ok, false);
      assert.equal(result.table, null);
      assert.ok(result.problems.some((p) => p.severity === 'error' && p.message === BAD_ENUM),
        JSON.stringify(result.problems));
    });
  });
});
