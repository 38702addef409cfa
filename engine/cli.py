"""`hb_compile`: the command line, drop-in for hb_compile's flags and modes (reference §2.1).

All user-facing failure handling is here: problems are printed one line each (file:line:col,
hb_compile's wording), the exit code is non-zero, and no traceback reaches the console
(it goes to hb_compile.log at DEBUG).
"""

from __future__ import annotations

import os
import sys

from engine import __version__

TYPE_CHECKING = False  # typing itself costs 3 ms at start-up
if TYPE_CHECKING:
    import argparse
    import threading
    from collections.abc import Callable
    from pathlib import Path

    from engine.problems import Problem, Severity

# The console script imports this module, and a run a warm `hblsp daemon` serves needs nothing more
# from it than main(): so only os and sys here, and every other import where it is used (argparse,
# logging and engine.problems alone cost a fresh interpreter ~20 ms of CPU, a third of a warm run).

SKIP_TO_UNTIL = {"export": "ptq", "convert": "ptq", "compile": "report"}  # compile: .bc, no .hbm
ANSWERED_HERE = ("--help", "--version", "--no-daemon")  # and -h: what the daemon must not be asked


def _log():
    import logging

    return logging.getLogger("hbcompile")


def build_parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(prog="hb_compile", description="Quantize and compile a float ONNX/Caffe model "
                                "from an hb_compile YAML config.")
    p.add_argument("-c", "--config", help="YAML config")
    p.add_argument("-m", "--model", help="model file (.onnx or .caffemodel; recompiling a .bc is not supported)")
    p.add_argument("--proto", help="Caffe prototxt (with -m x.caffemodel)")
    p.add_argument("--march", help="target march; required in fast-perf and check modes")
    p.add_argument("-i", "--input-shape", nargs=2, action="append", metavar=("NAME", "SHAPE"),
                   help="override a model input shape, e.g. -i images 1x3x640x640 (repeatable)")
    p.add_argument("--fast-perf", action="store_true", help="build a perf-only model without calibration data")
    p.add_argument("--skip", choices=sorted(SKIP_TO_UNTIL), help="stop early")
    p.add_argument("--until", help=argparse.SUPPRESS)  # stage name, for tests and tools
    p.add_argument("--sensitivity", nargs="?", const=10, type=_positive, metavar="N",
                   help="after the run, print the top N (default 10) nodes whose quantization costs the output "
                        "the most (isolated, weight-only, activation-only and accumulated loss); reuses calibrate's "
                        "ranking or computes it once on the run's artefacts")
    p.add_argument("--no-daemon", action="store_true", help="run in this process even if `hblsp daemon` runs")
    p.add_argument("--version", action="version", version=f"hb_compile (hbcompile) {__version__}")
    return p


