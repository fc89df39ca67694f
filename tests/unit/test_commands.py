"""`cellguard plan`, `status` and `fit` against a snapshot file (no server needed)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cellguard import cli
from cellguard.budget.pools import pool_label_key, pool_label_value


def _node(name: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
        "spec": {},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def _budget(name: str, in_use: int = 1_000) -> dict[str, Any]:
    # Observed now (when the fixture runs): the plan compares it with the real clock.
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeName": name,
            "threadsMax": 32_768,
            "pidMax": 32_768,
            "threadsInUse": in_use,
            "kubepods": {"cgroupVersion": "v2", "unlimited": True},
            "observedAt": now,
        },
    }


def _cell_spec(replicas: int) -> dict[str, Any]:
    return {
        "replicas": replicas,
        "service": "ingest",
        "threads": {"base": 200, "perPeer": 500},
        "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}},
    }


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    nodes = [f"n{i}" for i in range(1, 7)]
    listing = {
        # n6, in ingest-a's pool and without a pod of it, has no budget.
        "nodes": [_node(n) for n in nodes[:-1]]
        + [_node("n6", **{pool_label_key("ingest"): pool_label_value("prod", "ingest-a")})],
        "budgets": [_budget(n) for n in nodes[:-1]],
        "cells": [{"metadata": {"namespace": "prod", "name": "ingest-a"}, "spec": _cell_spec(3)}],
        "policies": [{"metadata": {"name": "default"}, "spec": {"safetyMargin": 0.2}}],
        "pods": [
            {
                "metadata": {
                    "namespace": "prod",
                    "name": f"ingest-a-{i}",
                    "labels": {"cellguard.io/cell": "ingest-a"},
                },
                "spec": {"nodeName": nodes[i]},
                "status": {"phase": "Running"},
            }
            for i in range(3)
        ],
        "deployments": [],
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(listing))
    return path


def test_plan_exit_codes_and_json(snapshot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Scale-ups that may place a pod on n6 (in the pool, no budget) are refused: fail closed.
    code = cli.main(
        [
            "plan",
            "streamcell/ingest-a",
            "-n",
            "prod",
            "--replicas",
            "4",
            "--snapshot",
            str(snapshot),
            "-o",
            "json",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert data["reason"] == "BudgetUnknown"
    assert "n6" in data["message"]
    assert (
        cli.main(
            [
                "plan",
                "streamcell/ingest-a",
                "-n",
                "prod",
                "--replicas",
                "2",
                "--snapshot",
                str(snapshot),
            ]
        )
        == 0
    )
    assert "FITS" in capsys.readouterr().out


def test_plan_of_a_manifest_file(
    snapshot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "cell.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "cellguard.io/v1alpha1",
                "kind": "StreamCell",
                "metadata": {"name": "new-cell", "namespace": "prod"},
                "spec": {**_cell_spec(40), "service": "other", "isolation": "Shared"},
            }
        )
    )
    code = cli.main(["plan", "-f", str(manifest), "--snapshot", str(snapshot), "-o", "yaml"])
    data = yaml.safe_load(capsys.readouterr().out)
    assert code == 1
    assert data["fromReplicas"] == 0 and data["toReplicas"] == 40
    assert data["allowed"] is False


def test_plan_names_the_free_nodes_a_new_exclusive_cell_claims(
    snapshot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "cell.yaml"
    spec = {**_cell_spec(2), "service": "billing", "threads": {"base": 200, "perPeer": 0}}
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "cellguard.io/v1alpha1",
                "kind": "StreamCell",
                "metadata": {"name": "billing-a", "namespace": "prod"},
                "spec": spec,
            }
        )
    )
    args = ["plan", "-f", str(manifest), "--snapshot", str(snapshot)]
    assert cli.main([*args, "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    # Two pods, one a node: the two nodes with the most threads free - not n1-n3, which run
    # ingest-a's pods, never n6, whose budget is unknown.
    assert data["claimedNodes"] == ["n4", "n5"]
    assert cli.main(args) == 0
    assert "joining the cell's pool: n4, n5" in capsys.readouterr().out


def test_plan_errors_exit_2(snapshot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "streamcell/missing", "-n", "prod", "--snapshot", str(snapshot)]) == 2
    assert "not found" in capsys.readouterr().err


def test_status_reports_cells_and_nodes(snapshot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--snapshot", str(snapshot), "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (cell,) = data["cells"]
    assert cell["name"] == "ingest-a" and cell["pods"] == 3
    assert cell["threadsPerPod"] == 1_200
    nodes = {n["node"]: n for n in data["nodes"]}
    assert nodes["n6"]["budgetKnown"] is False
    assert nodes["n1"]["projected"] == 1_200  # max(1,000 observed, 1,200 modelled)
    assert cli.main(["status", "--snapshot", str(snapshot)]) == 0
    table = capsys.readouterr().out
    assert "StreamCells" in table
    assert "unknown/stale" in table  # n6


def test_a_saved_snapshot_is_judged_as_of_when_it_was_taken(
    snapshot: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Save the snapshot through `status --save-snapshot`, then age it by two hours: its
    # budgets were fresh when it was taken, and that is the moment a what-if asks about.
    saved = tmp_path / "saved.yaml"
    assert (
        cli.main(
            ["status", "--snapshot", str(snapshot), "--save-snapshot", str(saved), "-o", "json"]
        )
        == 0
    )
    capsys.readouterr()
    document = yaml.safe_load(saved.read_text())
    assert "takenAt" in document
    two_hours = datetime.timedelta(hours=2)
    taken = datetime.datetime.fromisoformat(document["takenAt"]) - two_hours
    document["takenAt"] = taken.isoformat()
    document["budgets"].append(_budget("n6"))  # every node known: a scale-up can fit
    for item in document["budgets"]:
        observed = datetime.datetime.fromisoformat(
            item["spec"]["observedAt"].replace("Z", "+00:00")
        )
        item["spec"]["observedAt"] = (observed - two_hours).isoformat()
    saved.write_text(yaml.safe_dump(document))
    assert (
        cli.main(
            [
                "plan",
                "streamcell/ingest-a",
                "-n",
                "prod",
                "--replicas",
                "2",
                "--snapshot",
                str(saved),
            ]
        )
        == 0
    )
    assert "FITS" in capsys.readouterr().out


def _with_samples(snapshot: Path, samples: list[tuple[int, int]]) -> Path:
    """The snapshot with ingest-a's status.threadSamples set to (replicas, threads) pairs."""
    document = yaml.safe_load(snapshot.read_text())
    (cell,) = document["cells"]
    cell["status"] = {
        "replicas": 3,
        "threadSamples": [{"replicas": n, "threadsPerPod": t} for n, t in samples],
    }
    path = snapshot.with_name("sampled.yaml")
    path.write_text(yaml.safe_dump(document))
    return path


