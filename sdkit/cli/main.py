"""`python -m sdkit` / `sdkit`: headless runs.

    sdkit generate "a red circle" -n 8 --seed 0 --model sdkit:tiny --out outputs
    sdkit "a red circle" -n 8        # 'generate' is the default command

Each subcommand lives in the module that does the work (`add_parser(subparsers)`),
so the CLI stays a thin layer over the package.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from sdkit.errors import SdkitError

DEBUG_ENV = "SDKIT_DEBUG"  # set to 1 for the full traceback of an unexpected error

# name -> module providing add_parser(subparsers); the module sets `func` on its parser.
COMMANDS = {
    "generate": "sdkit.cli.generate",
    "sweep": "sdkit.cli.sweep",
    "img2img": "sdkit.cli.edit", "inpaint": "sdkit.cli.edit", "outpaint": "sdkit.cli.edit",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdkit", description="Stable Diffusion candidates with CLIP reranking.")
    parser.add_argument("--version", action="version", version=f"sdkit {importlib.import_module('sdkit').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


def explicit_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The `dest`s given on the command line (not left at their defaults): `--resume` refuses those that differ."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[argv[0]]
    saved, defaults = [(a, a.default) for a in sub._actions], sub._defaults
    for a, _ in saved:
        a.default = argparse.SUPPRESS
    sub._defaults = {}  # set_defaults() values (func, task) are not given either
    try:
        ns, _ = sub.parse_known_args(argv[1:])
    finally:
        for a, d in saved:
            a.default = d
        sub._defaults = defaults
    return {k for k, v in vars(ns).items() if not (k == "prompt" and v == [])}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `sdkit "prompt" ...` means `sdkit generate "prompt" ...`.
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "generate")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    args.explicit = explicit_options(parser, argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"sdkit: error: {e}", file=sys.stderr)
        return 2
    except SdkitError as e:
        print(f"sdkit: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sdkit: interrupted; the finished images are saved with their metadata (--resume FOLDER goes on)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (a CLI user gets one line, not a traceback, whatever broke)
        if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            raise
        print(f"sdkit: error: {type(e).__name__}: {e}\n(an unexpected error: {DEBUG_ENV}=1 shows the traceback; "
              "finished images are saved)", file=sys.stderr)
        return 1
