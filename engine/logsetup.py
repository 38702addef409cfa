"""hb_compile.log: DEBUG to a file in the cwd (copied into working_dir at the end), INFO to the console."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

LOG_NAME = "hb_compile.log"
FILE_FORMAT = "%(asctime)s file: %(filename)s func: %(module)s line No: %(lineno)d %(message)s"


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"ERROR {msg}"
        if record.levelno >= logging.WARNING:
            return f"WARNING {msg}"
        return msg


def setup_logging(log_dir: Path | None = None, console: bool = True) -> Path:
    """Attach the file and console handlers to the 'hbcompile' logger; returns the log path."""
    logger = logging.getLogger("hbcompile")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    path = (log_dir or Path.cwd()) / LOG_NAME
    try:
        fh = logging.FileHandler(path, mode="w", encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter(FILE_FORMAT))
        logger.addHandler(fh)
    except OSError:
        pass  # a read-only cwd must not stop the compile; the working_dir copy is skipped then
    if console:
        ch = logging.StreamHandler(sys.stdout)
        ch.setLevel(logging.INFO)
        ch.setFormatter(_ConsoleFormatter())
        logger.addHandler(ch)
    return path


def close_logging() -> None:
    logger = logging.getLogger("hbcompile")
    for h in list(logger.handlers):
        h.flush()
        if isinstance(h, logging.FileHandler):
            logger.removeHandler(h)
            h.close()


def copy_log(log_path: Path, working_dir: Path) -> None:
    for h in logging.getLogger("hbcompile").handlers:
        h.flush()
    if log_path.is_file() and working_dir.is_dir() and log_path.resolve() != (working_dir / LOG_NAME).resolve():
        shutil.copyfile(log_path, working_dir / LOG_NAME)
