"""``gateway run | check | version``: the command line. Flags mirror the settings table.

Exit codes (DESIGN.md): 0 clean stop, 1 runtime failure (port in use, ...), 2 invalid configuration or
usage. A configuration error is one line naming the file, the key and what was expected; no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from gateway import __version__
from gateway.config import ConfigError
from gateway.settings import SETTINGS

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="A high-throughput API gateway.",
        epilog="Every flag is also an environment variable GATEWAY_<NAME>; precedence is "
               "flag > environment > config file > default.",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="run the gateway")
    check = commands.add_parser("check", help="validate a config and print its routes and upstreams")
    commands.add_parser("version", help="print the version")
    for sub in (run, check):
        for setting in SETTINGS:
            if setting.flag_type == "bool":
                sub.add_argument(setting.flag, dest=setting.name, action=argparse.BooleanOptionalAction,
                                 default=None, help=setting.doc)
            else:
                sub.add_argument(setting.flag, dest=setting.name, default=None, metavar="VALUE",
                                 help=setting.doc)
    return parser


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    return {s.name: getattr(args, s.name) for s in SETTINGS if getattr(args, s.name, None) is not None}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    env = dict(os.environ if environ is None else environ)
    if args.command == "version":
        print(f"gateway {__version__}")
        return EXIT_OK
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    flags = flags_of(args)
    from gateway.loader import load

    try:
        config = load(env, flags)
        if args.command == "check":
            from gateway.admin.config_state import stored_changes

            config = stored_changes(config)  # what a start would run: the admin API's changes included
    except ConfigError as exc:
        print(f"gateway: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        print(config.summary())
        return EXIT_OK
    return run(config, env, flags)


def run(config: Any, environ: Mapping[str, str], flags: Mapping[str, Any]) -> int:
    from gateway.server.logs import setup_logging
    from gateway.server.supervisor import StartupError, Supervisor

    setup_logging(config.server.log_level)
    supervisor = Supervisor(config, environ, flags)
    try:
        supervisor.bind()
    except StartupError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(supervisor.serve())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
