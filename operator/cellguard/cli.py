"""The `cellguard` command (also installed as the kubectl plugin `kubectl-cellguard`).

Each subcommand lives in its own module exposing `add_arguments(parser)` and
`run(args) -> int`; they are imported only when chosen, so `cellguard --help` stays fast
and the node agent never imports the operator.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cellguard import __version__


class _Subcommand(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# name -> (module, one-line help). Modules are imported lazily.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("cellguard.runtime.main", "run the operator: admission webhook and reconciler"),
    "demo": (
        "cellguard.demo.cli",
        "the whole story, admitted, refused, alerted: locally, on a real node or your cluster",
    ),
    "dev-cluster": (
        "cellguard.devcluster.cli",
        "run a local real control plane (etcd, kube-apiserver, controllers, kwok nodes)",
    ),
    "plan": (
        "cellguard.commands.plan",
        "what-if: would this cell's scale fit every node? (exit 0 fits, 1 refused, 2 error)",
    ),
    "status": ("cellguard.commands.status", "cells with their headroom, and every node's budget"),
    "fit": (
        "cellguard.commands.fit",
        "fit a cell's thread model to its observed threads; print the spec.threads to apply",
    ),
    "agent": ("cellguard.agent.cli", "node agent: report this node's thread and PID budget"),
}


# Commands that only print: they may die quietly on a closed pipe.
PIPE_FILTERS = frozenset({"plan", "status", "fit"})


def _load(module_name: str) -> _Subcommand:
    module: _Subcommand = importlib.import_module(module_name)
    return module


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    # Installed twice: as `cellguard` and as the kubectl plugin `kubectl-cellguard`.
    invoked = Path(sys.argv[0]).name
    parser = argparse.ArgumentParser(
        prog="kubectl cellguard" if invoked == "kubectl-cellguard" else "cellguard",
        description="Refuse scale-ups that would push nodes past their thread and PID limits.",
    )
    parser.add_argument("--version", action="version", version=f"cellguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported to fill in its arguments.
        if name == chosen:
            _load(module_name).add_arguments(sub_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    if not args.command:
        parser.print_help()
        return 2
    if args.command in PIPE_FILTERS:
        # `cellguard status -o json | head` ends quietly, like any Unix filter. Only for
        # these: a server (the operator's webhook, the agent) must survive a peer that hangs
        # up, which with SIG_DFL would kill the whole process.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    module_name, _ = SUBCOMMANDS[args.command]
    return _load(module_name).run(args)


if __name__ == "__main__":
    sys.exit(main())
