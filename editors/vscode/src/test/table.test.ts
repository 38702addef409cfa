/** The similarity page without VS Code: sorting, threshold highlighting, escaping, no network. */

import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { CompileResult, NodeRow } from '../protocol';
import { findOnPath } from '../serverCommand';
import {
  MODEL_ORDER, escapeHtml, formatNumber, nextSort, nodeBelow, renderPage, sortNodes, worstOutput,
} from '../table';

function row(node: string, calibrated: number | null, quantized: number | null, extra: Partial<NodeRow> = {}): NodeRow {
  return {
    node, node_type: 'Conv', on: 'BPU', tensor: `${node}_out`, threshold: calibrated === null ? null : 4.5,
    calibrated_cosine: calibrated, quantized_cosine: quantized, output_dtype: calibrated === null ? 'f32' : 'si8', ...extra,
  };
}

const NODES: NodeRow[] = [
  row('Conv_0+Relu_1', 0.9998, 0.9997, { node_type: 'Conv+Relu', nodes: ['Conv_0', 'Relu_1'] }),
  row('Softmax_9', null, null, { on: 'CPU', node_type: 'Softmax' }),
  row('Conv_2', 0.985, 0.95),
  row('Add_3', 0.9995, 0.9999),
  row('Conv_4', 0.991, 0.95),
];

function result(extra: Partial<CompileResult> = {}): CompileResult {
  return {
    uri: 'file:///w/digits.hb.yaml', version: 3, ok: true, cancelled: false, seconds: 1.92,
    stages: [{ name: 'calibrate', status: 'ran', reason: '1 of 32 calibration files changed', seconds: 0.41 }],
    problems: [], artefacts: {}, working_dir: '/w/model_output',
    table: {
      calibrated: true,
      nodes: NODES,
      outputs: [
        { tensor: 'logits', cosine: 0.9999, quantized_cosine: 0.9998, l1: 0.12, l2: 0.14, chebyshev: 0.21 },
        { tensor: 'boxes', cosine: 0.75, quantized_cosine: 0.7, l1: 1, l2: 2, chebyshev: 3 },
      ],
    },
    thresholds: { node: 0.99, output: 0.8 },
    ...extra,
  };
}

/** The node names in the order the page lists them. */
function renderedOrder(html: string): string[] {
  const nodes = html.slice(html.indexOf('<table id="nodes">'));
  return [...nodes.matchAll(/<tr[^>]* data-node="([^"]*)"/g)].map((m) => m[1]);
}

function rowHtml(html: string, node: string): string {
  const start = html.indexOf(`data-node="${node}"`);
  assert.ok(start >= 0, node);
  return html.slice(html.lastIndexOf('<tr', start), html.indexOf('</tr>', start));
}

describe('sorting', () => {
  test('model order is the order the server sent', () => {
    assert.deepEqual(sortNodes(NODES, MODEL_ORDER).map((r) => r.node), NODES.map((r) => r.node));
  });

  test('by quantized cosine, worst first, ties in model order, CPU rows last', () => {
    const sorted = sortNodes(NODES, { key: 'quantized_cosine', direction: 'asc' }).map((r) => r.node);
    assert.deepEqual(sorted, ['Conv_2', 'Conv_4', 'Conv_0+Relu_1', 'Add_3', 'Softmax_9']);
  });

  test('descending keeps rows without a cosine last', () => {
    const sorted = sortNodes(NODES, { key: 'calibrated_cosine', direction: 'desc' }).map((r) => r.node);
    assert.deepEqual(sorted, ['Conv_0+Relu_1', 'Add_3', 'Conv_4', 'Conv_2', 'Softmax_9']);
  });

  test('sorting does not reorder the caller\'s rows', () => {
    const before = NODES.map((r) => r.node);
    sortNodes(NODES, { key: 'quantized_cosine', direction: 'asc' });
    assert.deepEqual(NODES.map((r) => r.node), before);
  });

  test('a click sorts a new column worst first, the same column flips, # returns to model order', () => {
    const first = nextSort(MODEL_ORDER, 'quantized_cosine');
    assert.deepEqual(first, { key: 'quantized_cosine', direction: 'asc' });
    assert.deepEqual(nextSort(first, 'quantized_cosine'), { key: 'quantized_cosine', direction: 'desc' });
    assert.deepEqual(nextSort(first, 'calibrated_cosine'), { key: 'calibrated_cosine', direction: 'asc' });
    assert.deepEqual(nextSort(first, 'model'), MODEL_ORDER);
  });

  test('the page lists rows in the sorted order and marks the sorted header', () => {
    const html = renderPage(result(), { nonce: 'abc', sort: { key: 'quantized_cosine', direction: 'asc' } });
    assert.deepEqual(renderedOrder(html), ['Conv_2', 'Conv_4', 'Conv_0+Relu_1', 'Add_3', 'Softmax_9']);
    assert.match(html, /aria-sort="ascending"><button data-sort="quantized_cosine">Quantized Cosine ▲/);
    assert.match(html, /aria-sort="none"><button data-sort="calibrated_cosine">/);
  });
});

