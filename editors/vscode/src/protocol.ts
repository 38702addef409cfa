/**
 * hblsp's own protocol, as written in docs/protocol.md: the commands the server advertises and
 * the `hblsp/compileResult` payload. Types only (no `vscode` import), so the table renderer and
 * the Node tests share them with the extension.
 */

/** Commands the server implements (`workspace/executeCommand`). */
export const ServerCommand = {
  compile: 'hblsp.compile',
  showTable: 'hblsp.showTable',
  cancel: 'hblsp.cancel',
} as const;

/** hblsp's default config file names (hblsp/settings.py DEFAULT_PATTERNS; package.json repeats them as the setting's default). */
export const DEFAULT_FILE_PATTERNS: readonly string[] = [
  '*.hb.yaml', '*.hb.yml', '*hb_compile*.yaml', '*hb_compile*.yml',
  '*hb_mapper*.yaml', '*hb_mapper*.yml', '*hb_config*.yaml', '*hb_config*.yml',
];

/** The server → client notification sent after every run. */
export const COMPILE_RESULT = 'hblsp/compileResult';

/**
 * The extension's own commands (contributed in package.json). They differ from the server's ids
 * because vscode-languageclient registers a VS Code command for every command the server
 * advertises; ours add the active document's URI and version before calling the server's.
 */
export const ClientCommand = {
  compileNow: 'hbcompile.compileNow',
  showSimilarityTable: 'hbcompile.showSimilarityTable',
  openWorkingDir: 'hbcompile.openWorkingDir',
  restartServer: 'hbcompile.restartServer',
  cancelCompile: 'hbcompile.cancelCompile',
} as const;

export interface Span {
  line: number;
  col: number;
  end_line: number;
  end_col: number;
}

export interface StageRun {
  name: string;
  status: string; // "ran" / "reused" / "skipped" / "failed" …
  reason?: string | null;
  seconds?: number | null;
  key?: string | null;
}

export interface ResultProblem {
  code?: string | null;
  severity: string;
  message: string;
  path?: (string | number)[] | null;
  file?: string | null;
  span?: Span | null;
}

/** One row of the node table (engine.similarity.NodeRow); null where hb_compile prints `--`. */
export interface NodeRow {
  node: string;
  node_type: string;
  on: string;
  tensor: string;
  threshold: number | null;
  calibrated_cosine: number | null;
  quantized_cosine?: number | null;
  output_dtype: string;
  nodes?: string[];
}

/** One model output (engine.similarity.OutputRow). */
export interface OutputRow {
  tensor: string;
  cosine: number;
  quantized_cosine?: number | null;
  l1: number;
  l2: number;
  chebyshev: number;
}

export interface SimilarityTable {
  calibrated: boolean;
  nodes: NodeRow[];
  outputs: OutputRow[];
}

export interface Thresholds {
  node: number;
  output: number;
}

/** `hblsp/compileResult` params; also what `hblsp.showTable` returns. */
export interface CompileResult {
  uri: string;
  version?: number | null;
  ok: boolean;
  cancelled: boolean;
  seconds?: number | null;
  stages: StageRun[];
  problems: ResultProblem[];
  artefacts: Record<string, string>;
  working_dir?: string | null;
  table: SimilarityTable | null;
  thresholds?: Thresholds | null;
}

/** hb_compile's own defaults when the server sends no thresholds. */
export const DEFAULT_THRESHOLDS: Thresholds = { node: 0.99, output: 0.8 };

export function isCompileResult(value: unknown): value is CompileResult {
  if (typeof value !== 'object' || value === null) {
    return false;
  }
  const v = value as Partial<CompileResult>;
  return typeof v.uri === 'string' && typeof v.ok === 'boolean' && Array.isArray(v.stages);
}