def _positive(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of nodes (1 or more), got '{text}'")
    return value


def _print_problems(problems: list[Problem], min_severity: Severity | None = None) -> None:
    from engine.problems import Severity

    log = _log()
    for prob in problems:
        if prob.severity <= (Severity.INFO if min_severity is None else min_severity):
            (log.error if prob.is_error else log.warning if prob.severity == Severity.WARNING else log.info)(
                prob.render())


def main(argv: list[str] | None = None) -> int:
    """Entry point: a running `hblsp daemon` does the work warm; otherwise run here.

    The daemon is asked first, before this process parses or imports anything: it parses argv as
    a cold run does, usage errors included. Help, the version and --no-daemon are answered here,
    and every run the daemon does not take runs here exactly as a cold run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    declined = None
    if not os.environ.get("HBCOMPILE_NO_DAEMON") and not answered_here(argv):
        from engine.daemon_client import forward

        code, declined = forward(["--no-daemon", *argv])  # first: an argv ending in `--` takes no more options
        if code is not None:
            return code
    if declined is not None:
        from engine.daemon_client import say

        build_parser().parse_args(argv)  # help, version, a usage error: before any word about the daemon
        say(declined)
    return cold_main(argv)


def answered_here(argv: list[str]) -> bool:
    """Whether argv may ask for help, the version or no daemon, in any spelling argparse takes
    (`-h`, `-hc x`, `--he`, `--vers`, `--no-d`, `--help=x`, which it rejects). Every word it says yes
    to is one argparse reads as an option (values cannot start with `-h` or `--`), so a yes means
    help, the version, --no-daemon or a usage error: never a run the daemon should have served."""
    for word in argv:
        name = word.split("=", 1)[0]
        if word.startswith("-h") or (word.startswith("--") and len(name) > 2
                                     and any(flag.startswith(name) for flag in ANSWERED_HERE)):
            return True
    return False


def cold_main(argv: list[str], cancel: threading.Event | None = None) -> int:
    """One run in this process (also what the daemon calls for each forwarded run; it sets
    `cancel` when its client hangs up)."""
    import logging
    import traceback

    from engine.logsetup import setup_logging
    from engine.problems import HbError

    args = build_parser().parse_args(argv)
    logging.raiseExceptions = False  # a closed stdout (| head) must not print handler tracebacks
    log_path = setup_logging()
    log = _log()
    try:
        return _main(args, log_path, cancel)
    except HbError as exc:
        _print_problems(exc.problems)
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as exc:  # a bug: one line on the console, the traceback in the log
        log.debug(traceback.format_exc())
        log.error(f"internal error: {type(exc).__name__}: {exc} (details in {log_path})")
        return 2


def _main(args: argparse.Namespace, log_path: Path, cancel: threading.Event | None = None) -> int:
    from engine.modes import config_for_mode, on_command_line

    log = _log()
    log.info("Start hb_compile...")
    log.info(f"hb_compile version: {__version__}")
    config_path, mode_until = config_for_mode(args)
    until = args.until or (SKIP_TO_UNTIL[args.skip] if args.skip else None) or mode_until
    if mode_until is not None and until is not None:  # check mode stops at its stage, whatever --skip says
        order = _available_stages()
        until = min(until, mode_until, key=lambda s: order.index(s) if s in order else len(order))
    check_mode = bool(args.model and not args.config and not args.fast_perf)
    generated = bool(args.model and not args.config)
    told = (lambda problems: on_command_line(problems, config_path, args)) if generated else None
    return run_config(config_path, until, log_path, check_mode, args.sensitivity, cancel, told)


def run_config(config_path: Path, until: str | None, log_path: Path, check_mode: bool = False,
               sensitivity: int | None = None, cancel: threading.Event | None = None,
               told: Callable[[list[Problem]], list[Problem]] | None = None) -> int:
    """`told`: how problems are placed for the user (check / fast-perf mode: on the command-line option,
    not in the config the tool generated)."""
    from engine.config import read_config
    from engine.logsetup import copy_log
    from engine.pipeline import default_engine
    from engine.report.console import print_problems as print_placed
    from engine.report.console import print_run

    def print_problems(problems: list[Problem]) -> None:
        print_placed(told(problems) if told else problems)

    log = _log()
    stages = _available_stages()
    if until is not None and until not in stages:
        until = stages[-1]
    loaded = read_config(config_path)
    print_problems(loaded.problems)  # warnings before the work, errors end the run here
    progress, engine = ConsoleProgress(), default_engine()
    try:
        report = engine.run(config_path, until=until, progress=progress, cancel=cancel, loaded=loaded)
    finally:
        progress.close()
    if report.cancelled:  # the daemon's client hung up (Ctrl-C): nothing more to say to anyone
        log.error("interrupted")
        return 130
    print_problems(model_warnings(report, loaded))
    print_problems(report.problems[len(loaded.problems):])
    print_run(report)
    if report.ok and sensitivity is not None:
        print_sensitivity(report, engine, sensitivity)
    if report.ok:  # a failed run leaves working_dir as it was; its log stays in the cwd
        try:
            copy_log(log_path, report.config.working_dir)
        except OSError:
            pass
    if not report.ok:
        return 1
    if check_mode:
        print_check_table(report)
    log.info("The hb_compile completes running")
    return 0


def model_warnings(report, loaded) -> list[Problem]:
    """The config rules that need the model (unknown node names, input_shape differing from the model's),
    run on this run's config with the model facts parse keeps: the same warnings hblsp shows."""
    from engine.config.inputs import check_with_model
    from engine.config.loader import locate
    from engine.frontend.model_info import ModelInfo

    part = (report.results.get("parse") or {}).get("model_check")
    if report.config is None or not part:
        return []
    found = [p for p in check_with_model(report.config.data, ModelInfo.from_checked_part(part)) if not p.is_error]
    placed = locate(found, loaded.doc, str(report.config_path)) if loaded.doc else found
    return sorted(placed, key=lambda p: (p.span.line, p.span.col) if p.span else (-1, -1))


def _available_stages() -> list[str]:
    from engine.stages import STAGES

    return [s.name for s in STAGES]


def print_check_table(report) -> None:
    """Check mode: where each node of the optimized model would run (`Node ON Subgraph Type`)."""
    import onnx

    from engine.compile.partition import NODE_TABLE_HEADER, format_table, node_table, partition
    from engine.quantize.planner import QuantOptions

    config = report.config
    model = onnx.load(str(config.working_dir / f"{config.prefix}_optimized_float_model.onnx"))
    table = format_table(NODE_TABLE_HEADER, node_table(partition(model, options=QuantOptions.from_config(config))))
    _log().info("The converted model node information:\n" + table)


def print_sensitivity(report, engine, n: int) -> None:
    """`--sensitivity N`: the top N culprits, a rich table on a terminal and the plain one in the log."""
    from engine.report.sensitivity import run_sensitivity

    log = _log()
    progress = ConsoleProgress()
    try:
        found = run_sensitivity(report, engine, n, progress=lambda m, f: progress("sensitivity", m, f))
    finally:
        progress.close()
    culprits = found.culprits
    text = culprits.title(n) + ":\n" + culprits.table_text(n)
    if sys.stdout.isatty():
        log.debug(text)
        culprits.print_rich(n)
    else:
        log.info(text)
    how = {"calibrate": "calibrate's own ranking", "memo": "computed by an earlier --sensitivity run",
           "computed": f"computed on this run's artefacts in {found.seconds:.1f}s ({found.cpu_seconds:.1f}s of CPU)"}[found.source]
    log.info(f"Sensitivity ranking: {how}; all {len(culprits.rows)} rows in {found.path}")
    for note in culprits.notes:
        log.info(f"  {note}")


class ConsoleProgress:
    """Stage start and end lines always (each as it happens); a live bar (rate, ETA) for long stages on a
    terminal only."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.bar = None
        self.task = None

    def __call__(self, stage: str, message: str, fraction: float | None) -> None:
        if (fraction == 0.0 and message.startswith("Start to")) or \
                (fraction == 1.0 and message.startswith(("Successfully ", "Reuse "))):
            self.close()
            _log().info(message)
            return
        if not self.tty or fraction is None:
            if fraction is None or fraction >= 1.0:
                _log().debug(message)
            return
        if self.bar is None:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                TimeRemainingColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(message, total=1.0)
        self.bar.update(self.task, completed=fraction, description=message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = self.task = None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