describe('threshold highlighting', () => {
  test('rows with either cosine under the node threshold are highlighted, only those', () => {
    const html = renderPage(result(), { nonce: 'abc' });
    for (const node of ['Conv_2', 'Conv_4']) {
      assert.match(rowHtml(html, node), /^<tr class="below"/, node);
    }
    for (const node of ['Conv_0+Relu_1', 'Add_3', 'Softmax_9']) {
      assert.doesNotMatch(rowHtml(html, node), /class="below"/, node);
    }
    assert.match(html, /<span id="below-count">2<\/span> under the node threshold 0.99/);
  });

  test('only the failing cosine cell is marked', () => {
    const conv4 = rowHtml(renderPage(result(), { nonce: 'abc' }), 'Conv_4');
    assert.match(conv4, /<td class="num">0\.991000<\/td><td class="num below">0\.950000<\/td>/);
  });

  test('the server\'s thresholds win over the defaults', () => {
    const html = renderPage(result({ thresholds: { node: 0.9999, output: 0.8 } }), { nonce: 'abc' });
    assert.match(rowHtml(html, 'Add_3'), /^<tr class="below"/);
    assert.match(html, /<span id="below-count">4<\/span> under the node threshold 0.9999/);
    assert.equal(nodeBelow(NODES[3], 0.9999), true);
    assert.equal(nodeBelow(NODES[3], 0.99), false);
  });

  test('outputs are judged against the output threshold', () => {
    const html = renderPage(result(), { nonce: 'abc' });
    const outputs = html.slice(html.indexOf('<table id="outputs">'), html.indexOf('<table id="nodes">'));
    assert.match(outputs, /<tr class="below"><td><code>boxes<\/code>/);
    assert.match(outputs, /<tr><td><code>logits<\/code>/);
  });

  test('the worst output is the lowest of both cosines', () => {
    assert.deepEqual(worstOutput(result()), { tensor: 'boxes', cosine: 0.7 });
    assert.equal(worstOutput(result({ table: null })), null);
  });
});

describe('escaping and no network', () => {
  const evil = '<img src=x onerror="alert(1)">&\'';

  test('escapeHtml covers the five HTML specials', () => {
    assert.equal(escapeHtml(evil), '&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;&#39;');
  });

  test('node names, types and paths from the model are escaped everywhere', () => {
    const nodes = [row(evil, 0.5, 0.5, { node_type: '<b>Op</b>', nodes: [evil, 'x'] }), row('</script><script>alert(2)</script>', 1, 1)];
    const html = renderPage(result({
      table: { calibrated: true, nodes, outputs: [] }, working_dir: '/w/<dir>',
      problems: [{ severity: 'error', message: 'bad <value>', file: '/w/a&b.yaml', span: { line: 2, col: 4, end_line: 2, end_col: 6 } }],
    }), { nonce: 'abc', title: '<title>' });
    assert.ok(!html.includes('<img'), 'raw <img> in the page');
    assert.ok(!html.includes('<b>Op'), 'raw <b> in the page');
    assert.equal((html.match(/<script/g) ?? []).length, 1, 'only the page\'s own script');
    assert.ok(html.includes(`<code>${escapeHtml(evil)}</code>`));
    assert.ok(html.includes('<li class="status-failed">/w/a&amp;b.yaml:3:5: error: bad &lt;value&gt;</li>'));
    assert.ok(html.includes('<code>/w/&lt;dir&gt;</code>'));
  });

  test('a Content-Security-Policy allows only the nonced inline style and script', () => {
    const html = renderPage(result(), { nonce: 'r4nd0m' });
    assert.ok(html.includes(`content="default-src 'none'; style-src 'nonce-r4nd0m'; script-src 'nonce-r4nd0m';"`));
    assert.ok(html.includes('<style nonce="r4nd0m">'));
    assert.ok(html.includes('<script nonce="r4nd0m">'));
    assert.doesNotMatch(html, /https?:\/\/|\bsrc=|<link/, 'the page loads nothing');
  });
});

