"""Errors caused by what the user gave us (files, options, configs).

Anything raised as a :class:`UserError` reaches the user as one clear line naming the file or
option and the fix, with a non-zero exit, never as a traceback (see :func:`cli`).
"""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """Bad input: the message names the file or option at fault and what to do about it."""


class ConfigError(UserError, ValueError):
    """A preset, config file or `--set` override that cannot be used."""


class DataError(UserError):
    """A dataset, tile or mask that cannot be used."""


class RunStopped(Exception):
    """A run that stopped on purpose (diverged, preempted): one line and its own exit status."""

    exit_code = 1
    prefix = "error"


def cli(main):
    """Wraps a CLI entry point: a UserError becomes `error: ...` on stderr and exit status 2, a
    RunStopped its one line and its own status (jaxswin.resilience lists them)."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except RunStopped as err:
            print(f"{err.prefix}: {err}", file=sys.stderr)
            raise SystemExit(err.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
