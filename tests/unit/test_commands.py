"""`cellguard plan`, `status` and `fit` against a snapshot file (no server needed)."""

from __future__ import annotations

import datetime
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cellguard import cli
from cellguard.budget.pools import pool_label_key, pool_label_value

from .manifests import budget, node


@pytest.fixture(autouse=True)
def _sigpipe_as_it_was() -> Iterator[None]:
    """`cli.main` of a printing command sets SIGPIPE to SIG_DFL for the process; put back
    Python's default, or a later test's closed socket kills the whole pytest run."""
    previous = signal.getsignal(signal.SIGPIPE)
    yield
    signal.signal(signal.SIGPIPE, previous)


def _budget(name: str) -> dict[str, Any]:
    # Observed now (when the fixture runs): the plan compares it with the real clock.
    return budget(name, observed=datetime.datetime.now(datetime.UTC))


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
        "nodes": [node(n) for n in nodes[:-1]]
        + [node("n6", **{pool_label_key("ingest"): pool_label_value("prod", "ingest-a")})],
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
    # 1,000 observed, none of it the pod's (no reading): + its 1,200 modelled.
    assert nodes["n1"]["projected"] == 2_200
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


# kubectl's conventions for where to read: --kubeconfig / $KUBECONFIG, --context, -n
# defaulting to the context's namespace, -A. Two contexts on two servers, each with its own
# namespace and user; the API is replaced by the listing below, with each call recorded.
KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "current-context": "alpha",
    "clusters": [
        {"name": name, "cluster": {"server": f"https://{name}.example:6443"}}
        for name in ("alpha", "beta")
    ],
    "users": [{"name": name, "user": {"token": f"{name}-token"}} for name in ("alpha", "beta")],
    "contexts": [
        {
            "name": name,
            "context": {"cluster": name, "user": name, "namespace": f"{name}-ns"},
        }
        for name in ("alpha", "beta")
    ],
}


@pytest.fixture
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Nothing of the machine's own: no $KUBECONFIG, no ~/.kube/config, not in a pod.
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(yaml.safe_dump(KUBECONFIG))
    return path


@pytest.fixture
def api_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, tuple[str, ...]]]:
    """Each listing asked of the "cluster": (server, bearer token, namespaces)."""
    from cellguard.commands import source

    nodes = [f"n{i}" for i in range(1, 5)]
    alpha = {"metadata": {"namespace": "alpha-ns", "name": "ingest-a"}, "spec": _cell_spec(2)}
    alpha["status"] = {"threadSamples": [{"replicas": n, "threadsPerPod": t} for n, t in FOLLOWED]}
    beta = {"metadata": {"namespace": "beta-ns", "name": "ingest-b"}, "spec": _cell_spec(2)}
    listing: dict[str, list[dict[str, Any]]] = {
        "nodes": [node(n) for n in nodes],
        "budgets": [_budget(n) for n in nodes],
        "cells": [alpha, beta],
        "policies": [{"metadata": {"name": "default"}, "spec": {"safetyMargin": 0.2}}],
        "pods": [],
        "deployments": [],
    }
    calls: list[tuple[str, str, tuple[str, ...]]] = []

    def list_cluster(api: Any, namespaces: tuple[str, ...] = ()) -> dict[str, Any]:
        token = api.configuration.api_key.get("BearerToken", "")
        calls.append((api.configuration.host, token, tuple(namespaces)))
        wanted = set(namespaces)
        return {
            **listing,
            "cells": [
                c for c in listing["cells"] if not wanted or c["metadata"]["namespace"] in wanted
            ],
        }

    monkeypatch.setattr(source, "list_cluster", list_cluster)
    return calls


