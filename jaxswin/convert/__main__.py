"""``jaxswin-convert timm ...`` / ``jaxswin-convert twin ...`` (or ``python -m jaxswin.convert``):
PyTorch weights to jaxswin files; see jaxswin.convert.from_timm and .from_twin."""

from __future__ import annotations

import sys

from jaxswin import cli as cli_lib
from jaxswin.convert import from_timm, from_twin
from jaxswin.errors import cli

COMMANDS = {"timm": from_timm, "twin": from_twin}


@cli
def main(argv=None):
    parser = cli_lib.parser(
        "jaxswin.convert", "Convert PyTorch weights to jaxswin files (needs the [torch] extra)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{timm,twin}")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.DESCRIPTION, description=command.__doc__,
                                  formatter_class=parser.formatter_class)
        command.add_arguments(sub)
    args = parser.parse_args(argv)
    COMMANDS[args.command].run(args)
    return 0


def entry_point(command: str, module: str):
    """A one-command CLI (the repository's convert/*.py scripts): same flags, its own name."""

    @cli
    def main_of_one(argv=None):
        converter = COMMANDS[command]
        parser = cli_lib.parser(module, converter.DESCRIPTION)
        parser.description = converter.__doc__
        converter.add_arguments(parser)
        converter.run(parser.parse_args(argv))
        return 0

    return main_of_one


if __name__ == "__main__":
    sys.exit(main())
