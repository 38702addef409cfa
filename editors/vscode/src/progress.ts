/**
 * hblsp's work-done progress (`window/workDoneProgress/create` + `$/progress`), shown in the
 * window's progress area like vscode-languageclient's own, and also handed to the status bar so it
 * can show the running stage. It replaces the client's built-in progress feature: the JSON-RPC
 * connection takes one handler per progress token, so both could not listen.
 */

import * as vscode from 'vscode';
import {
  BaseLanguageClient,
  ClientCapabilities,
  FeatureState,
  StaticFeature,
  WorkDoneProgress,
  WorkDoneProgressBegin,
  WorkDoneProgressCancelNotification,
  WorkDoneProgressCreateParams,
  WorkDoneProgressCreateRequest,
  WorkDoneProgressReport,
  ProgressToken,
} from 'vscode-languageclient';
import { RunningStage } from './status';

interface Run {
  token: ProgressToken;
  stage: RunningStage;
  cancellable: boolean;
  reported: number;
  progress?: vscode.Progress<{ message?: string; increment?: number }>;
  finish?: () => void;
  subscription: vscode.Disposable;
}

export class StageProgress implements StaticFeature {
  private readonly runs = new Map<ProgressToken, Run>();
  private readonly changed = new vscode.EventEmitter<RunningStage | undefined>();
  /** Fires with the newest running stage, or undefined when nothing runs. */
  readonly onDidChange = this.changed.event;

  constructor(private readonly client: BaseLanguageClient) {}

  fillClientCapabilities(capabilities: ClientCapabilities): void {
    capabilities.window = { ...(capabilities.window ?? {}), workDoneProgress: true };
  }

  getState(): FeatureState {
    return { kind: 'static' };
  }

  initialize(): void {
    // Registered after the built-in feature, so this handler is the one the connection keeps.
    this.client.onRequest(WorkDoneProgressCreateRequest.type, (params: WorkDoneProgressCreateParams) => {
      this.track(params.token);
    });
  }

  /** The stage shown now: the most recently started run. */
  get current(): RunningStage | undefined {
    const runs = [...this.runs.values()].filter((r) => r.stage.title !== '');
    return runs.length > 0 ? runs[runs.length - 1].stage : undefined;
  }

  /** Ask the server to stop every cancellable run (`window/workDoneProgress/cancel`). */
  cancelAll(): number {
    let sent = 0;
    for (const run of this.runs.values()) {
      if (run.cancellable) {
        void this.client.sendNotification(WorkDoneProgressCancelNotification.type, { token: run.token });
        sent += 1;
      }
    }
    return sent;
  }

  clear(): void {
    for (const token of [...this.runs.keys()]) {
      this.end(token);
    }
  }

  dispose(): void {
    this.clear();
    this.changed.dispose();
  }

  private track(token: ProgressToken): void {
    if (this.runs.has(token)) {
      return;
    }
    const run: Run = {
      token,
      stage: { title: '' },
      cancellable: false,
      reported: 0,
      subscription: this.client.onProgress(WorkDoneProgress.type, token, (value) => {
        if (value.kind === 'begin') {
          this.begin(run, value);
        } else if (value.kind === 'report') {
          this.report(run, value);
        } else {
          this.end(token);
        }
      }),
    };
    this.runs.set(token, run);
  }

  private begin(run: Run, value: WorkDoneProgressBegin): void {
    run.cancellable = value.cancellable === true;
    run.stage = { title: value.title, message: value.message, percentage: value.percentage };
    void vscode.window.withProgress({ location: vscode.ProgressLocation.Window, title: value.title }, (progress) => {
      run.progress = progress;
      this.show(run);
      return new Promise<void>((resolve) => {
        run.finish = resolve;
        if (!this.runs.has(run.token)) {
          resolve(); // ended before VS Code called back
        }
      });
    });
    this.changed.fire(this.current);
  }

  private report(run: Run, value: WorkDoneProgressReport): void {
    run.stage = { ...run.stage, message: value.message ?? run.stage.message, percentage: value.percentage ?? run.stage.percentage };
    if (value.cancellable !== undefined) {
      run.cancellable = value.cancellable;
    }
    this.show(run);
    this.changed.fire(this.current);
  }

  private show(run: Run): void {
    if (!run.progress) {
      return;
    }
    const pct = run.stage.percentage;
    if (typeof pct === 'number') {
      const increment = Math.max(0, Math.min(pct, 100) - run.reported);
      run.reported += increment;
      run.progress.report({ message: run.stage.message, increment });
    } else {
      run.progress.report({ message: run.stage.message });
    }
  }

  private end(token: ProgressToken): void {
    const run = this.runs.get(token);
    if (!run) {
      return;
    }
    this.runs.delete(token);
    run.subscription.dispose();
    run.finish?.();
    this.changed.fire(this.current);
  }
}
