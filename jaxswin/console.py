"""One path for what the command-line tools tell the user while they work.

Messages go through the ``logging`` module under the ``jaxswin`` logger (modules log to
``jaxswin.<module>``); :func:`setup` gives it one handler that writes through ``tqdm.write``, so
a message lands above a progress bar instead of tearing it. Only process 0 of a multi-process
run shows information; the others show errors only. Results a command exists to produce
(tables, summaries) are its standard output, not log messages.
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

from jaxswin import parallel


class TqdmHandler(logging.Handler):
    """Writes records to stderr with tqdm.write, which keeps an active bar intact."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


class _Formatter(logging.Formatter):
    """The message alone; a warning or error says so first ("warning: ...")."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def setup() -> None:
    """Shows the jaxswin loggers' messages on stderr (once per process; CLIs call it)."""
    root = logging.getLogger("jaxswin")
    if not any(isinstance(h, TqdmHandler) for h in root.handlers):
        handler = TqdmHandler()
        handler.setFormatter(_Formatter("%(message)s"))
        root.addHandler(handler)
    # Ours alone: libraries (absl via orbax) give the root logger a plain handler of its own.
    root.propagate = False
    root.setLevel(logging.INFO if parallel.is_main() else logging.ERROR)


def progress(**options) -> tqdm:
    """A progress bar on stderr, shown on process 0 only, redrawn at most every second on a
    terminal and every minute into a log file."""
    options.setdefault("disable", not parallel.is_main())
    return tqdm(file=sys.stderr, dynamic_ncols=True,
                mininterval=1.0 if sys.stderr.isatty() else 60.0, **options)
