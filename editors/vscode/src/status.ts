/**
 * What the status bar item says (no `vscode` import: unit-tested in Node). While a run reports
 * progress it shows the running stage; afterwards the worst output cosine of the active config.
 */

import { CompileResult } from './protocol';
import { formatNumber, isBelow, thresholdsOf, worstOutput, nodeBelow } from './table';

export interface RunningStage {
  /** The progress title, e.g. "hb_compile". */
  title: string;
  /** The latest report, e.g. "calibrate: 1 of 32 calibration files changed". */
  message?: string;
  percentage?: number;
}

export type StatusSeverity = 'ok' | 'warning' | 'error' | 'running' | 'none';

export interface StatusView {
  text: string;
  tooltip: string;
  severity: StatusSeverity;
}

export function statusView(result: CompileResult | undefined, running: RunningStage | undefined): StatusView {
  if (running) {
    // The bar shows the stage ("calibrate 47%"); the tooltip the whole report.
    const pct = typeof running.percentage === 'number' ? ` ${Math.round(running.percentage)}%` : '';
    const message = running.message ?? running.title;
    const stage = message.split(':')[0];
    return { text: `$(sync~spin) hb: ${stage}${pct}`, tooltip: `${running.title}: ${message}${pct} — click to cancel`, severity: 'running' };
  }
  if (!result) {
    return { text: '$(circle-outline) hb', tooltip: 'No compile result yet: save the config or run "hb_compile: Compile now"', severity: 'none' };
  }
  const secs = typeof result.seconds === 'number' ? ` in ${result.seconds.toFixed(1)} s` : '';
  if (result.cancelled) {
    return { text: '$(circle-slash) hb: cancelled', tooltip: `The last run was cancelled${secs}`, severity: 'warning' };
  }
  if (!result.ok) {
    const first = result.problems.find((p) => p.severity === 'error') ?? result.problems[0];
    return { text: '$(error) hb: failed', tooltip: first ? first.message : `The last run failed${secs}`, severity: 'error' };
  }
  const worst = worstOutput(result);
  if (!worst) {
    return { text: '$(check) hb', tooltip: `Compiled${secs}; no similarity table (the run stopped before the report stage)`, severity: 'ok' };
  }
  const thresholds = thresholdsOf(result);
  const below = (result.table?.nodes ?? []).filter((row) => nodeBelow(row, thresholds.node)).length;
  const bad = isBelow(worst.cosine, thresholds.output);
  const lines = [`Output ${worst.tensor}: cosine ${formatNumber(worst.cosine)}${secs}`,
    `${below} node(s) under ${thresholds.node}`, 'Click to show the similarity table'];
  return {
    text: `${bad ? '$(warning)' : '$(pulse)'} hb: ${formatNumber(worst.cosine, 4)}`,
    tooltip: lines.join('\n'),
    severity: bad ? 'error' : below > 0 ? 'warning' : 'ok',
  };
}