# ingest-a declares base 200, perPeer 500; its pods were seen to follow 250 + 502 * (N - 1).
FOLLOWED = [(3, 1_254), (5, 2_258), (3, 1_254), (8, 3_764)]
FIT_ARGS = ["fit", "streamcell/ingest-a", "-n", "prod", "--snapshot"]


def test_fit_prints_the_fitted_model_and_the_patch_to_apply(
    snapshot: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sampled = str(_with_samples(snapshot, FOLLOWED))
    assert cli.main([*FIT_ARGS, sampled, "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cell"] == "prod/ingest-a"
    assert data["fit"] == {
        "base": 250.0,
        "perPeer": 502.0,
        "residual": 0.0,
        "sizes": 3,
        "samples": 4,
    }
    assert data["declared"] == {"base": 200, "perPeer": 500}
    assert data["suggested"] == {"base": 250, "perPeer": 502}
    assert data["matchesDeclared"] is False
    assert data["patch"] == {"spec": {"threads": {"base": 250, "perPeer": 502}}}
    command = (
        "kubectl patch streamcell ingest-a -n prod --type merge "
        """-p '{"spec":{"threads":{"base":250,"perPeer":502}}}'"""
    )
    assert data["command"] == command
    assert cli.main([*FIT_ARGS, sampled, "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == data
    assert cli.main([*FIT_ARGS, sampled]) == 0
    table = capsys.readouterr().out
    assert "prod/ingest-a: thread model from 4 samples at 3 sizes" in table
    assert "declared (spec.threads)" in table and "suggested (rounded up)" in table
    assert command in table  # on one line, ready to paste


def test_fit_rounds_a_noisy_fit_up(snapshot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Means 1,200.5 at 3 replicas and 3,198.5 at 7: perPeer 1,998 / 4 = 499.5, base
    # 1,200.5 - 2 * 499.5 = 201.5, every sample 0.5 off the line.
    noisy = [(3, 1_200), (3, 1_201), (7, 3_198), (7, 3_199)]
    assert cli.main([*FIT_ARGS, str(_with_samples(snapshot, noisy)), "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fit"] == {
        "base": 201.5,
        "perPeer": 499.5,
        "residual": 0.5,
        "sizes": 2,
        "samples": 4,
    }
    assert data["suggested"] == {"base": 202, "perPeer": 500}


def test_fit_of_a_cell_that_already_matches(
    snapshot: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    declared = [(n, 200 + 500 * (n - 1)) for n in (2, 3, 4)]
    assert cli.main([*FIT_ARGS, str(_with_samples(snapshot, declared))]) == 0
    assert "already matches the fit" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("samples", "said"),
    [
        ([], "no thread samples yet (0 sizes)"),
        ([(3, 1_200), (3, 1_230)], "thread samples at 1 size only (3 replicas)"),
    ],
)
def test_fit_needs_two_sizes(
    snapshot: Path,
    capsys: pytest.CaptureFixture[str],
    samples: list[tuple[int, int]],
    said: str,
) -> None:
    for output in ("table", "json"):
        assert cli.main([*FIT_ARGS, str(_with_samples(snapshot, samples)), "-o", output]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert said in captured.err
        assert "must run at another size first" in captured.err
    # A cell without a status at all is a cell without samples.
    if not samples:
        assert cli.main([*FIT_ARGS, str(snapshot)]) == 2
        assert said in capsys.readouterr().err


def test_fit_of_an_unknown_cell_exits_2(snapshot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fit", "streamcell/missing", "-n", "prod", "--snapshot", str(snapshot)]) == 2
    assert "StreamCell prod/missing not found" in capsys.readouterr().err
    # Namespace defaults to `default`, as for plan: ingest-a lives in prod.
    assert cli.main(["fit", "ingest-a", "--snapshot", str(snapshot)]) == 2
    assert "StreamCell default/ingest-a not found" in capsys.readouterr().err


def test_only_printing_commands_die_quietly_on_a_closed_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse
    import signal

    seen: dict[str, object] = {}

    class Recorder:
        def add_arguments(self, parser: argparse.ArgumentParser) -> None:
            pass

        def run(self, args: argparse.Namespace) -> int:
            seen[args.command] = signal.getsignal(signal.SIGPIPE)
            return 0

    monkeypatch.setattr(cli, "_load", lambda _module: Recorder())
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        # Servers keep Python's default (ignore SIGPIPE, raise BrokenPipeError): a webhook
        # client hanging up must never kill the operator, nor a closed socket the agent.
        for command in ("run", "agent", "demo"):
            assert cli.main([command]) == 0
            assert seen[command] == signal.SIG_IGN, command
        for command in ("status", "plan", "fit"):
            assert cli.main([command]) == 0
            assert seen[command] == signal.SIG_DFL, command
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGPIPE, previous)
