"""cellguard on a cluster the demo did not make: found and reused, or installed and removed.

The demo installs the Helm chart only where no cellguard runs yet, and then removes exactly
what it created: the release, its namespace if the demo created it, and the CRDs if the
demo created them (the chart keeps CRDs on uninstall, as deleting one deletes every object
of its kind - here only the demo's own). A cellguard already there (a Helm release of the
chart, or its webhook configuration) is reused and left as it was. CRDs that differ from
this cellguard's are a refusal: the demo would misread, or be refused by, another version.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cellguard import __version__
from cellguard.demo.kube import Kube, Refusal
from cellguard.devcluster.install import crds_dir
from cellguard.devcluster.toolchain import repo_root

CHART = "cellguard"
RELEASE = "cellguard"
RELEASE_NAMESPACE = "cellguard-system"
WEBHOOK_SUFFIX = ".cellguard.io"
# The chart's kubectl hook Job applies the `default` policy and is kept on uninstall; the
# demo brings its own policy (and removes it), so the hook (and its image) are not needed.
DEMO_CHART_VALUES = ("defaultPolicy.create=false",)


@dataclass(frozen=True)
class InstallOptions:
    image: str | None = None  # repository[:tag] or repository@digest; None: the chart's
    pull_policy: str | None = None
    values_files: tuple[Path, ...] = ()
    set_values: tuple[str, ...] = ()
    values: dict[str, Any] = field(default_factory=dict)  # written to a values file
    timeout_seconds: int = 300


@dataclass
class Install:
    namespace: str
    release: str | None  # the Helm release; None: installed some other way
    by_demo: bool
    description: str
    created_namespace: bool = False
    created_crds: tuple[str, ...] = ()


def _crd_files() -> dict[str, dict[str, Any]]:
    crds = {}
    for path in sorted(crds_dir().glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        crds[crd["metadata"]["name"]] = crd
    return crds


def _schemas(crd: dict[str, Any]) -> dict[str, Any]:
    return {v["name"]: v.get("schema") for v in crd["spec"]["versions"]}


def check_crds(kube: Kube) -> list[str]:
    """cellguard's CRDs in the cluster (names); Refusal when one differs from this version's."""
    ours = _crd_files()
    found = []
    for name, crd in ours.items():
        live = kube.get("customresourcedefinition", name)
        if live is None:
            continue
        found.append(name)
        if _schemas(live) != _schemas(crd):
            version = live["metadata"].get("labels", {}).get("app.kubernetes.io/version", "?")
            raise Refusal(
                f"the cluster's CRD {name} (app version {version}) is not this cellguard's "
                f"({__version__}): its versions or schema differ, so the demo would misread it "
                "or be refused. Upgrade cellguard there (helm upgrade) or use another cluster."
            )
    return found


def find_install(kube: Kube) -> Install | None:
    """A Helm release of the chart, or else a cellguard webhook configuration."""
    listed = kube.helm("list", "--all-namespaces", "--output=json", timeout=60)
    if listed.returncode == 0:
        for release in json.loads(listed.stdout or "[]"):
            if str(release.get("chart", "")).startswith(f"{CHART}-"):
                return Install(
                    namespace=release["namespace"],
                    release=release["name"],
                    by_demo=False,
                    description=(
                        f"Helm release {release['name']} in {release['namespace']} "
                        f"(chart {release['chart']}, app version {release.get('app_version')})"
                    ),
                )
    for config in kube.items("validatingwebhookconfigurations"):
        hooks = config.get("webhooks") or []
        if any(h["name"].endswith(WEBHOOK_SUFFIX) for h in hooks):
            service = hooks[0].get("clientConfig", {}).get("service") or {}
            return Install(
                namespace=service.get("namespace", ""),
                release=None,
                by_demo=False,
                description=f"webhook configuration {config['metadata']['name']} (not Helm)",
            )
    return None


def check_permissions(kube: Kube, installing: bool, namespace: str) -> None:
    """Refusal naming every permission the demo lacks (it changes nothing before)."""
    needed = [
        ("create", "namespaces", None),
        ("delete", "namespaces", None),
        ("list", "nodes", None),
        ("patch", "nodes", None),  # clean-up: the demo cell's node-pool label, if left
        ("create", "streamcells.cellguard.io", None),
        ("create", "threadbudgetpolicies.cellguard.io", None),
        ("delete", "threadbudgetpolicies.cellguard.io", None),
        ("list", "nodebudgets.cellguard.io", None),
        ("create", "pods/portforward", namespace),
    ]
    if installing:
        needed += [
            ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
            ("delete", "customresourcedefinitions.apiextensions.k8s.io", None),
            ("create", "clusterroles.rbac.authorization.k8s.io", None),
            ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
            ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io", None),
            ("create", "validatingadmissionpolicies.admissionregistration.k8s.io", None),
            ("create", "daemonsets.apps", namespace),
            ("create", "deployments.apps", namespace),
            ("create", "secrets", namespace),
        ]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda n: kube.can_i(n[0], n[1], n[2]), needed))
    missing = [
        f"{verb} {what}" for (verb, what, _ns), ok in zip(needed, answers, strict=True) if not ok
    ]
    if missing:
        who = kube.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout
        raise Refusal(
            f"{who or 'this identity'} may not {', '.join(missing)}: the demo "
            + ("installs cellguard (CRDs, RBAC, webhooks) and " if installing else "")
            + "creates a namespace, a policy and cells; run it as a cluster admin"
        )


def _image_values(image: str) -> list[str]:
    if "@" in image:
        repository, digest = image.split("@", 1)
        return [f"image.repository={repository}", f"image.digest={digest}"]
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:  # a tag, not a registry's port
        return [f"image.repository={image[:colon]}", f"image.tag={image[colon + 1 :]}"]
    return [f"image.repository={image}"]


def planned_install(kube: Kube) -> Install:
    """The release the demo is about to install, with what it will create: known before
    `helm install` starts, so that an interrupted install is removed all the same."""
    return Install(
        namespace=RELEASE_NAMESPACE,
        release=RELEASE,
        by_demo=True,
        description=f"Helm release {RELEASE} in {RELEASE_NAMESPACE}, installed by the demo",
        created_namespace=kube.get("namespace", RELEASE_NAMESPACE) is None,
        created_crds=tuple(sorted(set(_crd_files()) - set(check_crds(kube)))),
    )


def install_chart(
    kube: Kube,
    install: Install,
    options: InstallOptions,
    workdir: Path,
    progress: Callable[[str], None],
) -> None:
    """`helm install` of the checkout's chart, waiting until its pods are Ready."""
    root = repo_root()
    if root is None:
        raise Refusal("installing cellguard needs the chart from a cellguard checkout")
    assert install.release is not None
    args = ["install", install.release, str(root / "helm" / CHART)]
    args += ["--namespace", install.namespace, "--create-namespace"]
    args += ["--wait", f"--timeout={options.timeout_seconds}s"]
    for value in (*DEMO_CHART_VALUES, *(_image_values(options.image) if options.image else [])):
        args += ["--set", value]
    if options.pull_policy:
        args += ["--set", f"image.pullPolicy={options.pull_policy}"]
    if options.values:
        path = workdir / "demo-values.yaml"
        path.write_text(yaml.safe_dump(options.values))
        args += ["--values", str(path)]
    for values_file in options.values_files:
        args += ["--values", str(values_file)]
    for value in options.set_values:
        args += ["--set", value]
    progress(f"helm install {install.release} (waiting for its pods, up to "
             f"{options.timeout_seconds} s) ...")  # fmt: skip
    result = kube.helm(*args, timeout=options.timeout_seconds + 60)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
        raise Refusal(
            f"helm install failed: {' '.join(errors) or result.stderr.strip()[-1500:]}"
            + "".join(f"\n  {problem}" for problem in pod_problems(kube, install.namespace))
        )


