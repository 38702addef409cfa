/**
 * The runs hblsp reports as work-done progress, tracked for the status bar (no `vscode` import:
 * unit-tested in Node). vscode-languageclient still draws its own progress; the client's
 * `handleWorkDoneProgress` middleware shows every `$/progress` value here first.
 */

import type { ProgressToken, WorkDoneProgressBegin, WorkDoneProgressEnd, WorkDoneProgressReport } from 'vscode-languageserver-protocol';
import type { RunningStage } from './status';

export type ProgressValue = WorkDoneProgressBegin | WorkDoneProgressReport | WorkDoneProgressEnd;

interface Run {
  token: ProgressToken;
  stage: RunningStage;
  cancellable: boolean;
}

export class StageTracker {
  private readonly runs = new Map<ProgressToken, Run>();
  private readonly listeners = new Set<(stage: RunningStage | undefined) => void>();

  /** Take one `$/progress` value; listeners hear the stage to show afterwards. */
  update(token: ProgressToken, value: ProgressValue): void {
    if (value.kind === 'begin') {
      this.runs.delete(token); // a reused token starts over, and moves to the end (newest)
      this.runs.set(token, {
        token,
        cancellable: value.cancellable === true,
        stage: { title: value.title, message: value.message, percentage: value.percentage },
      });
    } else if (value.kind === 'report') {
      const run = this.runs.get(token);
      if (!run) {
        return;
      }
      run.stage = { ...run.stage, message: value.message ?? run.stage.message, percentage: value.percentage ?? run.stage.percentage };
      run.cancellable = value.cancellable ?? run.cancellable;
    } else if (!this.runs.delete(token)) {
      return;
    }
    this.fire();
  }

  /** The stage shown now: the newest run's. */
  get current(): RunningStage | undefined {
    let last: Run | undefined;
    for (const run of this.runs.values()) {
      last = run;
    }
    return last?.stage;
  }

  /** Tokens of the runs the server lets the user cancel (`window/workDoneProgress/cancel`). */
  cancellable(): ProgressToken[] {
    return [...this.runs.values()].filter((r) => r.cancellable).map((r) => r.token);
  }

  /** Forget every run (the server stopped). */
  clear(): void {
    if (this.runs.size > 0) {
      this.runs.clear();
      this.fire();
    }
  }

  onDidChange(listener: (stage: RunningStage | undefined) => void): { dispose(): void } {
    this.listeners.add(listener);
    return { dispose: () => this.listeners.delete(listener) };
  }

  private fire(): void {
    const stage = this.current;
    for (const listener of [...this.listeners]) {
      listener(stage);
    }
  }
}
