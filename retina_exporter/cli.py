"""``retina-exporter`` command line: ``agent``, ``observe``, ``status``, ``list``, ``lab``, ``demo``.

Exit status 2 with a one-line explanation for anything the user must fix (config, interface, capability, kernel
headers); 0 after a clean stop."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from retina_core.version import __version__


def _die(msg: str) -> int:
    print(f"retina-exporter: error: {msg}", file=sys.stderr)
    return 2


#: The agent's own loggers (every module logs as ``logging.getLogger(__name__)``): ``logLevel`` sets these.
OWN_LOGGERS: tuple[str, ...] = ("retina_exporter", "retina_core", "enricher", "metrics_module")
#: Environment variable with the level of every other logger (pyroute2, bcc, kubernetes, urllib3, grpc, asyncio …).
LIBRARY_LOG_ENV = "RETINA_LOG_LIBRARIES"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL, "panic": logging.CRITICAL,
           "fatal": logging.CRITICAL}


def library_log_level(log_level: str, environ) -> int:
    """The level of third-party loggers: ``RETINA_LOG_LIBRARIES`` (a level name, as ``logLevel`` accepts), or, when
    that is unset or empty, WARNING (``log_level`` if that is higher: ``logLevel: error`` quiets libraries too).
    Raises ValueError naming the variable for anything else."""
    text = environ.get(LIBRARY_LOG_ENV, "").strip()
    if not text:
        return max(logging.WARNING, _LEVELS[log_level])
    level = _LEVELS.get(text.lower())
    if level is None:
        raise ValueError(f"{LIBRARY_LOG_ENV}: invalid value {text!r} from the environment; accepted: debug, info, "
                         "warning (or warn), error, critical (or panic, fatal)")
    return level


def setup_logging(log_level: str, environ) -> None:
    """One stderr handler on the root logger. ``log_level`` (the ``logLevel`` key) is the level of the agent's own
    loggers (:data:`OWN_LOGGERS`); everything else (the root logger) stays at WARNING unless
    ``RETINA_LOG_LIBRARIES`` names another level (:func:`library_log_level`): at ``logLevel: debug`` pyroute2 would
    otherwise log every netlink message it sends and receives."""
    logging.basicConfig(level=library_log_level(log_level, environ),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(_LEVELS[log_level])


def cmd_agent(args) -> int:
    from retina_exporter.config import ConfigError, load_config
    from retina_exporter.errors import StartupError

    try:
        cfg = load_config(args.config)
        setup_logging(cfg.log_level, os.environ)
    except (ConfigError, ValueError) as exc:
        return _die(str(exc))
    for warning in cfg.warnings:
        logging.getLogger("retina_exporter.config").warning("%s", warning)
    from retina_exporter.agent import Agent

    try:
        agent = Agent(cfg, config_path=args.config)
        agent.run_until_signal()
    except StartupError as exc:
        return _die(str(exc))
    return 0


def cmd_cleanup(args) -> int:
    """``cleanup --pins``: detach the links pinned under ``bpfPinPath`` (``--bpf-pin-path``, else the config's) and
    remove the pins, e.g. on uninstall; the agent must not be running."""
    if not args.pins:
        return _die("cleanup: nothing to do: give --pins (detach the pinned links, remove the pins)")
    from retina_exporter.config import ConfigError, load_config

    try:
        root = args.bpf_pin_path or load_config(args.config).bpf_pin_path
    except (ConfigError, ValueError) as exc:
        return _die(str(exc))
    from retina_exporter.datapath.pins import PinError, remove_pins

    try:
        links, pins = remove_pins(root)
    except (PinError, OSError) as exc:
        return _die(f"cleanup --pins of {root}: {exc}")
    print(f"{root}: {links} pinned links detached, {pins} pins removed")
    return 0


def cmd_lab(args) -> int:
    from retina_exporter.lab.cli import main_lab

    return main_lab(args.lab_args)


def cmd_demo(args) -> int:
    from retina_exporter.lab.demo import run_demo

    return run_demo(pods=args.pods, port=args.port)


_CLIENTS = ("observe", "status", "list")


def _hubble_client(name: str):
    def run(args) -> int:
        from retina_exporter.hubble import client

        return getattr(client, f"main_{name}")(args.client_args)

    return run


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else list(argv)
    if args_in and args_in[0] in _CLIENTS:  # their own parsers: argparse's REMAINDER would not take a leading flag
        from retina_exporter.hubble import client

        return getattr(client, f"main_{args_in[0]}")(args_in[1:])
    parser = argparse.ArgumentParser(prog="retina-exporter", description="eBPF network observability agent")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("agent", help="run the agent")
    p.add_argument("--config", help="YAML config file (docs/config.md)")
    p.set_defaults(func=cmd_agent)
    for name, help_text in (("observe", "observe flows of a Hubble server (this agent's socket by default)"),
                            ("status", "health and flow-buffer status of a Hubble server"),
                            ("list", "list nodes or namespaces of a Hubble server")):
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("client_args", nargs=argparse.REMAINDER)
        p.set_defaults(func=_hubble_client(name))
    p = sub.add_parser("cleanup", help="remove what a stopped agent left in the kernel on purpose (--pins)")
    p.add_argument("--pins", action="store_true", help="detach the pinned links and remove the pins (bpfPinning)")
    p.add_argument("--bpf-pin-path", help="the pin directory (default: bpfPinPath of --config, or its default)")
    p.add_argument("--config", help="YAML config file (docs/config.md)")
    p.set_defaults(func=cmd_cleanup)
    p = sub.add_parser("lab", help="local lab of network namespaces: lab up|down", add_help=False)
    p.add_argument("lab_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_lab)
    p = sub.add_parser("demo", help="lab + agent + live traffic (make run)")
    p.add_argument("--pods", type=int, default=3)
    p.add_argument("--port", type=int, default=10093, help="loopback port forwarded to the agent")
    p.set_defaults(func=cmd_demo)
    args = parser.parse_args(args_in)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
