"""`cellguard fit`: the thread model the cell's pods were seen to follow, and the
spec.threads to apply. Reads only; the patch it prints is for you to run.

    cellguard fit streamcell/ingest-a -n prod
    cellguard fit ingest-a --context prod-eu       # in the context's namespace
    cellguard fit streamcell/ingest-a -n prod -o json
    cellguard fit ingest-a -n prod --snapshot cluster.yaml

The samples are the cell's status.threadSamples: threads per pod (p95 over its pods) at
each size the cell has run at. The fit is the least-squares line
`threads per pod = base + perPeer * (N - 1)` through them; the suggestion rounds it up, so
it never budgets fewer threads than the fit at any size.

Exit codes: 0 fitted, 2 no fit (no such cell, fewer than 2 sizes sampled, an error).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from cellguard.api.v1alpha1 import StreamCell, ThreadSample
from cellguard.budget import ThreadFit, fit_thread_model, suggested_model, threads_per_pod
from cellguard.commands.output import ERROR, emit, failed, figure
from cellguard.commands.output import console as make_console
from cellguard.commands.source import Source, add_cluster_arguments
from cellguard.listing import Listing

FITTED = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("cell", help="streamcell/NAME (or NAME) of a live cell")
    add_cluster_arguments(parser)


@dataclass(frozen=True)
class CellFit:
    """A cell's samples, its declared thread model and the model fitted to the samples."""

    cell: StreamCell
    samples: list[ThreadSample]
    fit: ThreadFit | None

    @property
    def namespace(self) -> str:
        return str(self.cell.metadata["namespace"])

    @property
    def name(self) -> str:
        return str(self.cell.metadata["name"])


def fit_cell(listing: Listing, cell_arg: str, namespace: str) -> CellFit:
    """The named cell of the listing with its thread samples and their fit."""
    name = cell_arg.split("/", 1)[-1]
    for item in listing["cells"]:
        meta = item["metadata"]
        if meta["name"] == name and meta.get("namespace") == namespace:
            cell = StreamCell.model_validate(
                {"metadata": {"name": name, "namespace": namespace}, "spec": item["spec"]}
            )
            raw = (item.get("status") or {}).get("threadSamples") or []
            samples = [ThreadSample.model_validate(sample) for sample in raw]
            fit = fit_thread_model((s.replicas, s.threads_per_pod) for s in samples)
            return CellFit(cell, samples, fit)
    raise ValueError(f"StreamCell {namespace}/{name} not found")


def not_enough_sizes(cell_fit: CellFit) -> str:
    sizes = sorted({s.replicas for s in cell_fit.samples})
    seen = (
        "no thread samples yet (0 sizes)"
        if not sizes
        else f"thread samples at 1 size only ({sizes[0]} replicas)"
    )
    return (
        f"StreamCell {cell_fit.namespace}/{cell_fit.name} has {seen}; a fit needs 2 sizes: "
        "the cell must run at another size first (scale it and let the operator observe "
        "its pods), then fit again"
    )


def patch_command(name: str, namespace: str, base: int, per_peer: int) -> str:
    patch = {"spec": {"threads": {"base": base, "perPeer": per_peer}}}
    body = json.dumps(patch, separators=(",", ":"))
    return f"kubectl patch streamcell {name} -n {namespace} --type merge -p '{body}'"


def fit_data(cell_fit: CellFit) -> dict[str, Any]:
    """The fit as data (the `-o json` / `-o yaml` document). Needs a fit."""
    fit = cell_fit.fit
    assert fit is not None
    declared = cell_fit.cell.spec.threads
    base, per_peer = suggested_model(fit)
    return {
        "cell": f"{cell_fit.namespace}/{cell_fit.name}",
        "namespace": cell_fit.namespace,
        "name": cell_fit.name,
        "samples": [
            {"replicas": s.replicas, "threadsPerPod": s.threads_per_pod} for s in cell_fit.samples
        ],
        "fit": {
            "base": fit.base,
            "perPeer": fit.per_peer,
            "residual": fit.residual,
            "sizes": fit.sizes,
            "samples": fit.samples,
        },
        "declared": {"base": declared.base, "perPeer": declared.per_peer},
        "suggested": {"base": base, "perPeer": per_peer},
        "matchesDeclared": (base, per_peer) == (declared.base, declared.per_peer),
        "patch": {"spec": {"threads": {"base": base, "perPeer": per_peer}}},
        "command": patch_command(cell_fit.name, cell_fit.namespace, base, per_peer),
    }


def print_tables(data: dict[str, Any], console: Any) -> None:
    fit, declared, suggested = data["fit"], data["declared"], data["suggested"]
    console.print(
        f"{data['cell']}: thread model from {fit['samples']} samples at {fit['sizes']} sizes",
        markup=False,
        highlight=False,
    )
    model = Table("", "base", "perPeer")
    model.add_row("fitted", f"{fit['base']:,.2f}", f"{fit['perPeer']:,.2f}")
    model.add_row("declared (spec.threads)", figure(declared["base"]), figure(declared["perPeer"]))
    model.add_row("suggested (rounded up)", figure(suggested["base"]), figure(suggested["perPeer"]))
    console.print(model)
    console.print(f"residual: {fit['residual']:,.2f} threads per pod (root mean square)")
    samples = Table(
        "replicas", "observed", "declared model", "fitted", title="Threads per pod by size"
    )
    for sample in sorted(data["samples"], key=lambda s: s["replicas"]):
        n, observed = sample["replicas"], sample["threadsPerPod"]
        modelled = threads_per_pod(declared["base"], declared["perPeer"], n)
        samples.add_row(
            str(n),
            figure(observed),
            figure(modelled),
            f"{fit['base'] + fit['perPeer'] * (n - 1):,.1f}",
            # Pods holding more threads than the declared model budgets for them.
            style="red" if observed > modelled else None,
        )
    console.print(samples)
    if data["matchesDeclared"]:
        console.print("spec.threads already matches the fit (rounded up); to apply it anyway:")
    else:
        console.print("to apply the suggested spec.threads:")
    console.print(data["command"], markup=False, highlight=False, soft_wrap=True)


def run(args: argparse.Namespace) -> int:
    try:
        source = Source(args)
        namespace = source.namespace(args)
        listing, _ = source.read((namespace,))
        cell_fit = fit_cell(listing, args.cell, namespace)
    except Exception as error:  # e.g. the API server unreachable: answer, don't crash
        return failed(error)
    if cell_fit.fit is None:
        print(f"error: {not_enough_sizes(cell_fit)}", file=sys.stderr)
        return ERROR
    data = fit_data(cell_fit)
    if args.output == "table":
        print_tables(data, make_console())
    else:
        emit(data, args.output)
    return FITTED