def pod_problems(kube: Kube, namespace: str) -> list[str]:
    """Why the release's pods are not Ready, as the kubelet says (ImagePullBackOff ...)."""
    problems = []
    for pod in kube.items("pods", "-n", namespace):
        for status in pod.get("status", {}).get("containerStatuses") or []:
            waiting = status.get("state", {}).get("waiting")
            if waiting and waiting.get("reason") not in (None, "ContainerCreating"):
                problems.append(
                    f"pod {pod['metadata']['name']}: {waiting['reason']} ({status['image']}): "
                    f"{waiting.get('message', '')[:200]}"
                )
        if pod.get("status", {}).get("phase") == "Pending" and not problems:
            for condition in pod["status"].get("conditions") or []:
                if condition.get("reason") == "Unschedulable":
                    problems.append(f"pod {pod['metadata']['name']}: {condition.get('message')}")
    if any("Pull" in p for p in problems):
        problems.append("can the nodes pull the image? see --image and --image-pull-policy")
    return problems


def uninstall(kube: Kube, install: Install, progress: Callable[[str], None]) -> None:
    """What the demo installed: the release, then what the chart keeps (the CRDs the demo
    created) and the namespace if the demo created it."""
    if not install.by_demo:
        return
    if install.release is not None:
        result = kube.helm(
            "uninstall", install.release, "--namespace", install.namespace, "--wait",
            "--timeout=180s", "--ignore-not-found", timeout=240,
        )  # fmt: skip
        if result.returncode != 0:
            progress(f"helm uninstall: {result.stderr.strip()}")
    if install.created_crds:
        kube.kubectl(
            "delete", "customresourcedefinition", *install.created_crds, "--ignore-not-found",
            "--timeout=120s", timeout=150,
        )  # fmt: skip
    if install.created_namespace:
        kube.kubectl(
            "delete", "namespace", install.namespace, "--ignore-not-found", "--timeout=120s",
            timeout=150,
        )  # fmt: skip
