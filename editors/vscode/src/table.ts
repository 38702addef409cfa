/**
 * The similarity table as one self-contained HTML page (no `vscode` import: unit-tested in Node).
 *
 * The webview has no network: styles and the one click handler are inline, allowed by a nonce
 * in the Content-Security-Policy, and colours come from VS Code's theme variables. Sorting is
 * done here, not in the page: a header click posts `{type: 'sort', key}` and the panel renders
 * again with `nextSort`, so what the tests check is what the user sees.
 */

import { CompileResult, DEFAULT_THRESHOLDS, NodeRow, OutputRow, Thresholds } from './protocol';

/** `model` is the order the server sent (the model's topological order). */
export type SortKey = 'model' | 'calibrated_cosine' | 'quantized_cosine';
export type SortDirection = 'asc' | 'desc';

export interface SortState {
  key: SortKey;
  direction: SortDirection;
}

export const MODEL_ORDER: SortState = { key: 'model', direction: 'asc' };

export const SORT_KEYS: readonly SortKey[] = ['model', 'calibrated_cosine', 'quantized_cosine'];

export function isSortKey(value: unknown): value is SortKey {
  return typeof value === 'string' && (SORT_KEYS as readonly string[]).includes(value);
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Node names come from the user's model: never trust them as markup. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** hb_compile prints six decimals and `--` where there is no number. */
export function formatNumber(value: number | null | undefined, digits = 6): string {
  return typeof value === 'number' && Number.isFinite(value) ? value.toFixed(digits) : '--';
}

export function thresholdsOf(result: CompileResult): Thresholds {
  return { ...DEFAULT_THRESHOLDS, ...(result.thresholds ?? {}) };
}

export function isBelow(value: number | null | undefined, threshold: number): boolean {
  return typeof value === 'number' && value < threshold;
}

/** A node is under the threshold when either of its cosines is. */
export function nodeBelow(row: NodeRow, threshold: number): boolean {
  return isBelow(row.calibrated_cosine, threshold) || isBelow(row.quantized_cosine, threshold);
}

/** The cosine an output is judged by: the worse of the calibrated and quantized models' (as the CLI flags it). */
export function outputCosine(row: OutputRow): number {
  return typeof row.quantized_cosine === 'number' ? Math.min(row.cosine, row.quantized_cosine) : row.cosine;
}

/** The worst output (lowest cosine), what the status bar shows. */
export function worstOutput(result: CompileResult | null | undefined): { tensor: string; cosine: number } | null {
  const outputs = result?.table?.outputs ?? [];
  let worst: { tensor: string; cosine: number } | null = null;
  for (const row of outputs) {
    const cosine = outputCosine(row);
    if (worst === null || cosine < worst.cosine) {
      worst = { tensor: row.tensor, cosine };
    }
  }
  return worst;
}

/** Rows in the requested order; stable, and rows without that cosine (CPU nodes) always last. */
export function sortNodes(rows: readonly NodeRow[], sort: SortState): NodeRow[] {
  const indexed = rows.map((row, index) => ({ row, index }));
  if (sort.key === 'model') {
    return (sort.direction === 'asc' ? indexed : indexed.reverse()).map((x) => x.row);
  }
  const key = sort.key;
  const sign = sort.direction === 'asc' ? 1 : -1;
  indexed.sort((a, b) => {
    const va = a.row[key];
    const vb = b.row[key];
    const ha = typeof va === 'number';
    const hb = typeof vb === 'number';
    if (ha && hb && va !== vb) {
      return sign * ((va as number) - (vb as number));
    }
    if (ha !== hb) {
      return ha ? -1 : 1;
    }
    return a.index - b.index;
  });
  return indexed.map((x) => x.row);
}

/** A click on a column: a new column sorts worst first, the same column flips direction. */
export function nextSort(current: SortState, key: SortKey): SortState {
  if (key === 'model') {
    return MODEL_ORDER;
  }
  if (current.key === key) {
    return { key, direction: current.direction === 'asc' ? 'desc' : 'asc' };
  }
  return { key, direction: 'asc' };
}

export interface RenderOptions {
  /** The webview's nonce for the inline style and script. */
  nonce: string;
  sort?: SortState;
  /** Shown in the heading, e.g. the config's file name. */
  title?: string;
}

const STYLE = `
body { font-family: var(--vscode-font-family); font-size: var(--vscode-font-size); color: var(--vscode-foreground); padding: 0 12px 12px; }
h1 { font-size: 1.2em; } h2 { font-size: 1.05em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: 4px 0; }
th, td { padding: 2px 10px 2px 4px; text-align: left; white-space: nowrap; border-bottom: 1px solid var(--vscode-editorWidget-border, #8884); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
th button { font: inherit; color: var(--vscode-textLink-foreground); background: none; border: none; padding: 0; cursor: pointer; }
tr.below td { background: var(--vscode-inputValidation-errorBackground, #f003); }
td.below { color: var(--vscode-errorForeground, #e51400); font-weight: bold; }
.status-ok { color: var(--vscode-testing-iconPassed, #388a34); }
.status-failed { color: var(--vscode-errorForeground, #e51400); }
.muted { color: var(--vscode-descriptionForeground); }
code { font-family: var(--vscode-editor-font-family); }
`;

// The only script: header clicks go back to the extension, which sorts and renders again.
const SCRIPT = `
const vscode = acquireVsCodeApi();
document.querySelectorAll('[data-sort]').forEach((el) => {
  el.addEventListener('click', () => vscode.postMessage({ type: 'sort', key: el.getAttribute('data-sort') }));
});
`;

function page(nonce: string, title: string, body: string): string {
  const csp = `default-src 'none'; style-src 'nonce-${nonce}'; script-src 'nonce-${nonce}';`;
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>${escapeHtml(title)}</title>
<style nonce="${nonce}">${STYLE}</style>
</head>
<body>
${body}
<script nonce="${nonce}">${SCRIPT}</script>
</body>
</html>
`;
}

function sortHeader(label: string, key: SortKey, sort: SortState, numeric: boolean): string {
  const active = sort.key === key && key !== 'model';
  const aria = active ? (sort.direction === 'asc' ? 'ascending' : 'descending') : 'none';
  const arrow = active ? (sort.direction === 'asc' ? ' ▲' : ' ▼') : '';
  return `<th${numeric ? ' class="num"' : ''} aria-sort="${aria}"><button data-sort="${key}">${escapeHtml(label)}${arrow}</button></th>`;
}

function cosineCell(value: number | null | undefined, threshold: number): string {
  return `<td class="num${isBelow(value, threshold) ? ' below' : ''}">${formatNumber(value)}</td>`;
}

/** Without calibration (`calibration_type: skip`) hb_compile lists only where each node runs. */
function placementTable(rows: readonly NodeRow[]): string {
  const body = rows.map((row, i) =>
    `<tr data-node="${escapeHtml(row.node)}"><td class="num muted">${i + 1}</td><td><code>${escapeHtml(row.node)}</code></td>` +
    `<td>${escapeHtml(row.node_type)}</td><td>${escapeHtml(row.on)}</td><td>${escapeHtml(row.output_dtype)}</td></tr>`);
  return '<table id="nodes"><thead><tr><th class="num">#</th><th>Node</th><th>NodeType</th><th>ON</th>' +
    `<th>Output Data Type</th></tr></thead><tbody>\n${body.join('\n')}\n</tbody></table>`;
}

function nodeTable(rows: readonly NodeRow[], sort: SortState, threshold: number): string {
  const head = [
    sortHeader('#', 'model', sort, true),
    '<th>Node</th><th>NodeType</th><th>ON</th><th class="num">Threshold</th>',
    sortHeader('Calibrated Cosine', 'calibrated_cosine', sort, true),
    sortHeader('Quantized Cosine', 'quantized_cosine', sort, true),
    '<th>Output Data Type</th>',
  ].join('');
  const order = new Map(rows.map((row, i) => [row, i + 1]));
  const body = sortNodes(rows, sort).map((row) => {
    const below = nodeBelow(row, threshold);
    const members = row.nodes && row.nodes.length > 1 ? ` title="${escapeHtml(row.nodes.join(', '))}"` : '';
    return `<tr${below ? ' class="below"' : ''} data-node="${escapeHtml(row.node)}">` +
      `<td class="num muted">${order.get(row)}</td><td${members}><code>${escapeHtml(row.node)}</code></td>` +
      `<td>${escapeHtml(row.node_type)}</td><td>${escapeHtml(row.on)}</td>` +
      `<td class="num">${formatNumber(row.threshold)}</td>` +
      cosineCell(row.calibrated_cosine, threshold) + cosineCell(row.quantized_cosine, threshold) +
      `<td>${escapeHtml(row.output_dtype)}</td></tr>`;
  });
  return `<table id="nodes"><thead><tr>${head}</tr></thead><tbody>\n${body.join('\n')}\n</tbody></table>`;
}

function outputTable(rows: readonly OutputRow[], threshold: number): string {
  const head = '<th>TensorName</th><th class="num">Calibrated Cosine</th><th class="num">Quantized Cosine</th>' +
    '<th class="num">L1</th><th class="num">L2</th><th class="num">Chebyshev</th>';
  const body = rows.map((row) => {
    const below = isBelow(outputCosine(row), threshold);
    return `<tr${below ? ' class="below"' : ''}><td><code>${escapeHtml(row.tensor)}</code></td>` +
      cosineCell(row.cosine, threshold) + cosineCell(row.quantized_cosine, threshold) +
      `<td class="num">${formatNumber(row.l1)}</td><td class="num">${formatNumber(row.l2)}</td>` +
      `<td class="num">${formatNumber(row.chebyshev)}</td></tr>`;
  });
  return `<table id="outputs"><thead><tr>${head}</tr></thead><tbody>\n${body.join('\n')}\n</tbody></table>`;
}

function stageList(result: CompileResult): string {
  if (result.stages.length === 0) {
    return '';
  }
  const rows = result.stages.map((s) =>
    `<tr><td>${escapeHtml(s.name)}</td><td>${escapeHtml(s.status)}</td>` +
    `<td class="num">${formatNumber(s.seconds, 2)}</td><td class="muted">${escapeHtml(s.reason ?? '')}</td></tr>`);
  return `<h2>Stages</h2><table id="stages"><thead><tr><th>Stage</th><th>Status</th><th class="num">Seconds</th>` +
    `<th>Why</th></tr></thead><tbody>\n${rows.join('\n')}\n</tbody></table>`;
}

function problemList(result: CompileResult): string {
  if (result.problems.length === 0) {
    return '';
  }
  const items = result.problems.map((p) => {
    const where = p.file ? `${p.file}${p.span ? `:${p.span.line + 1}:${p.span.col + 1}` : ''}: ` : '';
    return `<li class="${p.severity === 'error' ? 'status-failed' : ''}">${escapeHtml(where)}${escapeHtml(p.severity)}: ` +
      `${escapeHtml(p.message)}</li>`;
  });
  return `<h2>Problems</h2><ul id="problems">\n${items.join('\n')}\n</ul>`;
}

function statusWord(result: CompileResult): string {
  if (result.cancelled) {
    return '<span class="status-failed">cancelled</span>';
  }
  return result.ok ? '<span class="status-ok">ok</span>' : '<span class="status-failed">failed</span>';
}

/** The whole page for one config's last result, or a hint when there is none yet. */
export function renderPage(result: CompileResult | null | undefined, options: RenderOptions): string {
  const title = options.title ?? 'hb_compile similarity';
  if (!result) {
    return page(options.nonce, title, `<h1>${escapeHtml(title)}</h1>` +
      '<p class="muted">No compile result yet. Save the config or run <b>hb_compile: Compile now</b>.</p>');
  }
  const sort = options.sort ?? MODEL_ORDER;
  const thresholds = thresholdsOf(result);
  const parts = [`<h1>${escapeHtml(title)}</h1>`];
  const seconds = typeof result.seconds === 'number' ? ` in ${result.seconds.toFixed(2)} s` : '';
  const version = typeof result.version === 'number' ? `, version ${result.version}` : '';
  parts.push(`<p id="summary">${statusWord(result)}${seconds}${version}` +
    (result.working_dir ? ` — working_dir <code>${escapeHtml(result.working_dir)}</code>` : '') + '</p>');
  const table = result.table;
  if (table) {
    const below = table.nodes.filter((row) => nodeBelow(row, thresholds.node)).length;
    if (table.calibrated) {
      parts.push(`<p class="muted">${table.nodes.length} nodes, <span id="below-count">${below}</span> under the node ` +
        `threshold ${thresholds.node}; outputs are judged against ${thresholds.output}.</p>`);
      parts.push('<h2>Outputs</h2>', outputTable(table.outputs, thresholds.output));
      parts.push('<h2>Nodes</h2>', nodeTable(table.nodes, sort, thresholds.node));
    } else {
      parts.push(`<p class="muted">${table.nodes.length} nodes; no calibration data, so no cosines.</p>`);
      parts.push('<h2>Nodes</h2>', placementTable(table.nodes));
    }
  } else {
    parts.push('<p class="muted">No similarity table: the run stopped before the report stage.</p>');
  }
  parts.push(problemList(result), stageList(result));
  return page(options.nonce, title, parts.join('\n'));
}