def _status(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert cli.main(["status", *args, "-o", "json"]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


def _cells(data: dict[str, Any]) -> list[str]:
    return [f"{c['namespace']}/{c['name']}" for c in data["cells"]]


ALPHA = ("https://alpha.example:6443", "Bearer alpha-token")
BETA = ("https://beta.example:6443", "Bearer beta-token")


def test_the_current_contexts_namespace_is_the_default(
    kubeconfig: Path, api_calls: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    data = _status(capsys, "--kubeconfig", str(kubeconfig))
    assert data["namespace"] == "alpha-ns"
    assert _cells(data) == ["alpha-ns/ingest-a"]
    assert len(data["nodes"]) == 4  # nodes are never scoped to a namespace
    # Every namespace is listed all the same: the nodes' figures need every pod.
    assert api_calls == [(*ALPHA, ())]
    assert cli.main(["status", "--kubeconfig", str(kubeconfig)]) == 0
    assert "StreamCells in namespace alpha-ns" in capsys.readouterr().out


def test_context_switches_server_user_and_namespace(
    kubeconfig: Path, api_calls: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    data = _status(capsys, "--kubeconfig", str(kubeconfig), "--context", "beta")
    assert data["namespace"] == "beta-ns"
    assert _cells(data) == ["beta-ns/ingest-b"]
    assert api_calls == [(*BETA, ())]


def test_all_namespaces_and_namespace_override(
    kubeconfig: Path, api_calls: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    for flag in ("-A", "--all-namespaces"):
        data = _status(capsys, "--kubeconfig", str(kubeconfig), flag)
        assert data["namespace"] is None
        assert _cells(data) == ["alpha-ns/ingest-a", "beta-ns/ingest-b"]
    assert cli.main(["status", "--kubeconfig", str(kubeconfig), "-A"]) == 0
    assert "StreamCells, every namespace" in capsys.readouterr().out
    # -n wins over the context's namespace, on the context's server.
    data = _status(capsys, "--kubeconfig", str(kubeconfig), "-n", "beta-ns")
    assert _cells(data) == ["beta-ns/ingest-b"]
    assert api_calls[-1] == (*ALPHA, ())
    # -n and -A contradict each other: a usage error, as with kubectl's flags.
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["status", "--kubeconfig", str(kubeconfig), "-A", "-n", "beta-ns"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_kubeconfig_env_is_honoured(
    kubeconfig: Path,
    api_calls: list[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A path list, as kubectl reads it; a missing file in it is skipped.
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing.yaml'}:{kubeconfig}")
    assert _cells(_status(capsys)) == ["alpha-ns/ingest-a"]
    assert _cells(_status(capsys, "--context", "beta")) == ["beta-ns/ingest-b"]
    assert [call[:2] for call in api_calls] == [ALPHA, BETA]
    # Merged as kubectl merges: the first file that names a current-context decides it.
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump({**KUBECONFIG, "current-context": "beta", "contexts": []}))
    monkeypatch.setenv("KUBECONFIG", f"{first}:{kubeconfig}")
    assert _cells(_status(capsys)) == ["beta-ns/ingest-b"]
    # ~/.kube/config when $KUBECONFIG names nothing.
    monkeypatch.delenv("KUBECONFIG")
    home_config = tmp_path / "home" / ".kube" / "config"
    home_config.parent.mkdir(parents=True)
    home_config.write_text(kubeconfig.read_text())
    assert _cells(_status(capsys, "--context", "beta")) == ["beta-ns/ingest-b"]


def test_plan_and_fit_look_in_the_contexts_namespace(
    kubeconfig: Path, api_calls: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    config = ["--kubeconfig", str(kubeconfig)]
    assert cli.main(["plan", "ingest-a", *config, "--replicas", "2", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["cell"] == "alpha-ns/ingest-a"
    assert cli.main(["plan", "ingest-b", *config, "--context", "beta", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["cell"] == "beta-ns/ingest-b"
    assert cli.main(["plan", "ingest-b", *config]) == 2
    assert "StreamCell alpha-ns/ingest-b not found" in capsys.readouterr().err
    assert cli.main(["plan", "ingest-b", *config, "-n", "beta-ns", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["cell"] == "beta-ns/ingest-b"
    # A manifest without a namespace is planned in the context's.
    manifest = kubeconfig.with_name("new-cell.yaml")
    cell: dict[str, Any] = {"apiVersion": "cellguard.io/v1alpha1", "kind": "StreamCell"}
    cell |= {"metadata": {"name": "new-cell"}, "spec": {**_cell_spec(1), "service": "other"}}
    manifest.write_text(yaml.safe_dump(cell))
    for args, planned in (([], "alpha-ns/new-cell"), (["--context", "beta"], "beta-ns/new-cell")):
        assert cli.main(["plan", "-f", str(manifest), *config, *args, "-o", "json"]) == 0
        assert json.loads(capsys.readouterr().out)["cell"] == planned
    # fit lists only the one namespace it looks in.
    assert cli.main(["fit", "ingest-a", *config, "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["cell"] == "alpha-ns/ingest-a"
    assert cli.main(["fit", "ingest-a", *config, "--context", "beta"]) == 2
    assert "StreamCell beta-ns/ingest-a not found" in capsys.readouterr().err
    assert api_calls[-2:] == [(*ALPHA, ("alpha-ns",)), (*BETA, ("beta-ns",))]


def test_a_context_without_a_namespace_defaults_to_default(
    kubeconfig: Path, tmp_path: Path
) -> None:
    from cellguard.kubeclient import load_cli_client

    document = yaml.safe_load(kubeconfig.read_text())
    del document["contexts"][1]["context"]["namespace"]
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(document))
    api, namespace = load_cli_client(bare, "beta")
    assert (api.configuration.host, namespace) == (BETA[0], "default")
    assert load_cli_client(bare)[1] == "alpha-ns"
    # No current-context (or a dangling one): --context still chooses; without it, say so.
    for current in (None, "gone"):
        document["current-context"] = current
        bare.write_text(yaml.safe_dump({k: v for k, v in document.items() if v is not None}))
        assert load_cli_client(bare, "alpha")[1] == "alpha-ns"
    with pytest.raises(ValueError, match="context 'gone' not found"):
        load_cli_client(bare)
    del document["current-context"]
    bare.write_text(yaml.safe_dump(document))
    with pytest.raises(ValueError, match="no current-context; choose one with --context"):
        load_cli_client(bare)


def test_context_errors_exit_2(
    kubeconfig: Path,
    snapshot: Path,
    api_calls: list[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["status", "--kubeconfig", str(kubeconfig), "--context", "gamma"]) == 2
    said = capsys.readouterr().err
    assert "context 'gamma' not found" in said and "(contexts: alpha, beta)" in said
    assert cli.main(["status", "--kubeconfig", str(kubeconfig.with_name("none.yaml"))]) == 2
    assert "none.yaml not found" in capsys.readouterr().err
    # No kubeconfig anywhere, and not in a pod.
    assert cli.main(["plan", "ingest-a"]) == 2
    assert "no kubeconfig found" in capsys.readouterr().err
    # A snapshot is a file, not a context.
    assert cli.main(["fit", "ingest-a", "--snapshot", str(snapshot), "--context", "beta"]) == 2
    assert "--snapshot reads a file" in capsys.readouterr().err
    assert api_calls == []
