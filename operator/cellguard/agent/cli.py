"""`cellguard agent`: arguments and the process around the report loop."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import yaml

from cellguard.agent.loop import (
    ReportAbandoned,
    Reporter,
    run_reports,
    stop_on_signals,
)
from cellguard.agent.manifest import nodebudget_manifest
from cellguard.agent.reading import (
    DEFAULT_PROC_ROOT,
    DEFAULT_SYS_ROOT,
    HostPaths,
    read_node_budget,
)
from cellguard.api.v1alpha1 import NodeBudgetSpec

log = logging.getLogger("cellguard.agent")

DEFAULT_INTERVAL_SECONDS = 30.0
NODE_NAME_ENV = "NODE_NAME"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not seconds > 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node-name",
        default=os.environ.get(NODE_NAME_ENV),
        help=f"the node this agent runs on (default: ${NODE_NAME_ENV}, from the downward API)",
    )
    parser.add_argument(
        "--proc-root",
        type=Path,
        default=DEFAULT_PROC_ROOT,
        help="where the host's /proc is mounted (e.g. /host/proc; default: %(default)s)",
    )
    parser.add_argument(
        "--sys-root",
        type=Path,
        default=DEFAULT_SYS_ROOT,
        help="where the host's /sys is mounted (e.g. /host/sys; default: %(default)s)",
    )
    parser.add_argument(
        "--kubelet-config",
        type=Path,
        default=None,
        help="the kubelet's config file, read for podPidsLimit",
    )
    parser.add_argument(
        "--pod-pids-limit",
        type=int,
        default=None,
        help="the kubelet's per-pod PID limit, if known (wins over --kubelet-config; -1: none)",
    )
    parser.add_argument(
        "--interval",
        type=_positive_seconds,
        default=DEFAULT_INTERVAL_SECONDS,
        help="seconds between reports (default: %(default)s)",
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="kubeconfig file (default: in-cluster service account, else ~/.kube/config)",
    )
    parser.add_argument("--once", action="store_true", help="report once and exit")
    parser.add_argument(
        "--print",
        action="store_true",
        help="print the NodeBudget as YAML instead of writing it (no API server needed)",
    )
    parser.add_argument(
        "--log-level",
        dest="agent_log_level",
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="agent log level; debug logs one line per report (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the agent as parsed by `add_arguments`. Exit status: 0 on a stop signal or a
    published `--once` report, 1 when `--once` could not publish or the API client cannot
    be configured, 2 without a node name."""
    _configure_logging(args.agent_log_level)
    node_name: str | None = args.node_name
    if not node_name:
        print(f"cellguard agent: --node-name or ${NODE_NAME_ENV} is required", file=sys.stderr)
        return EXIT_USAGE

    paths = HostPaths(
        proc_root=args.proc_root, sys_root=args.sys_root, kubelet_config=args.kubelet_config
    )
    read = functools.partial(read_node_budget, node_name, paths, pod_pids_limit=args.pod_pids_limit)
    publish: Callable[[NodeBudgetSpec], None]
    if args.print:
        publish = print_nodebudget
    else:
        # Imported here: the Kubernetes client is most of the agent's memory and start-up
        # time, and --print does not need it.
        from cellguard.agent.kube import NodeBudgetPublisher, load_api_client

        try:
            api_client = load_api_client(args.kubeconfig)
        except Exception as exc:  # the config loaders raise several unrelated types
            log.error("cannot configure the Kubernetes client: %s", exc)
            return EXIT_FAILED
        publish = NodeBudgetPublisher(api_client, node_name)

    stop = threading.Event()
    try:
        with stop_on_signals(stop):
            published = run_reports(
                Reporter(read, publish), interval=args.interval, stop=stop, once=args.once
            )
    except ReportAbandoned:
        log.info("second stop signal: report abandoned")
        return EXIT_OK
    if args.once and not published:
        return EXIT_FAILED
    return EXIT_OK


def print_nodebudget(spec: NodeBudgetSpec) -> None:
    """Publish to stdout: one YAML document per report, ready for `kubectl apply`."""
    sys.stdout.write("---\n")
    sys.stdout.write(yaml.safe_dump(nodebudget_manifest(spec), sort_keys=False))
    sys.stdout.flush()


def _configure_logging(level_name: str) -> None:
    # The cellguard CLI may already have configured logging; only fill the gap.
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(level_name.upper())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cellguard agent",
        description="Report this node's thread and PID limits and usage as its NodeBudget.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
