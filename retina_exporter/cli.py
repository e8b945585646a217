"""``retina-exporter`` command line: ``agent``, ``lab``, ``demo``.

Exit status 2 with a one-line explanation for anything the user must fix (config, interface, capability, kernel
headers); 0 after a clean stop."""

from __future__ import annotations

import argparse
import logging
import sys

from retina_core.version import __version__


def _die(msg: str) -> int:
    print(f"retina-exporter: error: {msg}", file=sys.stderr)
    return 2


def cmd_agent(args) -> int:
    from retina_exporter.config import ConfigError, load_config
    from retina_exporter.errors import StartupError

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        return _die(str(exc))
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for warning in cfg.warnings:
        logging.getLogger("retina_exporter.config").warning("%s", warning)
    from retina_exporter.agent import Agent

    try:
        agent = Agent(cfg, config_path=args.config)
        agent.run_until_signal()
    except StartupError as exc:
        return _die(str(exc))
    return 0


def cmd_lab(args) -> int:
    from retina_exporter.lab.cli import main_lab

    return main_lab(args.lab_args)


def cmd_demo(args) -> int:
    from retina_exporter.lab.demo import run_demo

    return run_demo(pods=args.pods, port=args.port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="retina-exporter", description="eBPF network observability agent")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("agent", help="run the agent")
    p.add_argument("--config", help="YAML config file (docs/config.md)")
    p.set_defaults(func=cmd_agent)
    p = sub.add_parser("lab", help="local lab of network namespaces: lab up|down", add_help=False)
    p.add_argument("lab_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_lab)
    p = sub.add_parser("demo", help="lab + agent + live traffic (make run)")
    p.add_argument("--pods", type=int, default=3)
    p.add_argument("--port", type=int, default=10093, help="loopback port forwarded to the agent")
    p.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
