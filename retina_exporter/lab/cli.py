"""``retina-exporter lab up|down|list``: a lab that outlives the command (state in /run/retina-exporter/labs).

``main_lab(argv)`` takes the arguments *after* ``lab`` (e.g. ``["up", "--pods", "3"]``) and returns an exit code.
Also runnable as ``python -m retina_exporter.lab.cli up …``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from .topology import NS_PREFIX, Lab, LabError, delete_namespaces, existing_namespaces

DEFAULT_STATE_DIR = "/run/retina-exporter/labs"


def state_dir() -> Path:
    return Path(os.environ.get("RETINA_EXPORTER_LAB_DIR", DEFAULT_STATE_DIR))


def state_path(lab_id: str) -> Path:
    return state_dir() / f"{lab_id}.json"


def load_state(lab_id: str) -> dict | None:
    try:
        return json.loads(state_path(lab_id).read_text())
    except FileNotFoundError:
        return None


def saved_ids() -> list[str]:
    try:
        return sorted(p.stem for p in state_dir().glob("*.json"))
    except FileNotFoundError:
        return []


def lab_ids_from_namespaces() -> list[str]:
    ids = set()
    for n in existing_namespaces(NS_PREFIX):
        rest = n[len(NS_PREFIX):]
        if "-" in rest:
            ids.add(rest.split("-", 1)[0])
    return sorted(ids)


def _down_one(lab_id: str) -> list[str]:
    removed: list[str] = []
    state = load_state(lab_id)
    if state is not None:
        lab = Lab.from_state(state)
        removed += [n for n in lab.namespaces if (Path("/run/netns") / n).exists()]
        lab.down()
    removed += delete_namespaces(existing_namespaces(f"{NS_PREFIX}{lab_id}-"))
    try:
        state_path(lab_id).unlink()
    except FileNotFoundError:
        pass
    return sorted(set(removed))


def _cmd_up(args: argparse.Namespace) -> int:
    lab = Lab(pods=args.pods, lab_id=args.id, offloads=not args.no_offloads)
    lab.up()
    try:
        path = lab.save_state(state_path(lab.id))
        if args.inventory:
            lab.write_inventory(args.inventory)
    except BaseException:
        lab.down()
        raise
    if args.json:
        print(json.dumps(lab.to_state(), indent=2))
    else:
        print(lab.describe())
        print(f"  up in {lab.up_seconds * 1000:.0f} ms; IPv6 forwarding: {lab.ipv6_forwarding_mode}; "
              f"offloads: {'on' if lab.offloads else 'off'}")
        print(f"  state: {path}")
        if args.inventory:
            print(f"  inventory: {args.inventory}")
        print(f"  run in a pod: ip netns exec {lab.pods[0].netns} ping {lab.pods[-1].ipv4}")
        print(f"  remove: retina-exporter lab down --id {lab.id}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    if args.all:
        ids = sorted(set(saved_ids()) | set(lab_ids_from_namespaces()))
        removed = []
        for i in ids:
            removed += _down_one(i)
        removed += delete_namespaces(existing_namespaces(NS_PREFIX))  # anything else named rxlab-*
    else:
        lab_id = args.id
        if lab_id is None:
            ids = sorted(set(saved_ids()) | set(lab_ids_from_namespaces()))
            if not ids:
                print("no lab to remove")
                return 0
            if len(ids) > 1:
                print(f"several labs exist ({', '.join(ids)}): use --id ID or --all", file=sys.stderr)
                return 2
            lab_id = ids[0]
        removed = _down_one(lab_id)
    if removed:
        print("removed " + " ".join(sorted(set(removed))))
    else:
        print("nothing to remove")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    ids = sorted(set(saved_ids()) | set(lab_ids_from_namespaces()))
    if not ids:
        print("no labs")
    for i in ids:
        state = load_state(i)
        names = existing_namespaces(f"{NS_PREFIX}{i}-")
        desc = f"{state['pods']} pods" if state else "no state file"
        print(f"{i}: {desc}; namespaces: {' '.join(names) or '-'}")
    return 0


def _lab_id(value: str) -> str:
    if not value or len(value) > 20 or not value.isalnum() or not value.isascii():
        raise argparse.ArgumentTypeError("lab id: 1-20 letters or digits")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="retina-exporter lab", description="local network-namespace lab")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="create a lab (namespaces rxlab-<id>-node/-world/-pod<i>)")
    up.add_argument("--pods", type=int, default=2, help="number of pods (default 2)")
    up.add_argument("--id", type=_lab_id, help="lab id (default: 6 random hex digits)")
    up.add_argument("--no-offloads", action="store_true", help="switch TSO/GSO/GRO off on every interface")
    up.add_argument("--inventory", metavar="PATH", help="also write the endpoint inventory (YAML) here")
    up.add_argument("--json", action="store_true", help="print the lab's state as JSON")
    up.set_defaults(fn=_cmd_up)
    down = sub.add_parser("down", help="remove a lab")
    g = down.add_mutually_exclusive_group()
    g.add_argument("--id", type=_lab_id, help="the lab to remove (default: the only one)")
    g.add_argument("--all", action="store_true", help="every lab, and any stray rxlab-* namespace")
    down.set_defaults(fn=_cmd_down)
    ls = sub.add_parser("list", help="labs with a state file or namespaces")
    ls.set_defaults(fn=_cmd_list)
    return ap


def main_lab(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if os.geteuid() != 0:
        print("retina-exporter lab: needs root (network namespaces)", file=sys.stderr)
        return 1
    try:
        return args.fn(args)
    except (LabError, ValueError) as e:
        print(f"retina-exporter lab: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main_lab())
