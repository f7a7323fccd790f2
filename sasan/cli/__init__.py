"""The ``sasan`` command. One subcommand per stage; each module below registers its own.

The CLI is the edge of the system: it reads paths and environment variables, sets up
logging, calls stage functions and turns :class:`sasan.errors.SasanError` into one line on
stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from sasan import __version__
from sasan.errors import SasanError

# Explicit registry: subcommand group -> module exposing ``register(subparsers)``.
COMMAND_MODULES: tuple[str, ...] = (
    "sasan.cli.data_cmds",      # data phantom, data brain, ingest
    "sasan.cli.prep_cmds",      # validate, preprocess
    "sasan.cli.model_cmds",     # train, evaluate, summary, translate
    "sasan.cli.registry_cmds",  # register
    "sasan.cli.pipeline_cmds",  # pipeline compile / submit / finish-run (Kubeflow)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sasan",
        description="SASAN cross-modality domain adaptation: data, training, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"sasan {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except SasanError as err:
        print(f"sasan {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"sasan {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`sasan summary | head`): stop quietly, like other Unix tools;
        # point stdout at /dev/null so the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:
        # a file that cannot be read or written (a file where a folder must be, permissions,
        # a read-only disk): one line naming it, not a traceback. An OSError that names no
        # file (a lost connection, a full disk mid-write, a bug deep in training) keeps its
        # traceback, as it does with -v
        if args.verbose or err.filename is None:
            raise
        print(f"sasan {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    return int(result or 0)


def describe_os_error(err: OSError) -> str:
    """One line: ``<filename>[ -> <filename2>]: <strerror>``."""
    names = [n for n in (err.filename, err.filename2) if n is not None]
    where = " -> ".join(os.fsdecode(n) if isinstance(n, bytes) else str(n) for n in names)
    return " ".join(f"{where}: {err.strerror or type(err).__name__}".split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