describe('other states', () => {
  test('no result yet says how to get one', () => {
    assert.match(renderPage(undefined, { nonce: 'a' }), /No compile result yet/);
  });

  test('a run that stopped early has problems and stages but no table', () => {
    const html = renderPage(result({ ok: false, table: null, problems: [{ severity: 'error', message: 'cal_data_dir does not exist' }] }),
      { nonce: 'a' });
    assert.match(html, /class="status-failed">failed/);
    assert.match(html, /stopped before the report stage/);
    assert.match(html, /<li class="status-failed">error: cal_data_dir does not exist<\/li>/);
    assert.match(html, /<td>calibrate<\/td><td>ran<\/td><td class="num">0.41<\/td><td class="muted">1 of 32 calibration files changed/);
    assert.ok(!html.includes('<table id="nodes">'));
  });

  test('without calibration the table has hb_compile\'s four columns and no cosines', () => {
    const html = renderPage(result({ table: { calibrated: false, nodes: NODES, outputs: [] } }), { nonce: 'a' });
    assert.match(html, /<th>Node<\/th><th>NodeType<\/th><th>ON<\/th><th>Output Data Type<\/th>/);
    assert.ok(!html.includes('Quantized Cosine'));
    assert.ok(!html.includes('class="below"'));
    assert.deepEqual(renderedOrder(html), NODES.map((r) => r.node));
  });

  test('numbers print like hb_compile: six decimals, -- for none', () => {
    assert.equal(formatNumber(0.99989), '0.999890');
    assert.equal(formatNumber(null), '--');
    assert.equal(formatNumber(Number.NaN), '--');
  });
});

describe('in a real browser (Chromium, as the webview is)', () => {
  const chromium = process.env.CHROMIUM ?? findOnPath('chromium', {
    platform: process.platform, pathEnv: process.env.PATH, isFile: (f) => fs.existsSync(f),
  });

  /** Load the page with the webview's API replaced by a recorder; return <html>'s data-* after load. */
  function load(html: string, nonce: string, probe: string): Record<string, string> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hblsp-page-'));
    try {
      const file = path.join(dir, 'page.html');
      fs.writeFileSync(file, html
        .replace('<title>', `<script nonce="${nonce}">window.acquireVsCodeApi = () => ({ postMessage: (m) => ` +
          `{ document.documentElement.dataset.posted = JSON.stringify(m); } });</script>\n<title>`)
        .replace('</body>', `<script nonce="${nonce}">${probe}</script>\n</body>`));
      const dom = execFileSync(chromium!, ['--headless', '--no-sandbox', '--disable-gpu', `--user-data-dir=${path.join(dir, 'profile')}`,
        '--dump-dom', pathToFileURL(file).href], { encoding: 'utf8', timeout: 60000, stdio: ['ignore', 'pipe', 'ignore'] });
      const tag = dom.slice(dom.indexOf('<html'), dom.indexOf('>', dom.indexOf('<html')));
      return Object.fromEntries([...tag.matchAll(/data-([a-z]+)="([^"]*)"/g)].map((m) => [m[1], m[2].replace(/&quot;/g, '"')]));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }

  const PROBE = 'const d = document.documentElement.dataset;' +
    'd.row = getComputedStyle(document.querySelector("tr.below td")).backgroundColor;' +
    'd.cell = getComputedStyle(document.querySelector("td.below")).color;' +
    'document.querySelector("[data-sort=calibrated_cosine]").click();';

  test('the CSP lets the nonced style and script run: rows highlighted, a header click posts the sort', { skip: chromium ? false : 'chromium not found (make browser installs it)' }, () => {
    const seen = load(renderPage(result(), { nonce: 'n0nce42' }), 'n0nce42', PROBE);
    assert.equal(seen.row, 'rgba(255, 0, 0, 0.2)');
    assert.equal(seen.cell, 'rgb(229, 20, 0)');
    assert.deepEqual(JSON.parse(seen.posted), { type: 'sort', key: 'calibrated_cosine' });
  });

  test('and a style without the nonce is blocked (so the check above means something)', { skip: chromium ? false : 'chromium not found' }, () => {
    const html = renderPage(result(), { nonce: 'n0nce42' }).replace('<style nonce="n0nce42">', '<style nonce="other">');
    const seen = load(html, 'n0nce42', PROBE);
    assert.equal(seen.row, 'rgba(0, 0, 0, 0)');
    assert.deepEqual(JSON.parse(seen.posted), { type: 'sort', key: 'calibrated_cosine' });
  });
});
