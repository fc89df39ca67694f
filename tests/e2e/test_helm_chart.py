"""The Helm chart against real API servers.

- On the shared control plane: every CI value set's manifests are accepted by the API server
  (server-side dry run), the pods pass the `restricted` Pod Security level (the agent fails
  it only for its read-only host paths), and the RBAC the chart grants is exactly enough
  (`kubectl auth can-i` as the chart's service accounts).
- On a fresh control plane of its own (no CRDs yet, as a first install meets it): `helm
  install`, `upgrade` and `uninstall`, and `helm test` against the real operator run as the
  chart's service account. kwok only pretends to run pods, so the chart's two kubectl pods
  (the default-policy hook Job and the `helm test` pod) are run here by a stand-in kubelet:
  their script runs locally with their service account's identity, and its exit status
  becomes the pod's phase.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from cellguard import __version__
from cellguard.devcluster.cluster import LocalCluster, NodeSpec, free_port
from cellguard.devcluster.identities import token_kubeconfig
from cellguard.devcluster.waiting import wait_for
from helm_support import (
    CHART,
    CI_VALUES,
    REPO,
    Helm,
    Manifest,
    all_of,
    find,
    is_hook,
    policy_from_hook,
)

pytestmark = pytest.mark.e2e

T = TypeVar("T")
THIRD_PARTY_CRDS = Path(__file__).parent / "fixtures" / "third-party-crds.yaml"
CELLGUARD_CRDS = (
    "streamcells.cellguard.io",
    "threadbudgetpolicies.cellguard.io",
    "nodebudgets.cellguard.io",
)
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
_counter = itertools.count(1)


def _unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid() % 10000}-{next(_counter)}"


def _get(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def _exists(cluster: LocalCluster, *args: str) -> bool:
    result = cluster.kubectl("get", *args, "-o", "name", check=False)
    if result.returncode != 0 and "NotFound" not in result.stderr:
        raise AssertionError(result.stderr)
    return result.returncode == 0


def _yaml(manifests: Sequence[Manifest]) -> str:
    return yaml.safe_dump_all(list(manifests), sort_keys=False)


def _delete(cluster: LocalCluster, manifests: Sequence[Manifest]) -> None:
    """Delete what a test applied, without waiting and whatever is already gone."""
    cluster.kubectl(
        "delete",
        "--wait=false",
        "--ignore-not-found",
        "-f",
        "-",
        input_text=_yaml(manifests),
        check=False,
    )


def _sa_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


# --------------------------------------------------------------------------- shared cluster


@pytest.fixture(scope="module")
def helm(cluster: LocalCluster) -> Helm:
    return Helm(cluster.bin_dir / "helm", kubeconfig=cluster.kubeconfig)


@pytest.fixture(scope="module")
def api_crds(cluster: LocalCluster) -> Iterator[None]:
    """cellguard's CRDs (left in place: the other end-to-end tests use them too) and the
    test-only Prometheus Operator and cert-manager CRDs (removed again if we added them)."""
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
    third_party = [d["metadata"]["name"] for d in yaml.safe_load_all(THIRD_PARTY_CRDS.read_text())]
    added = [name for name in third_party if not _exists(cluster, "crd", name)]
    cluster.kubectl("apply", "--server-side", "-f", str(THIRD_PARTY_CRDS))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s",
        *[f"crd/{n}" for n in (*CELLGUARD_CRDS, *third_party)],
    )  # fmt: skip
    yield
    for name in added:
        cluster.kubectl("delete", "crd", name, "--wait=false", check=False)


def _not_terminating(cluster: LocalCluster, name: str) -> bool:
    return _namespace_phase(cluster, name) != "Terminating"


def _namespace_phase(cluster: LocalCluster, name: str) -> str | None:
    result = cluster.kubectl("get", "namespace", name, "-o", "json", check=False)
    if result.returncode != 0:
        assert "NotFound" in result.stderr, result.stderr
        return None
    phase: str = json.loads(result.stdout)["status"]["phase"]
    return phase


@contextlib.contextmanager
def _namespaces(cluster: LocalCluster, *names: str, labels: str = "") -> Iterator[None]:
    """Create the namespaces that do not exist yet; delete those again afterwards."""
    created = []
    try:
        for name in names:
            # One a previous test deleted may still be going away.
            wait_for(
                partial(_not_terminating, cluster, name),
                timeout=120,
                what=f"namespace {name} to finish terminating",
            )
            if _namespace_phase(cluster, name) is None:
                cluster.kubectl("create", "namespace", name)
                created.append(name)
            if labels:
                cluster.kubectl("label", "--overwrite", "namespace", name, *labels.split())
        yield
    finally:
        for name in created:
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _referenced_namespaces(manifests: Sequence[Manifest]) -> set[str]:
    return {m["metadata"]["namespace"] for m in manifests if m["metadata"].get("namespace")}


def _dry_run(
    cluster: LocalCluster, manifests: Sequence[Manifest]
) -> subprocess.CompletedProcess[str]:
    # Server-side apply: the API server validates every field (unknown ones are errors);
    # objects others applied before (the CRDs, the webhook configuration) are only compared.
    return cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "--force-conflicts",
        "--field-manager=cellguard-chart-dry-run", "--validate=strict", "-f", "-",
        input_text=_yaml(manifests), check=False,
    )  # fmt: skip


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name.removesuffix("-values.yaml"))
def test_every_ci_value_set_is_accepted_by_the_api_server(
    cluster: LocalCluster, helm: Helm, api_crds: None, values: Path
) -> None:
    namespace = _unique("cg-dry")
    # Its own webhook configuration name: the shared cluster may already have a `cellguard`
    # one from the operator's URL mode, and a server-side dry run merges with what is there
    # (url and service together are invalid).
    manifests = helm.template(
        namespace=namespace,
        values=[values],
        set_values=[f"webhook.configurationName={namespace}"],
    )
    # And the policy the hook Job applies.
    manifests.append(policy_from_hook(manifests))
    with _namespaces(cluster, namespace, *_referenced_namespaces(manifests)):
        # Pods are checked against their ServiceAccount, which a dry run does not create.
        accounts = [
            m
            for m in all_of(manifests, "ServiceAccount")
            if m["metadata"]["namespace"] == namespace
        ]
        cluster.kubectl("apply", "-f", "-", input_text=_yaml(accounts))
        result = _dry_run(cluster, manifests)
        assert result.returncode == 0, result.stderr
        assert "Warning" not in result.stderr, result.stderr
        for manifest in manifests:
            kind, name = manifest["kind"].lower(), manifest["metadata"]["name"]
            assert f"/{name} " in result.stdout, f"{kind}/{name} missing from:\n{result.stdout}"
        # And nothing was created by the dry run.
        assert not _exists(cluster, "deployment", "-n", namespace, "cg-cellguard-operator")


def test_pods_meet_the_restricted_pod_security_level(
    cluster: LocalCluster, helm: Helm, api_crds: None
) -> None:
    namespace = _unique("cg-pss")
    manifests = helm.template(namespace=namespace)
    enforce = (
        "pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted"
    )
    with _namespaces(cluster, namespace, labels=enforce):
        accounts = all_of(manifests, "ServiceAccount")
        cluster.kubectl("apply", "-f", "-", input_text=_yaml(accounts))
        clean = [
            find(manifests, "Deployment"),
            find(manifests, "Job"),
            *[p for p in all_of(manifests, "Pod") if p["metadata"]["namespace"] == namespace],
        ]
        for workload in clean:
            result = _dry_run(cluster, [workload])
            assert result.returncode == 0, result.stderr
            assert "PodSecurity" not in result.stderr, (workload["kind"], result.stderr)
        # The agent reads the host's /proc and /sys: hostPath volumes are its only violation.
        result = _dry_run(cluster, [find(manifests, "DaemonSet")])
        assert result.returncode == 0, result.stderr
        warning = [line for line in result.stderr.splitlines() if "PodSecurity" in line]
        assert len(warning) == 1, result.stderr
        violations = warning[0].split('": ', 1)[1]
        assert violations == (
            'restricted volume types (volumes "host-proc", "host-sys", "kubelet-config" '
            'use restricted volume type "hostPath")'
        ), violations


# --------------------------------------------------------------------------- can-i


@dataclass
class Access:
    cluster: LocalCluster
    user: str
    failures: list[str] = field(default_factory=list)

    def _can(self, args: str) -> bool:
        result = self.cluster.kubectl(
            "auth", "can-i", *shlex.split(args), f"--as={self.user}", check=False
        )
        answer = result.stdout.strip()
        if answer not in ("yes", "no"):
            raise AssertionError(f"can-i {args}: {result.stdout} {result.stderr}")
        return answer == "yes"

    def can(self, *checks: str) -> None:
        self.failures += [f"{self.user} cannot {c}" for c in checks if not self._can(c)]

    def cannot(self, *checks: str) -> None:
        self.failures += [f"{self.user} CAN {c}" for c in checks if self._can(c)]


def _check_operator_access(
    cluster: LocalCluster,
    namespace: str,
    sa: str,
    *,
    watched: Sequence[str] = (),
    url_mode: bool = False,
) -> list[str]:
    access = Access(cluster, _sa_user(namespace, sa))
    cells_ns = watched[0] if watched else "apps"
    for verb in ("get", "list", "watch"):
        access.can(f"{verb} streamcells.cellguard.io -n {cells_ns}")
    access.can(
        "patch nodes",
        f"patch streamcells.cellguard.io --subresource=status -n {cells_ns}",
        f"get streamcells.cellguard.io --subresource=status -n {cells_ns}",
        "list threadbudgetpolicies.cellguard.io",
        "watch threadbudgetpolicies.cellguard.io",
        "list nodebudgets.cellguard.io",
        "watch nodebudgets.cellguard.io",
        "get nodes",
        "list nodes",
        "watch nodes",
        f"list pods -n {cells_ns}",
        f"watch pods -n {cells_ns}",
        f"create events -n {cells_ns}",
        f"patch events.events.k8s.io -n {cells_ns}",
        f"create events.events.k8s.io -n {cells_ns}",
        f"get leases.coordination.k8s.io/cellguard-operator -n {namespace}",
        f"update leases.coordination.k8s.io/cellguard-operator -n {namespace}",
        f"create leases.coordination.k8s.io -n {namespace}",
        # The leader labels its own pod (the webhook Service selects the label).
        f"patch pods -n {namespace}",
        "create selfsubjectreviews.authentication.k8s.io",
        "list customresourcedefinitions.apiextensions.k8s.io",
        "watch customresourcedefinitions.apiextensions.k8s.io",
    )
    for resource in ("deployments.apps", "services", "poddisruptionbudgets.policy"):
        for verb in ("get", "list", "watch", "create", "patch", "update", "delete"):
            access.can(f"{verb} {resource} -n {cells_ns}")
    access.cannot(
        # Secrets: in no namespace, its own included (its certificate is a mounted volume).
        "get secrets -n kube-system",
        "get secrets -n default",
        "list secrets --all-namespaces",
        f"get secrets -n {namespace}",
        # Nodes: patch only (the chart's admission policy narrows it to pool labels, see
        # test_the_operator_may_change_pool_labels_of_a_node_and_nothing_else).
        "update nodes",
        "delete nodes",
        "patch nodes --subresource=status",
        # What the agent and the people own.
        "create nodebudgets.cellguard.io",
        "patch nodebudgets.cellguard.io",
        "patch threadbudgetpolicies.cellguard.io",
        "delete threadbudgetpolicies.cellguard.io",
        f"create streamcells.cellguard.io -n {cells_ns}",
        f"delete streamcells.cellguard.io -n {cells_ns}",
        # A cell's spec is its owner's: the operator writes its status only.
        f"patch streamcells.cellguard.io -n {cells_ns}",
        f"update streamcells.cellguard.io -n {cells_ns}",
        f"create pods -n {cells_ns}",
        f"delete pods -n {cells_ns}",
        f"patch pods -n {cells_ns}",  # its own namespace's pods only
        "update customresourcedefinitions.apiextensions.k8s.io",
        "create clusterrolebindings.rbac.authorization.k8s.io",
        # Only its own Lease, only in its namespace.
        f"update leases.coordination.k8s.io/some-other-lease -n {namespace}",
        "update leases.coordination.k8s.io/cellguard-operator -n kube-system",
        "create leases.coordination.k8s.io -n kube-system",
        "delete validatingwebhookconfigurations.admissionregistration.k8s.io/cellguard",
        "create validatingwebhookconfigurations.admissionregistration.k8s.io",
        "patch validatingwebhookconfigurations.admissionregistration.k8s.io/another-webhook",
    )
    if url_mode:
        access.can(
            "get validatingwebhookconfigurations.admissionregistration.k8s.io/cellguard",
            "patch validatingwebhookconfigurations.admissionregistration.k8s.io/cellguard",
        )
    else:
        access.cannot(
            "patch validatingwebhookconfigurations.admissionregistration.k8s.io/cellguard"
        )
    if watched:
        access.cannot(
            "list namespaces",
            "watch namespaces",
            "list streamcells.cellguard.io -n default",
            "list streamcells.cellguard.io --all-namespaces",
            "create deployments.apps -n default",
            "list pods -n default",
        )
        for other in watched[1:]:
            access.can(
                f"patch streamcells.cellguard.io --subresource=status -n {other}",
                f"create deployments.apps -n {other}",
            )
    else:
        access.can(
            "list namespaces", "watch namespaces", "list streamcells.cellguard.io --all-namespaces"
        )
    return access.failures


def _check_agent_access(cluster: LocalCluster, namespace: str, sa: str, node: str) -> list[str]:
    access = Access(cluster, _sa_user(namespace, sa))
    access.can(
        "create nodebudgets.cellguard.io",
        f"patch nodebudgets.cellguard.io/{node}",
        f"get nodebudgets.cellguard.io/{node}",
        f"get nodes/{node}",
    )
    access.cannot(
        "list pods --all-namespaces",
        f"list pods -n {namespace}",
        "get secrets -n kube-system",
        f"get secrets -n {namespace}",
        "list streamcells.cellguard.io --all-namespaces",
        "get streamcells.cellguard.io -n default",
        "list nodes",
        f"patch nodes/{node}",
        f"delete nodebudgets.cellguard.io/{node}",
        "list nodebudgets.cellguard.io",
        "get threadbudgetpolicies.cellguard.io",
        "get configmaps -n kube-system",
        f"create leases.coordination.k8s.io -n {namespace}",
    )
    return access.failures


@pytest.mark.parametrize("mode", ["all-namespaces", "url-mode", "namespaced"])
def test_service_accounts_can_do_what_they_need_and_nothing_more(
    cluster: LocalCluster, helm: Helm, api_crds: None, mode: str
) -> None:
    namespace = _unique("cg-rbac")
    release = namespace  # cluster-scoped names carry the release name: unique per test
    sets = {
        "all-namespaces": [],
        "url-mode": [
            "webhook.mode=url",
            "webhook.url=https://192.0.2.1:9443",
            "operator.replicas=0",
        ],
        "namespaced": [
            f"operator.watchNamespaces={{{namespace}-a,{namespace}-b}}",
            f"tests.namespace={namespace}-a",
        ],
    }[mode]
    manifests = helm.template(release=release, namespace=namespace, set_values=sets)
    rbac = [m for m in manifests if m["kind"] in RBAC_KINDS and not is_hook(m)]
    watched = [f"{namespace}-a", f"{namespace}-b"] if mode == "namespaced" else []
    with _namespaces(cluster, namespace, *watched):
        try:
            cluster.kubectl("apply", "-f", "-", input_text=_yaml(rbac))
            operator_sa = f"{release}-cellguard-operator"
            failures = _check_operator_access(
                cluster, namespace, operator_sa, watched=watched, url_mode=mode == "url-mode"
            )
            failures += _check_agent_access(
                cluster, namespace, f"{release}-cellguard-agent", "e2e-1"
            )
        finally:
            _delete(cluster, rbac)
    assert failures == []


def test_the_operator_may_change_pool_labels_of_a_node_and_nothing_else(
    cluster: LocalCluster, helm: Helm, api_crds: None
) -> None:
    """RBAC gives the operator `patch nodes`; the chart's ValidatingAdmissionPolicy, enforced
    by the API server, lets it touch nothing but the cellpool.cellguard.io/* labels."""
    namespace = _unique("cg-pools")
    manifests = helm.template(release=namespace, namespace=namespace)
    kinds = (*RBAC_KINDS, "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    chosen = [m for m in manifests if m["kind"] in kinds and not is_hook(m)]
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= {
        m["kind"] for m in chosen
    }
    operator = _sa_user(namespace, f"{namespace}-cellguard-operator")
    node = cluster.initial_nodes[0].name
    pool_label = f"cellpool.cellguard.io/{namespace}"

    def label(*args: str, user: str = operator) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl("label", "node", node, *args, f"--as={user}", check=False)

    with _namespaces(cluster, namespace):
        try:
            cluster.kubectl("apply", "-f", "-", input_text=_yaml(chosen))

            def policy_active() -> bool:
                # The policy is enforced once the API server has compiled it: probe with a
                # change it must refuse (and undo it should it pass before that).
                probe = label("cellguard-e2e-probe=1")
                if probe.returncode == 0:
                    cluster.kubectl("label", "node", node, "cellguard-e2e-probe-", check=False)
                    return False
                return "may only change cellpool.cellguard.io/* labels" in probe.stderr

            wait_for(policy_active, timeout=60, what="the node pool policy to be enforced")
            joined = label(f"{pool_label}=apps.ingest-a")
            assert joined.returncode == 0, joined.stderr
            moved = label(f"{pool_label}=apps.ingest-b", "--overwrite")
            assert moved.returncode == 0, moved.stderr
            left = label(f"{pool_label}-")
            assert left.returncode == 0, left.stderr
            other = label("kubernetes.io/hostname-")
            assert other.returncode != 0
            assert "may only change cellpool.cellguard.io/* labels" in other.stderr
            annotated = cluster.kubectl(
                "annotate", "node", node, "x=1", f"--as={operator}", check=False
            )
            assert annotated.returncode != 0 and "may not change" in annotated.stderr
            tainted = cluster.kubectl(
                "taint", "node", node, "x=1:NoSchedule", f"--as={operator}", check=False
            )
            assert tainted.returncode != 0 and "may not change" in tainted.stderr
        finally:
            cluster.kubectl("label", "node", node, f"{pool_label}-", check=False)
            _delete(cluster, chosen)


def test_the_operator_may_change_the_leader_label_of_a_pod_and_nothing_else(
    cluster: LocalCluster, helm: Helm, api_crds: None
) -> None:
    """RBAC gives the operator `patch pods` in its namespace (the leader labels its own pod);
    the chart's ValidatingAdmissionPolicy narrows it to the cellguard.io/leader label."""
    namespace = _unique("cg-leader")
    manifests = helm.template(release=namespace, namespace=namespace)
    kinds = (*RBAC_KINDS, "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    chosen = [m for m in manifests if m["kind"] in kinds and not is_hook(m)]
    operator = _sa_user(namespace, f"{namespace}-cellguard-operator")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "operator-0", "namespace": namespace, "labels": {"app": "x"}},
        "spec": {"containers": [{"name": "c", "image": "cellguard:e2e"}]},
    }

    def label(*args: str) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl(
            "label", "pod", "operator-0", "-n", namespace, *args, f"--as={operator}",
            check=False,
        )  # fmt: skip

    with _namespaces(cluster, namespace):
        try:
            cluster.kubectl("apply", "-f", "-", input_text=_yaml([*chosen, pod]))

            def policy_active() -> bool:
                probe = label("cellguard-e2e-probe=1")
                if probe.returncode == 0:
                    cluster.kubectl(
                        "label", "pod", "operator-0", "-n", namespace, "cellguard-e2e-probe-"
                    )
                    return False
                return "may only change the cellguard.io/leader label" in probe.stderr

            wait_for(policy_active, timeout=60, what="the leader label policy to be enforced")
            marked = label("cellguard.io/leader=true")
            assert marked.returncode == 0, marked.stderr
            unmarked = label("cellguard.io/leader-")
            assert unmarked.returncode == 0, unmarked.stderr
            other = label("app-")
            assert other.returncode != 0 and "cellguard.io/leader label" in other.stderr
            annotated = cluster.kubectl(
                "annotate", "pod", "operator-0", "-n", namespace, "x=1", f"--as={operator}",
                check=False,
            )  # fmt: skip
            assert annotated.returncode != 0 and "may not change" in annotated.stderr
        finally:
            _delete(cluster, chosen)


# --------------------------------------------------------------------------- a fresh cluster


@pytest.fixture
def fresh_cluster(cluster: LocalCluster, tmp_path: Path) -> Iterator[LocalCluster]:
    """A control plane of its own: no CRDs, nothing of cellguard yet. Three nodes, one of
    them tainted (the agent must still run there)."""
    nodes = [
        NodeSpec(name="fresh-1", labels={"topology.kubernetes.io/zone": "zone-a"}),
        NodeSpec(name="fresh-2", labels={"topology.kubernetes.io/zone": "zone-b"}),
        NodeSpec(
            name="fresh-3",
            labels={"topology.kubernetes.io/zone": "zone-a"},
            taints=({"key": "dedicated", "value": "streams", "effect": "NoSchedule"},),
        ),
    ]
    fresh = LocalCluster(cluster.bin_dir, nodes=nodes, workdir=tmp_path / "cluster")
    fresh.start()
    try:
        yield fresh
    finally:
        fresh.stop()


@dataclass
class Ran:
    pod: str
    returncode: int
    output: str


class StandInKubelet:
    """Runs the chart's kubectl pods (which kwok only pretends to run): the container's
    command runs here, as the pod's service account, with the control plane's kubectl on
    PATH; its exit status becomes the pod's phase (Succeeded or Failed)."""

    def __init__(self, cluster: LocalCluster, namespace: str, selector: str, workdir: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.selector = selector
        self.workdir = workdir
        self.ran: list[Ran] = []
        self.errors: list[str] = []
        self._done: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> StandInKubelet:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert self.errors == [], self.errors

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                pods = _get(self.cluster, "pods", "-n", self.namespace, "-l", self.selector)[
                    "items"
                ]
                for pod in pods:
                    uid = pod["metadata"]["uid"]
                    # Running (kwok has set its status and IP) and not yet run by us.
                    if uid in self._done or pod["status"].get("phase") != "Running":
                        continue
                    self._done.add(uid)
                    self._run(pod)
            except Exception as error:  # reported when the block ends
                self.errors.append(repr(error))

    def _run(self, pod: Manifest) -> None:
        spec = pod["spec"]
        (container,) = spec["containers"]
        user = _sa_user(pod["metadata"]["namespace"], spec["serviceAccountName"])
        home = self.workdir / pod["metadata"]["name"]
        home.mkdir(parents=True, exist_ok=True)
        kubeconfig = _impersonating_kubeconfig(
            self.cluster,
            home / "kubeconfig",
            user,
            ("system:serviceaccounts", f"system:serviceaccounts:{self.namespace}"),
        )
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        env.update(
            PATH=f"{self.cluster.bin_dir}:{os.environ['PATH']}",
            KUBECONFIG=str(kubeconfig),
            HOME=str(home),
        )
        result = subprocess.run(
            [*container["command"], *container.get("args", [])],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        self.ran.append(
            Ran(pod["metadata"]["name"], result.returncode, result.stdout + result.stderr)
        )
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {
            "status": {
                "phase": "Succeeded" if result.returncode == 0 else "Failed",
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "image": container["image"],
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "started": False,
                        "state": {
                            "terminated": {
                                "exitCode": result.returncode,
                                "reason": "Completed" if result.returncode == 0 else "Error",
                                "startedAt": now,
                                "finishedAt": now,
                            }
                        },
                    }
                ],
                "conditions": [
                    {
                        "type": t,
                        "status": "False",
                        "reason": "PodCompleted",
                        "lastTransitionTime": now,
                    }
                    for t in ("Ready", "ContainersReady")
                ],
            }
        }
        self.cluster.kubectl(
            "patch", "pod", pod["metadata"]["name"], "-n", self.namespace,
            "--subresource=status", "--type=strategic", "-p", json.dumps(status),
        )  # fmt: skip


def _impersonating_kubeconfig(
    cluster: LocalCluster, path: Path, user: str, groups: Sequence[str]
) -> Path:
    """The admin's kubeconfig, acting as `user` (kubectl impersonates it: every request is
    authorized as that user). Service-account names are often too long for a certificate's
    common name, which `LocalCluster.user_kubeconfig` uses."""
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for entry in config["users"]:
        entry["user"]["as"] = user
        entry["user"]["as-groups"] = list(groups)
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _fresh_helm(cluster: LocalCluster) -> Helm:
    return Helm(cluster.bin_dir / "helm", kubeconfig=cluster.kubeconfig)


def _uid(cluster: LocalCluster, *args: str) -> str:
    uid: str = _get(cluster, *args)["metadata"]["uid"]
    return uid


def _manifest_kinds(helm: Helm, release: str, namespace: str) -> set[str]:
    text = helm.run("get", "manifest", release, "-n", namespace).stdout
    return {d["kind"] for d in yaml.safe_load_all(text) if d}


def test_install_upgrade_uninstall_on_a_fresh_cluster(
    fresh_cluster: LocalCluster, tmp_path: Path
) -> None:
    c, ns = fresh_cluster, "cellguard-system"
    helm = _fresh_helm(c)
    crds_before = c.kubectl("get", "crd", "-o", "name").stdout
    assert "cellguard.io" not in crds_before

    # ---- install: CRDs and a policy in one release, on a cluster that has neither.
    policy_pods = "app.kubernetes.io/component=policy"
    with StandInKubelet(c, ns, policy_pods, tmp_path / "kubelet") as kubelet:
        installed = helm.run(
            "install", "cg", str(CHART), "-n", ns, "--create-namespace",
            "--wait", "--timeout", "4m",
        )  # fmt: skip
    assert [r.returncode for r in kubelet.ran] == [0], kubelet.ran
    assert "serverside-applied" in kubelet.ran[0].output, kubelet.ran[0].output
    assert f"cellguard {__version__} is installed in namespace cellguard-system" in installed.stdout
    crd_uids = {}
    for name in CELLGUARD_CRDS:
        crd = _get(c, "crd", name)
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert any(
            x["type"] == "Established" and x["status"] == "True"
            for x in crd["status"]["conditions"]
        )
        crd_uids[name] = crd["metadata"]["uid"]
    policy = _get(c, "threadbudgetpolicy", "default")
    assert policy["spec"]["safetyMargin"] == 0.2 and policy["spec"]["unknownBudget"] == "Refuse"
    # The API server filled in the defaults of what the values leave out.
    assert policy["spec"]["alerts"]["criticalHeadroom"] == 0.15
    policy_uid = policy["metadata"]["uid"]
    # The hook's helpers are gone after it succeeded.
    assert not _exists(c, "job", "-n", ns, "cg-cellguard-default-policy")
    assert not _exists(c, "clusterrole", "cg-cellguard-default-policy")

    # ---- workloads: two operator pods on two nodes, an agent on every node (tainted too).
    operator_pods = wait_for(
        lambda: (
            [
                p
                for p in _get(c, "pods", "-n", ns, "-l", "app.kubernetes.io/component=operator")[
                    "items"
                ]
                if p["status"].get("phase") == "Running"
            ]
            or None
        ),
        what="operator pods",
    )
    assert len(operator_pods) == 2
    assert len({p["spec"]["nodeName"] for p in operator_pods}) == 2
    assert all(p["spec"]["priorityClassName"] == "system-cluster-critical" for p in operator_pods)
    agents = _get(c, "pods", "-n", ns, "-l", "app.kubernetes.io/component=agent")["items"]
    assert sorted(p["spec"]["nodeName"] for p in agents) == ["fresh-1", "fresh-2", "fresh-3"]

    # ---- the webhook: CA from the generated Secret; fail closed while nothing answers.
    secret = _get(c, "secret", "-n", ns, "cg-cellguard-webhook-tls")
    vwc = _get(c, "validatingwebhookconfiguration", "cellguard")
    assert {h["clientConfig"]["caBundle"] for h in vwc["webhooks"]} == {secret["data"]["ca.crt"]}
    c.kubectl("create", "namespace", "apps")
    refused = c.kubectl(
        "apply", "-f", "-", input_text=yaml.safe_dump(_cell("apps", "blocked")), check=False
    )
    assert refused.returncode != 0
    assert 'failed calling webhook "validate-streamcell.cellguard.io"' in refused.stderr, (
        refused.stderr
    )

    # ---- RBAC of the installed release.
    failures = _check_operator_access(c, ns, "cg-cellguard-operator")
    failures += _check_agent_access(c, ns, "cg-cellguard-agent", "fresh-1")
    # The tenant roles, aggregated into the built-in ones (a namespace editor's rights).
    editor = Access(c, "chart-e2e-editor")
    c.kubectl(
        "create", "rolebinding", "chart-e2e-editor", "-n", "apps",
        "--clusterrole=edit", "--user=chart-e2e-editor",
    )  # fmt: skip
    wait_for(lambda: editor._can("list pods -n apps"), timeout=30, what="the editor's binding")
    wait_for(
        lambda: editor._can("patch streamcells.cellguard.io --subresource=scale -n apps"),
        timeout=30,
        what="cg-cellguard-edit to be aggregated into edit",
    )
    editor.can("create streamcells.cellguard.io -n apps", "list streamcells.cellguard.io -n apps")
    editor.cannot(
        "patch streamcells.cellguard.io --subresource=status -n apps",
        "list streamcells.cellguard.io -n default",
    )
    failures += editor.failures
    assert failures == []

    # ---- upgrade: the certificate and the CRDs stay; the policy is now managed in place.
    template_before = _get(c, "deployment", "-n", ns, "cg-cellguard-operator")["spec"]["template"]
    with StandInKubelet(c, ns, policy_pods, tmp_path / "kubelet-upgrade") as kubelet:
        helm.run(
            "upgrade", "cg", str(CHART), "-n", ns, "--wait", "--timeout", "4m",
            # --set makes 0.25 a string (the schema refuses it); --set-json keeps a number.
            "--set-json", "defaultPolicy.spec.safetyMargin=0.25",
            "--set", "agent.intervalSeconds=20",
        )  # fmt: skip
    assert [r.returncode for r in kubelet.ran] == [0], kubelet.ran  # the policy hook again
    assert _get(c, "secret", "-n", ns, "cg-cellguard-webhook-tls")["data"] == secret["data"]
    vwc_after = _get(c, "validatingwebhookconfiguration", "cellguard")
    assert {h["clientConfig"]["caBundle"] for h in vwc_after["webhooks"]} == {
        secret["data"]["ca.crt"]
    }
    template_after = _get(c, "deployment", "-n", ns, "cg-cellguard-operator")["spec"]["template"]
    assert template_after == template_before, "the operator pods must not restart"
    for name, uid in crd_uids.items():
        assert _uid(c, "crd", name) == uid
    policy = _get(c, "threadbudgetpolicy", "default")
    assert policy["metadata"]["uid"] == policy_uid
    assert policy["spec"]["safetyMargin"] == 0.25
    assert "ThreadBudgetPolicy" not in _manifest_kinds(helm, "cg", ns), "Helm never owns it"
    daemonset = _get(c, "daemonset", "-n", ns, "cg-cellguard-agent")
    assert "--interval=20" in daemonset["spec"]["template"]["spec"]["containers"][0]["args"]

    # ---- uninstall: CRDs, people's cells and the default policy stay.
    c.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(_cell(ns, "survivor")))  # exempt ns
    helm.run("uninstall", "cg", "-n", ns, "--wait", "--timeout", "3m")
    for name, uid in crd_uids.items():
        assert _uid(c, "crd", name) == uid
    assert _exists(c, "streamcell", "-n", ns, "survivor")
    assert _uid(c, "threadbudgetpolicy", "default") == policy_uid
    for gone in (
        ("validatingwebhookconfiguration", "cellguard"),
        ("clusterrole", "cg-cellguard-operator"),
        ("clusterrole", "cg-cellguard-agent"),
        ("clusterrole", "cg-cellguard-view"),
        ("clusterrole", "cg-cellguard-edit"),
        ("deployment", "-n", ns, "cg-cellguard-operator"),
        ("daemonset", "-n", ns, "cg-cellguard-agent"),
        ("secret", "-n", ns, "cg-cellguard-webhook-tls"),
    ):
        assert not _exists(c, *gone), gone
    # With the webhook gone, cells can be created again anywhere.
    c.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(_cell("apps", "after-uninstall")))


def _cell(namespace: str, name: str, replicas: int = 1) -> Manifest:
    return {
        "apiVersion": "cellguard.io/v1alpha1",
        "kind": "StreamCell",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "service": "chart-e2e",
            "replicas": replicas,
            "threads": {"base": 50, "perPeer": 2},
            "template": {
                "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}
            },
        },
    }


# --------------------------------------------------------------------------- helm test


@dataclass
class LocalOperator:
    """`cellguard run` with the arguments of the chart's Deployment, run here (URL mode) as
    the chart's operator service account, with the certificate the chart generated."""

    cluster: LocalCluster
    args: list[str]
    log_path: Path
    health_port: int
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "cellguard", *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()

    def ready(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            raise AssertionError(f"the operator exited ({self.popen.returncode}):\n{self.log()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/readyz", timeout=2
            ) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def log(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-60:])


def _local_operator(
    cluster: LocalCluster, helm: Helm, namespace: str, workdir: Path, webhook_port: int
) -> LocalOperator:
    """The chart's operator arguments, with local paths and ports, as its service account."""
    text = helm.run("get", "manifest", "cg", "-n", namespace).stdout
    deployment = find([d for d in yaml.safe_load_all(text) if d], "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    secret = _get(cluster, "secret", "-n", namespace, "cg-cellguard-webhook-tls")
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (workdir / key).write_bytes(base64.b64decode(secret["data"][key]))
    health_port, metrics_port = free_port(), free_port()
    mount = "/etc/cellguard/webhook/"
    replace = {
        "--identity=$(POD_NAME)": "--identity=chart-e2e-operator",
        "--operator-namespace=$(POD_NAMESPACE)": f"--operator-namespace={namespace}",
        "--webhook-host=0.0.0.0": "--webhook-host=127.0.0.1",
        f"--webhook-port={9443}": f"--webhook-port={webhook_port}",
        "--probe-host=0.0.0.0": "--probe-host=127.0.0.1",
        "--health-port=8081": f"--health-port={health_port}",
        "--metrics-port=8080": f"--metrics-port={metrics_port}",
        "--status-interval=10": "--status-interval=2",
    }
    args = []
    for arg in container["args"]:
        arg = replace.get(arg, arg)
        if mount in arg:
            arg = arg.replace(mount, f"{workdir}/")
        args.append(arg)
    assert all("$(" not in a for a in args), args
    kubeconfig = cluster.user_kubeconfig(
        _sa_user(namespace, "cg-cellguard-operator"),
        ("system:serviceaccounts", f"system:serviceaccounts:{namespace}"),
    )
    return LocalOperator(
        cluster,
        [*args, f"--kubeconfig={kubeconfig}"],
        workdir / "operator.log",
        health_port,
    )


def test_helm_test_passes_against_the_operator_and_fails_without_it(
    fresh_cluster: LocalCluster, tmp_path: Path
) -> None:
    c, ns = fresh_cluster, "cellguard-system"
    helm = _fresh_helm(c)
    port = free_port()
    with StandInKubelet(c, ns, "app.kubernetes.io/component=policy", tmp_path / "kubelet"):
        helm.run(
            "install", "cg", str(CHART), "-n", ns, "--create-namespace",
            "--wait", "--timeout", "4m", "--set", "webhook.mode=url", "--set", f"webhook.url=https://127.0.0.1:{port}",
            "--set", "operator.replicas=0",
        )  # fmt: skip
    operator = _local_operator(c, helm, ns, tmp_path, port)
    operator.start()
    try:
        try:
            wait_for(operator.ready, timeout=90, what="the operator to be ready")
        except AssertionError:
            raise AssertionError(f"operator not ready:\n{operator.log()}") from None
        # The agent, as the chart's agent service account with the token of its pod on
        # fresh-1 (the chart's policy lets it write that node's budget only), reports it.
        (agent_pod,) = _get(
            c, "pods", "-n", ns, "-l", "app.kubernetes.io/component=agent",
            "--field-selector=spec.nodeName=fresh-1",
        )["items"]  # fmt: skip
        agent_kubeconfig = token_kubeconfig(
            c, ns, "cg-cellguard-agent", tmp_path / "agent.kubeconfig",
            bound_pod=agent_pod["metadata"]["name"],
        )  # fmt: skip
        agent = subprocess.run(
            [
                sys.executable, "-m", "cellguard", "agent", "--once", "--node-name=fresh-1",
                f"--kubeconfig={agent_kubeconfig}",
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert agent.returncode == 0, agent.stdout + agent.stderr
        budget = _get(c, "nodebudget", "fresh-1")
        assert budget["metadata"]["ownerReferences"][0]["name"] == "fresh-1"  # it read the Node

        with StandInKubelet(c, ns, "app.kubernetes.io/component=test", tmp_path / "t1") as kubelet:
            passed = helm.run("test", "cg", "-n", ns, "--timeout", "2m", check=False)
        assert passed.returncode == 0, passed.stdout + passed.stderr + repr(kubelet.ran)
        (ran,) = kubelet.ran
        assert ran.returncode == 0 and "PASS" in ran.output, ran.output
        assert (
            'admission webhook "validate-streamcell.cellguard.io" denied the request' in ran.output
        )
        # Nothing was created by the dry run.
        assert not _exists(c, "streamcell", "-n", "default", "cellguard-helm-test-oversized")
    finally:
        operator.stop()

    # Without an operator the webhook cannot answer: the request is refused, but the test
    # must not count that as cellguard's refusal.
    with StandInKubelet(c, ns, "app.kubernetes.io/component=test", tmp_path / "t2") as kubelet:
        failed = helm.run("test", "cg", "-n", ns, "--timeout", "2m", check=False)
    assert failed.returncode != 0, failed.stdout
    (ran,) = kubelet.ran
    assert ran.returncode == 1 and "not because cellguard's webhook refused it" in ran.output, (
        ran.output
    )
