"""``retina-operator``: serve the cluster's identities to the agents and validate MetricsConfigurations.

Exit status 2 with one line naming the flag and the fix for anything the user must fix (flags, files, ports,
Kubernetes credentials); 0 after SIGTERM/SIGINT (every agent got SHUTDOWN first). See docs/operator.md.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from typing import NoReturn

from retina_core.version import __version__

PROG = "retina-operator"
LOG_LEVELS = ("debug", "info", "warning", "error")


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _die(msg: str) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


def _port(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a port number; use 0-65535") from None
        if not 0 <= value <= 65535:
            raise argparse.ArgumentTypeError(f"{value} is out of range; use 0-65535")
        return value

    parse.__name__ = flag
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; use e.g. 8192") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1; use e.g. 8192")
    return value


def build_parser() -> _Parser:
    p = _Parser(prog=PROG, description="Serves pod/service/node identities to retina-exporter agents over gRPC "
                                       "(ipcache.IpCache) and validates MetricsConfiguration resources.")
    p.add_argument("--version", action="version", version=__version__)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--kubeconfig", metavar="PATH",
                       help="kubeconfig file (default: in-cluster when KUBERNETES_SERVICE_HOST is set, else "
                            "$KUBECONFIG or ~/.kube/config)")
    where.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    p.add_argument("--context", help="kubeconfig context (default: the file's current context)")
    p.add_argument("--grpc-port", type=_port("--grpc-port"), default=9090, metavar="PORT",
                   help="ipcache.IpCache gRPC port (default 9090)")
    p.add_argument("--http-port", type=_port("--http-port"), default=9091, metavar="PORT",
                   help="/healthz, /readyz, /metrics, /debug/* (default 9091)")
    p.add_argument("--bind-address", default="0.0.0.0", metavar="ADDR",
                   help="address both servers listen on (default 0.0.0.0)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve gRPC over TLS with this certificate (with --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--tls-client-ca", metavar="PEM",
                   help="require agents to present a certificate signed by this CA (mutual TLS; needs --tls-cert)")
    p.add_argument("--agent-queue-size", type=_positive_int, default=8192, metavar="N",
                   help="updates an agent may fall behind before it is disconnected to resync (default 8192)")
    p.add_argument("--no-metrics-configuration", dest="metrics_configuration", action="store_false",
                   help="do not validate MetricsConfiguration resources (e.g. when the CRD is not installed)")
    p.add_argument("--log-level", default="info", type=str.lower, choices=LOG_LEVELS, metavar="LEVEL",
                   help=f"{', '.join(LOG_LEVELS)} (default info)")
    return p


def _check_file(flag: str, path: str | None) -> str | None:
    if path is None:
        return None
    if not os.path.isfile(path):
        return f"{flag}: {path} does not exist or is not a file; give the path of a PEM file"
    if not os.access(path, os.R_OK):
        return f"{flag}: {path} is not readable; fix its permissions"
    return None


def validate(args: argparse.Namespace) -> str | None:
    """The first problem with the flags, as one line, or None."""
    if bool(args.tls_cert) != bool(args.tls_key):
        missing = "--tls-key" if args.tls_cert else "--tls-cert"
        return f"{missing}: required with {'--tls-cert' if args.tls_cert else '--tls-key'}; give both or neither"
    if args.tls_client_ca and not args.tls_cert:
        return "--tls-client-ca: mutual TLS needs a server certificate; add --tls-cert and --tls-key"
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key),
                       ("--tls-client-ca", args.tls_client_ca)):
        problem = _check_file(flag, path)
        if problem:
            return problem
    if args.kubeconfig is not None and not os.path.isfile(args.kubeconfig):
        return f"--kubeconfig: {args.kubeconfig} does not exist; give a kubeconfig file or use --in-cluster"
    if args.in_cluster and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "--in-cluster: KUBERNETES_SERVICE_HOST is not set (not running in a pod); use --kubeconfig PATH"
    if args.grpc_port and args.grpc_port == args.http_port:
        return f"--http-port: {args.http_port} is also --grpc-port; choose two different ports"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        return _die(f"{exc} (see {PROG} --help)")
    problem = validate(args)
    if problem:
        return _die(problem)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "debug":
        logging.getLogger("kubernetes").setLevel(logging.WARNING)
        logging.getLogger("urllib3").setLevel(logging.ERROR)

    from retina_operator.operator import BindError, Operator, TlsError, TlsFiles

    kube_config: object = None
    if args.kubeconfig:
        kube_config = args.kubeconfig
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    try:
        if args.in_cluster:
            from kubernetes import client, config as kconfig

            cfg = client.Configuration()
            kconfig.load_incluster_config(client_configuration=cfg)
            kube_config = cfg
        op = Operator(kube_config, context=args.context, grpc_host=args.bind_address, grpc_port=args.grpc_port,
                      http_host=args.bind_address, http_port=args.http_port, tls=tls,
                      queue_size=args.agent_queue_size, metrics_configurations=args.metrics_configuration)
    except Exception as exc:  # ConfigException, OSError, ValueError from the kubernetes config loaders
        flag = "--in-cluster" if args.in_cluster else "--kubeconfig"
        fix = "check the service account mount" if args.in_cluster else "give a valid kubeconfig with --kubeconfig"
        what = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return _die(f"{flag}: cannot load the Kubernetes configuration: {what}; {fix}")
    try:
        return op.run_until_signal()
    except BindError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            return _die(f"--bind-address: {exc}; use an address of this host, or 0.0.0.0")
        flag = "--http-port" if "for HTTP" in str(exc) else "--grpc-port"
        return _die(f"{flag}: {exc}; choose a free port or stop what uses it")
    except TlsError as exc:
        return _die(str(exc))


if __name__ == "__main__":
    sys.exit(main())
