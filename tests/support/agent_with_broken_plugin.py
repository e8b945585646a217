"""Runs the real agent with one extra plugin that always fails to start (for the isolation test).

Usage: python -m tests.support.agent_with_broken_plugin CONFIG.yaml"""

from __future__ import annotations

import logging
import sys

from retina_exporter.agent import Agent, build_plugins
from retina_exporter.config import load_config
from retina_exporter.plugins.base import Plugin


class BrokenPlugin(Plugin):
    name = "broken"

    def init(self, ctx):
        raise RuntimeError("verifier rejected the program (simulated)")

    def start(self):
        pass

    def stop(self):
        pass


def main() -> int:
    logging.basicConfig(level=logging.INFO)
    cfg = load_config(sys.argv[1])
    Agent(cfg, plugins=build_plugins(cfg) + [BrokenPlugin()]).run_until_signal()
    return 0


if __name__ == "__main__":
    sys.exit(main())
