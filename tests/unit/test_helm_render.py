"""The Helm chart, rendered without a cluster: lint, every CI value set, and what each object
must be (the webhook configuration identical to the operator's own builder, the CRDs identical
to crds/, least-privilege RBAC, hardened pods, the wrapped monitoring files)."""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cellguard import settings as settings_module
from cellguard.agent import cli as agent_cli
from cellguard.api import v1alpha1 as api
from cellguard.constants import (
    NAMESPACE_NAME_LABEL,
    WEBHOOK_DEPLOYMENT,
    WEBHOOK_DEPLOYMENT_SCALE,
    WEBHOOK_REPLICASET,
    WEBHOOK_REPLICASET_SCALE,
    WEBHOOK_STREAMCELL,
    WEBHOOK_STREAMCELL_SCALE,
)
from cellguard.devcluster.toolchain import ensure_binaries
from cellguard.resources import webhook as webhook_builder
from helm_support import (
    CHART,
    CI_VALUES,
    REPO,
    Helm,
    HelmError,
    Manifest,
    all_of,
    find,
    is_hook,
    parse,
    policy_from_hook,
)

CLUSTER_SCOPED = {
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ThreadBudgetPolicy",
}
NAMESPACE = "cellguard-system"


@pytest.fixture(scope="session")
def helm() -> Helm:
    bin_dir = ensure_binaries(progress=lambda _m: None)
    return Helm(bin_dir / "helm")


@pytest.fixture(scope="session")
def default_render(helm: Helm) -> list[Manifest]:
    return helm.template()


def _ci(name: str) -> Path:
    path = CHART / "ci" / f"{name}-values.yaml"
    assert path.is_file(), path
    return path


def _ci_id(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


# --------------------------------------------------------------------------- lint and render


def test_there_are_several_ci_value_sets() -> None:
    names = {_ci_id(p) for p in CI_VALUES}
    assert {"default", "url-mode", "cert-manager", "monitoring", "namespaced"} <= names


@pytest.mark.parametrize("values", CI_VALUES, ids=_ci_id)
def test_helm_lint_strict_passes(helm: Helm, values: Path) -> None:
    result = helm.run("lint", "--strict", str(CHART), "--values", str(values), check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 chart(s) linted, 0 chart(s) failed" in output
    # `helm lint` reports a template's `fail` only as [INFO]: that is a failure here.
    assert "Fail:" not in output, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


@pytest.mark.parametrize("values", CI_VALUES, ids=_ci_id)
def test_every_object_is_complete_unique_and_labelled(helm: Helm, values: Path) -> None:
    manifests = helm.template(values=[values])
    assert len(manifests) > 10
    seen: set[tuple[str, str, str]] = set()
    for manifest in manifests:
        meta = manifest["metadata"]
        kind, name = manifest["kind"], meta["name"]
        assert manifest["apiVersion"] and re.fullmatch(r"[a-z0-9.-]{1,253}", name), manifest
        namespace = meta.get("namespace", "")
        if kind in CLUSTER_SCOPED:
            assert not namespace, f"{kind}/{name} is cluster-scoped"
        else:
            # Explicit namespaces, so that `helm template | kubectl apply` lands them right.
            assert namespace, f"{kind}/{name} has no namespace"
        key = (kind, namespace, name)
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        labels = meta.get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "cellguard", key
        assert labels.get("app.kubernetes.io/instance") == "cg", key
        assert all(len(v) <= 63 for v in labels.values()), labels


def test_values_schema_refuses_wrong_values(helm: Helm) -> None:
    cases = {
        "webhook.mode=grpc": "/webhook/mode",
        "webhook.timeoutSeconds=31": "/webhook/timeoutSeconds",
        "webhook.url=http://insecure.example": "/webhook/url",
        "operator.replicas=-1": "/operator/replicas",
        "operator.convergeWorkers=0": "/operator/convergeWorkers",
        "defaultPolicy.spec.safetyMargin=1": "/defaultPolicy/spec/safetyMargin",
        "defaultPolicy.spec.unknownBudget=Ignore": "/defaultPolicy/spec/unknownBudget",
        "webhook.certificate.source=vault": "/webhook/certificate/source",
        "operatr.replicas=1": "additional properties 'operatr'",
    }
    for assignment, where in cases.items():
        result = helm.run(
            "template",
            "cg",
            str(CHART),
            "--kube-version",
            "1.36.3",
            "--set",
            assignment,
            check=False,
        )
        assert result.returncode != 0, assignment
        assert "schema" in result.stderr and where in result.stderr, (assignment, result.stderr)


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (["webhook.mode=url"], "webhook.mode url needs webhook.url"),
        (["webhook.certificate.source=none"], "for URL mode only"),
        (
            ["webhook.certificate.source=existingSecret", "webhook.certificate.existingSecret=s"],
            "needs webhook.caBundle",
        ),
        (
            ["webhook.certificate.source=existingSecret", "webhook.caBundle=Zm9v"],
            "needs webhook.certificate.existingSecret",
        ),
    ],
)
def test_inconsistent_webhook_values_fail_with_a_reason(
    helm: Helm, assignments: list[str], message: str
) -> None:
    args = ["template", "cg", str(CHART), "--kube-version", "1.36.3"]
    for assignment in assignments:
        args += ["--set", assignment]
    result = helm.run(*args, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# --------------------------------------------------------------------------- CRDs


def _strict(value: Any) -> Any:
    """A value with every scalar tagged by its type: 1, 1.0 and "1" stay different."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return (type(value).__name__, value)


def _committed_crds() -> dict[str, Manifest]:
    crds = {}
    for path in sorted((REPO / "crds").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        crds[doc["metadata"]["name"]] = doc
    return crds


def _assert_crds_are_the_committed_files(manifests: list[Manifest]) -> None:
    rendered = {m["metadata"]["name"]: m for m in all_of(manifests, "CustomResourceDefinition")}
    committed = _committed_crds()
    assert sorted(rendered) == sorted(committed) and len(committed) == 3
    for name, crd in rendered.items():
        original = committed[name]
        meta = crd["metadata"]
        assert meta["annotations"]["helm.sh/resource-policy"] == "keep", name
        assert original["metadata"].get("labels", {}).items() <= meta["labels"].items()
        without_meta = {k: v for k, v in crd.items() if k != "metadata"}
        original_without_meta = {k: v for k, v in original.items() if k != "metadata"}
        assert _strict(without_meta) == _strict(original_without_meta), name
        assert meta["name"] == original["metadata"]["name"]
        assert not is_hook(crd), "a hook would not be updated by helm upgrade"


def test_crds_are_the_generated_files_kept_on_uninstall(default_render: list[Manifest]) -> None:
    _assert_crds_are_the_committed_files(default_render)


def test_chart_crds_are_a_link_to_the_generated_directory() -> None:
    link = CHART / "files" / "crds"
    assert link.is_symlink()
    assert link.resolve() == (REPO / "crds").resolve()


def test_crds_can_be_left_out(helm: Helm) -> None:
    manifests = helm.template(set_values=["crds.enabled=false"])
    assert all_of(manifests, "CustomResourceDefinition") == []


def test_packaged_chart_carries_the_crd_files_themselves(helm: Helm, tmp_path: Path) -> None:
    helm.run("package", str(CHART), "--destination", str(tmp_path))
    (package,) = tmp_path.glob("cellguard-*.tgz")
    with tarfile.open(package) as archive:
        members = {m.name: m for m in archive.getmembers()}
        for crd in sorted((REPO / "crds").glob("*.yaml")):
            member = members[f"cellguard/files/crds/{crd.name}"]
            assert member.isfile(), f"{member.name} must be a file, not a link"
            extracted = archive.extractfile(member)
            assert extracted is not None and extracted.read() == crd.read_bytes()
        # The CI value sets are not part of the package (.helmignore).
        assert not any(name.startswith("cellguard/ci/") for name in members)
    _assert_crds_are_the_committed_files(helm.template(chart=package))


# --------------------------------------------------------------------------- webhook


def _operator_settings(manifests: list[Manifest], namespace: str) -> settings_module.Settings:
    """The Settings `cellguard run` gets from the chart's Deployment (unknown flags fail)."""
    container = find(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    args = [a.replace("$(POD_NAMESPACE)", namespace) for a in container["args"]]
    assert args[0] == "run"
    parser = argparse.ArgumentParser(exit_on_error=False)
    settings_module.add_arguments(parser)
    return settings_module.from_args(parser.parse_args(args[1:]))


def _without_ca_bundle(vwc: Manifest) -> list[dict[str, Any]]:
    hooks: list[dict[str, Any]] = json.loads(json.dumps(vwc["webhooks"]))
    for hook in hooks:
        hook["clientConfig"].pop("caBundle", None)
    return hooks


VWC_CASES: dict[str, dict[str, Any]] = {
    "service-default": {},
    "service-tuned": {
        "release": "edge",
        "namespace": "ops",
        "set_values": [
            "webhook.exemptNamespaces={sandbox,kube-system,batch}",
            "webhook.timeoutSeconds=3",
            "webhook.service.port=8443",
            "webhook.configurationName=cellguard-edge",
        ],
        "extra_exempt": ["sandbox", "batch"],
    },
    "url-given-ca": {"values": [_ci("url-mode")]},
    "url-generated": {"values": [_ci("url-mode-generated")]},
    "cert-manager": {"values": [_ci("cert-manager")]},
    "namespaced": {"values": [_ci("namespaced")], "extra_exempt": ["sandbox"]},
}


@pytest.mark.parametrize("case", sorted(VWC_CASES))
def test_webhook_configuration_is_what_the_operator_builds(helm: Helm, case: str) -> None:
    params = VWC_CASES[case]
    release, namespace = params.get("release", "cg"), params.get("namespace", NAMESPACE)
    values: list[Path] = params.get("values", [])
    manifests = helm.template(
        release=release,
        namespace=namespace,
        values=values,
        set_values=params.get("set_values", []),
    )
    vwc = find(manifests, "ValidatingWebhookConfiguration")
    settings = _operator_settings(manifests, namespace)
    # The operator's own view of the webhook, from the arguments the chart gives it.
    if settings.webhook_mode is settings_module.WebhookMode.URL:
        assert settings.webhook_url is not None
        client = webhook_builder.url_client_config(settings.webhook_url, "")
    else:
        service = find(manifests, "Service", f"{release}-cellguard-webhook")
        (port,) = service["spec"]["ports"]
        assert port["targetPort"] == "webhook"
        client = webhook_builder.service_client_config(
            namespace, service["metadata"]["name"], port["port"], ""
        )
    expected = webhook_builder.validating_webhook_configuration(
        client,
        exempt_namespaces=settings.all_exempt_namespaces,
        timeout_seconds=settings.webhook_timeout_seconds,
        name=vwc["metadata"]["name"],
        watched_namespaces=list(settings.namespaces),
    )
    assert _without_ca_bundle(vwc) == _without_ca_bundle(expected)
    assert vwc["apiVersion"] == expected["apiVersion"] and vwc["kind"] == expected["kind"]
    assert expected["metadata"]["labels"].items() <= vwc["metadata"]["labels"].items()
    assert [h["name"] for h in vwc["webhooks"]] == [
        f"{i}.cellguard.io"
        for i in (
            WEBHOOK_STREAMCELL,
            WEBHOOK_STREAMCELL_SCALE,
            WEBHOOK_DEPLOYMENT,
            WEBHOOK_DEPLOYMENT_SCALE,
            WEBHOOK_REPLICASET,
            WEBHOOK_REPLICASET_SCALE,
        )
    ]
    # Exempt: the system namespaces, the release's, and the configured ones.
    exempt = vwc["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]
    assert exempt["key"] == NAMESPACE_NAME_LABEL
    assert exempt["values"] == sorted(
        {
            "kube-system",
            "kube-public",
            "kube-node-lease",
            namespace,
            *params.get("extra_exempt", []),
        }
    )
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in values:
        chart_values = _merge(chart_values, yaml.safe_load(path.read_text()))
    _check_ca_bundle(case, vwc, manifests, chart_values)


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in (overlay or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check_ca_bundle(
    case: str, vwc: Manifest, manifests: list[Manifest], values: dict[str, Any]
) -> None:
    bundles = {h["clientConfig"].get("caBundle") for h in vwc["webhooks"]}
    annotations = vwc["metadata"].get("annotations", {})
    if case == "cert-manager":
        assert bundles == {None}
        assert (
            annotations["cert-manager.io/inject-ca-from"] == "cellguard-system/cg-cellguard-webhook"
        )
        certificate = find(manifests, "Certificate")
        assert certificate["metadata"]["name"] == "cg-cellguard-webhook"
        return
    assert "cert-manager.io/inject-ca-from" not in annotations
    if case == "url-given-ca":
        assert bundles == {values["webhook"]["caBundle"]}
        assert all_of(manifests, "Secret") == []
        return
    secret = find(manifests, "Secret")
    assert bundles == {secret["data"]["ca.crt"]}


def test_url_mode_gives_the_operator_its_url_and_ca(helm: Helm) -> None:
    manifests = helm.template(values=[_ci("url-mode-generated")])
    settings = _operator_settings(manifests, NAMESPACE)
    assert settings.webhook_mode is settings_module.WebhookMode.URL
    assert settings.webhook_url == "https://cellguard-dev.example.internal:9443"
    assert settings.webhook_ca == Path("/etc/cellguard/webhook/ca.crt")
    assert find(manifests, "Deployment")["spec"]["replicas"] == 0
    urls = [
        h["clientConfig"]["url"]
        for h in find(manifests, "ValidatingWebhookConfiguration")["webhooks"]
    ]
    assert urls == [
        "https://cellguard-dev.example.internal:9443/validate-streamcell",
        "https://cellguard-dev.example.internal:9443/validate-streamcell-scale",
        "https://cellguard-dev.example.internal:9443/validate-cell-deployment",
        "https://cellguard-dev.example.internal:9443/validate-cell-deployment-scale",
        "https://cellguard-dev.example.internal:9443/validate-cell-replicaset",
        "https://cellguard-dev.example.internal:9443/validate-cell-replicaset-scale",
    ]
    # No webhook Service in URL mode; the operator may patch its own configuration only.
    assert [s["metadata"]["name"] for s in all_of(manifests, "Service")] == ["cg-cellguard-metrics"]
    role = find(manifests, "ClusterRole", "cg-cellguard-operator")
    vwc_rules = [r for r in role["rules"] if "admissionregistration.k8s.io" in r["apiGroups"]]
    assert vwc_rules == [
        {
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingwebhookconfigurations"],
            "resourceNames": ["cellguard"],
            "verbs": ["get", "patch"],
        }
    ]


# --------------------------------------------------------------------------- certificates


def _load_certificate(secret: Manifest) -> tuple[x509.Certificate, x509.Certificate, Any]:
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    key = serialization.load_pem_private_key(data["tls.key"], password=None)
    return cert, ca, key


def _san(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    return dns, ips


def test_generated_certificate_is_valid_for_the_webhook_service(
    default_render: list[Manifest],
) -> None:
    secret = find(default_render, "Secret", "cg-cellguard-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    assert not is_hook(secret), "a hook Secret would be replaced on every upgrade"
    cert, ca, key = _load_certificate(secret)
    dns, _ = _san(cert)
    service = "cg-cellguard-webhook"
    assert f"{service}.{NAMESPACE}.svc" in dns  # the name the API server connects to
    assert f"{service}.{NAMESPACE}.svc.cluster.local" in dns
    # Signed by the CA of the caBundle, and the key is the certificate's.
    assert cert.issuer == ca.subject
    ca_key = ca.public_key()
    assert isinstance(ca_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey), ca_key
    ca_key.verify(cert.signature, cert.tbs_certificate_bytes, *_signature_args(cert))
    cert_key = cert.public_key()
    assert isinstance(cert_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey), cert_key
    assert key.public_key().public_numbers() == cert_key.public_numbers()
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3640) < lifetime < datetime.timedelta(days=3660)
    # The pods restart when (and only when) the certificate changes.
    pod = find(default_render, "Deployment")["spec"]["template"]["metadata"]
    crt_b64 = secret["data"]["tls.crt"]
    assert (
        pod["annotations"]["checksum/webhook-certificate"]
        == hashlib.sha256(crt_b64.encode()).hexdigest()[:16]
    )


def _signature_args(cert: x509.Certificate) -> tuple[Any, ...]:
    hash_algorithm = cert.signature_hash_algorithm
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return (ec.ECDSA(hash_algorithm),)  # type: ignore[arg-type]
    from cryptography.hazmat.primitives.asymmetric import padding

    return (padding.PKCS1v15(), hash_algorithm)


@pytest.mark.parametrize(
    ("url", "dns_name", "ip"),
    [
        ("https://cellguard-dev.example.internal:9443", "cellguard-dev.example.internal", None),
        ("https://10.1.2.3:9443/base", None, "10.1.2.3"),
        ("https://[fd00::7]:9443", None, "fd00::7"),
    ],
)
def test_url_mode_certificate_names_the_url_host(
    helm: Helm, url: str, dns_name: str | None, ip: str | None
) -> None:
    manifests = helm.template(
        set_values=["webhook.mode=url", f"webhook.url={url}", "operator.replicas=0"]
    )
    cert, _, _ = _load_certificate(find(manifests, "Secret"))
    dns, ips = _san(cert)
    if dns_name:
        assert dns_name in dns
    if ip:
        assert ipaddress.ip_address(ip) in {ipaddress.ip_address(i) for i in ips}


def test_cert_manager_certificate_covers_the_service(helm: Helm) -> None:
    manifests = helm.template(values=[_ci("cert-manager")])
    certificate = find(manifests, "Certificate")
    issuer = find(manifests, "Issuer")
    assert issuer["spec"] == {"selfSigned": {}}
    spec = certificate["spec"]
    assert spec["secretName"] == "cg-cellguard-webhook-tls"
    assert "cg-cellguard-webhook.cellguard-system.svc" in spec["dnsNames"]
    assert spec["issuerRef"] == {
        "name": issuer["metadata"]["name"],
        "kind": "Issuer",
        "group": "cert-manager.io",
    }
    assert (spec["duration"], spec["renewBefore"]) == ("2160h", "360h")
    assert all_of(manifests, "Secret") == [], "cert-manager writes the Secret"
    # The pods mount the Secret cert-manager fills.
    pod = find(manifests, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["webhook-certificate"]["secret"]["secretName"] == "cg-cellguard-webhook-tls"

    with_issuer = helm.template(values=[_ci("cert-manager-issuer")])
    assert all_of(with_issuer, "Issuer") == []
    assert find(with_issuer, "Certificate")["spec"]["issuerRef"] == {
        "name": "internal-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


# --------------------------------------------------------------------------- operator pods


def test_operator_deployment_is_hardened_and_spread(default_render: list[Manifest]) -> None:
    deployment = find(default_render, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    # Every replica is Ready once alive: a rollout adds a pod before it stops one.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    template = spec["template"]
    pod = template["spec"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["serviceAccountName"] == "cg-cellguard-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"webhook": 9443, "metrics": 8080, "health": 8081}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/etc/cellguard/webhook"]["readOnly"] is True
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    # Across nodes: a hard spread on hostnames and a soft anti-affinity.
    hostname = [
        c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == "kubernetes.io/hostname"
    ]
    assert len(hostname) == 1 and hostname[0]["whenUnsatisfiable"] == "DoNotSchedule"
    assert hostname[0]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"


def test_operator_arguments_are_flags_cellguard_run_knows(default_render: list[Manifest]) -> None:
    settings = _operator_settings(default_render, NAMESPACE)
    assert settings.webhook_mode is settings_module.WebhookMode.SERVICE
    assert settings.operator_namespace == NAMESPACE
    assert settings.identity == "$(POD_NAME)"
    assert settings.lease_name == "cellguard-operator"
    assert (settings.webhook_port, settings.health_port, settings.metrics_port) == (
        9443,
        8081,
        8080,
    )
    assert settings.webhook_cert == Path("/etc/cellguard/webhook/tls.crt")
    assert settings.webhook_key == Path("/etc/cellguard/webhook/tls.key")
    assert settings.namespaces == ()
    assert settings.converge_workers == 16
    assert settings.all_exempt_namespaces == [
        NAMESPACE,
        "kube-node-lease",
        "kube-public",
        "kube-system",
    ]


def test_converge_workers_reach_the_operator(helm: Helm) -> None:
    manifests = helm.template(set_values=["operator.convergeWorkers=48"])
    assert _operator_settings(manifests, NAMESPACE).converge_workers == 48


def test_converge_workers_below_one_are_refused_with_a_reason(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    parser = argparse.ArgumentParser()
    settings_module.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--converge-workers=0"])
    assert "--converge-workers: must be 1 or more, not 0" in capsys.readouterr().err
    # The environment's default is checked the same way.
    monkeypatch.setenv("CELLGUARD_CONVERGE_WORKERS", "many")
    parser = argparse.ArgumentParser()
    settings_module.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args([])
    assert "--converge-workers: not a whole number: 'many'" in capsys.readouterr().err
    monkeypatch.setenv("CELLGUARD_CONVERGE_WORKERS", "24")
    parser = argparse.ArgumentParser()
    settings_module.add_arguments(parser)
    assert settings_module.from_args(parser.parse_args([])).converge_workers == 24


def test_the_webhook_reaches_the_leader_by_its_label(default_render: list[Manifest]) -> None:
    service = find(default_render, "Service", "cg-cellguard-webhook")
    deployment = find(default_render, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    # The operator's pods, and of them the one the leader labelled (not in the template).
    assert service["spec"]["selector"] == {**deployment["spec"]["selector"]["matchLabels"],
                                           "cellguard.io/leader": "true"}  # fmt: skip
    assert "cellguard.io/leader" not in labels
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--leader-pod=$(POD_NAME)" in args
    # The metrics Service sees every replica.
    metrics = find(default_render, "Service", "cg-cellguard-metrics")
    assert "cellguard.io/leader" not in metrics["spec"]["selector"]


def test_pdb_lets_a_drain_move_one_replica_at_a_time(default_render: list[Manifest]) -> None:
    pdb = find(default_render, "PodDisruptionBudget")
    deployment = find(default_render, "Deployment")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_hardened_values_change_what_they_say(helm: Helm) -> None:
    manifests = helm.template(values=[_ci("hardened")])
    deployment = find(manifests, "Deployment", "cg-operator")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 1
    assert "priorityClassName" not in pod
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert pod["containers"][0]["image"] == (
        "registry.example.internal/cellguard/cellguard@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )
    required = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required[0]["topologyKey"] == "kubernetes.io/hostname"
    assert all_of(manifests, "PodDisruptionBudget") == []
    assert all(m["metadata"]["labels"]["team"] == "platform" for m in manifests)


# --------------------------------------------------------------------------- agent


def _agent_args(manifests: list[Manifest]) -> argparse.Namespace:
    container = find(manifests, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "agent"
    parser = argparse.ArgumentParser(exit_on_error=False)
    agent_cli.add_arguments(parser)
    return parser.parse_args(container["args"][1:])


def test_agent_reads_the_host_read_only_as_non_root(default_render: list[Manifest]) -> None:
    daemonset = find(default_render, "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in container["securityContext"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["priorityClassName"] == "system-node-critical"
    host_volumes = {v["name"]: v["hostPath"] for v in pod["volumes"] if "hostPath" in v}
    assert {v["path"] for v in host_volumes.values()} == {
        "/proc",
        "/sys",
        "/var/lib/kubelet/config.yaml",
    }
    for mount in container["volumeMounts"]:
        if mount["name"] in host_volumes:
            assert mount.get("readOnly") is True, mount
    args = _agent_args(default_render)
    assert args.node_name == "$(NODE_NAME)"
    assert (args.proc_root, args.sys_root) == (Path("/host/proc"), Path("/host/sys"))
    assert args.kubelet_config == Path("/host/var/lib/kubelet/config.yaml")
    assert args.interval == 30.0
    assert container["env"] == [
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    ]


def test_agent_without_kubelet_config_takes_the_pid_limit(helm: Helm) -> None:
    manifests = helm.template(values=[_ci("hardened")])
    args = _agent_args(manifests)
    assert args.kubelet_config is None and args.pod_pids_limit == 4096
    pod = find(manifests, "DaemonSet")["spec"]["template"]["spec"]
    assert {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v} == {"/proc", "/sys"}
    assert all_of(helm.template(set_values=["agent.enabled=false"]), "DaemonSet") == []


def test_agent_host_pid_namespace_is_opt_in(helm: Helm) -> None:
    """kernel.pid_max is per PID namespace since Linux 6.14: `agent.hostPID` lets the agent
    read the host's; nothing else of the pod changes."""
    default = find(helm.template(), "DaemonSet")["spec"]["template"]["spec"]
    host = find(helm.template(set_values=["agent.hostPID=true"]), "DaemonSet")["spec"]
    assert "hostPID" not in default
    assert host["template"]["spec"].pop("hostPID") is True
    assert host["template"]["spec"] == default
    assert not any(host["template"]["spec"].get(k) for k in ("hostNetwork", "hostIPC"))


# --------------------------------------------------------------------------- RBAC

OPERATOR_CLUSTER_RULES = [
    {
        "apiGroups": ["cellguard.io"],
        "resources": ["threadbudgetpolicies", "nodebudgets"],
        "verbs": ["get", "list", "watch"],
    },
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["authentication.k8s.io"],
        "resources": ["selfsubjectreviews"],
        "verbs": ["create"],
    },
]
OPERATOR_NAMESPACED_RULES = [
    {"apiGroups": ["cellguard.io"], "resources": ["streamcells"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["cellguard.io"], "resources": ["streamcells/status"],
     "verbs": ["get", "patch", "update"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["apps"], "resources": ["deployments"],
     "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]},
    {"apiGroups": [""], "resources": ["services"],
     "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]},
    {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"],
     "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]  # fmt: skip
NAMESPACES_RULE = {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}


def test_operator_rbac_is_exactly_what_it_needs(default_render: list[Manifest]) -> None:
    role = find(default_render, "ClusterRole", "cg-cellguard-operator")
    assert role["rules"] == [*OPERATOR_CLUSTER_RULES, NAMESPACES_RULE, *OPERATOR_NAMESPACED_RULES]
    binding = find(default_render, "ClusterRoleBinding", "cg-cellguard-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "cg-cellguard-operator", "namespace": NAMESPACE}
    ]
    lease = find(default_render, "Role", "cg-cellguard-leader-election")
    assert lease["metadata"]["namespace"] == NAMESPACE
    assert lease["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["cellguard-operator"],
            "verbs": ["get", "update"],
        },
        # The leader labels its own pod (the webhook Service selects that label).
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]},
    ]


def test_namespaced_operator_gets_roles_in_its_namespaces_only(helm: Helm) -> None:
    manifests = helm.template(values=[_ci("namespaced")])
    role = find(manifests, "ClusterRole", "cg-cellguard-operator")
    assert role["rules"] == OPERATOR_CLUSTER_RULES
    roles = {
        r["metadata"]["namespace"]: r["rules"]
        for r in all_of(manifests, "Role")
        if r["metadata"]["name"] == "cg-cellguard-operator"
    }
    assert roles == {"team-a": OPERATOR_NAMESPACED_RULES, "team-b": OPERATOR_NAMESPACED_RULES}
    settings = _operator_settings(manifests, NAMESPACE)
    assert settings.namespaces == ("team-a", "team-b")
    assert "sandbox" in settings.all_exempt_namespaces


def test_agent_rbac_is_write_own_budget_and_read_node(default_render: list[Manifest]) -> None:
    role = find(default_render, "ClusterRole", "cg-cellguard-agent")
    assert role["rules"] == [
        {"apiGroups": ["cellguard.io"], "resources": ["nodebudgets"],
         "verbs": ["get", "create", "patch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
    ]  # fmt: skip
    binding = find(default_render, "ClusterRoleBinding", "cg-cellguard-agent")
    assert binding["subjects"][0]["name"] == "cg-cellguard-agent"


CELLS_READ = {"apiGroups": ["cellguard.io"],
              "resources": ["streamcells", "streamcells/status", "streamcells/scale"],
              "verbs": ["get", "list", "watch"]}  # fmt: skip
BUDGETS_READ = {"apiGroups": ["cellguard.io"],
                "resources": ["threadbudgetpolicies", "nodebudgets"],
                "verbs": ["get", "list", "watch"]}  # fmt: skip
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"


def _aggregates_to(role: Manifest) -> set[str]:
    labels = role["metadata"]["labels"].items()
    return {k.removeprefix(AGGREGATE) for k, v in labels if k.startswith(AGGREGATE) and v == "true"}


def test_tenant_roles_aggregate_into_the_built_in_roles(default_render: list[Manifest]) -> None:
    view = find(default_render, "ClusterRole", "cg-cellguard-view")
    assert _aggregates_to(view) == {"view"}
    # StreamCell is in the `all` category: `kubectl get all` lists it, so view must.
    assert view["rules"] == [CELLS_READ, BUDGETS_READ]
    edit = find(default_render, "ClusterRole", "cg-cellguard-edit")
    assert _aggregates_to(edit) == {"edit", "admin"}
    assert edit["rules"] == [
        {"apiGroups": ["cellguard.io"], "resources": ["streamcells"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete",
                   "deletecollection"]},
        {"apiGroups": ["cellguard.io"], "resources": ["streamcells/scale"],
         "verbs": ["get", "update", "patch"]},
        {"apiGroups": ["cellguard.io"], "resources": ["streamcells/status"],
         "verbs": ["get", "list", "watch"]},
    ]  # fmt: skip
    # Cluster-scoped reads for tenants: not aggregated, bound cluster-wide by an admin.
    reader = find(default_render, "ClusterRole", "cg-cellguard-budget-reader")
    assert _aggregates_to(reader) == set()
    assert reader["rules"] == [BUDGETS_READ]
    # Nobody but the operator writes status; nobody through these roles writes policies or
    # budgets.
    for role in (view, edit, reader):
        for rule in role["rules"]:
            if set(rule["verbs"]) - {"get", "list", "watch"}:
                assert not {"streamcells/status", "threadbudgetpolicies", "nodebudgets"} & set(
                    rule["resources"]
                ), role


def test_crd_puts_streamcells_in_the_all_category() -> None:
    crd = yaml.safe_load((REPO / "crds" / "streamcells.cellguard.io.yaml").read_text())
    assert "all" in crd["spec"]["names"]["categories"]


RBAC_KINDS = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}


def test_rbac_create_false_leaves_out_every_long_lived_role(helm: Helm) -> None:
    manifests = helm.template(values=[_ci("namespaced")], set_values=["rbac.create=false"])
    rbac = [m for m in manifests if m["kind"] in RBAC_KINDS]
    # Only the hook's and `helm test`'s, which Helm deletes again.
    assert rbac and all(
        is_hook(m) or m["metadata"]["labels"]["app.kubernetes.io/component"] == "test" for m in rbac
    ), [(m["kind"], m["metadata"]["name"]) for m in rbac]
    assert len(all_of(manifests, "ServiceAccount")) == len(
        all_of(helm.template(values=[_ci("namespaced")]), "ServiceAccount")
    )


def test_service_accounts_can_be_brought_along(helm: Helm) -> None:
    manifests = helm.template(
        set_values=[
            "operator.serviceAccount.create=false",
            "operator.serviceAccount.name=ops-sa",
            "agent.serviceAccount.create=false",
            "agent.serviceAccount.name=agent-sa",
        ]
    )
    names = {m["metadata"]["name"] for m in all_of(manifests, "ServiceAccount")}
    assert not {"cg-cellguard-operator", "cg-cellguard-agent", "ops-sa", "agent-sa"} & names
    assert find(manifests, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == (
        "ops-sa"
    )
    daemonset = find(manifests, "DaemonSet")
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == "agent-sa"
    operator_binding = find(manifests, "ClusterRoleBinding", "cg-cellguard-operator")
    assert operator_binding["subjects"][0]["name"] == "ops-sa"
    agent_binding = find(manifests, "ClusterRoleBinding", "cg-cellguard-agent")
    assert agent_binding["subjects"][0]["name"] == "agent-sa"
    lease_binding = find(manifests, "RoleBinding", "cg-cellguard-leader-election")
    assert lease_binding["subjects"][0]["name"] == "ops-sa"


@pytest.mark.parametrize("component", ["operator", "agent"])
def test_a_service_account_not_created_must_be_named(helm: Helm, component: str) -> None:
    result = helm.run(
        "template", "cg", str(CHART), "--kube-version", "1.36.3",
        "--set", f"{component}.serviceAccount.create=false", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"/{component}/serviceAccount/name" in result.stderr, result.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=_ci_id)
def test_no_role_grants_wildcards_secrets_or_node_writes(helm: Helm, values: Path) -> None:
    for manifest in helm.template(values=[values]):
        if manifest["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in manifest["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], manifest
            assert "secrets" not in rule["resources"], manifest
            if "nodes" in rule["resources"]:
                # patch: pool labels only, which the chart's admission policy enforces.
                assert set(rule["verbs"]) <= {"get", "list", "watch", "patch"}, manifest


# --------------------------------------------------------------------------- default policy


def test_default_policy_is_applied_by_a_hook_job(default_render: list[Manifest]) -> None:
    # Never a plain resource: Helm could not create it in the release creating its CRD.
    assert all_of(default_render, "ThreadBudgetPolicy") == []
    job = find(default_render, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "kubectl apply --server-side --field-manager=cellguard-chart --force-conflicts" in script
    policy = policy_from_hook(default_render)
    assert policy["metadata"]["name"] == "default"
    assert policy["spec"] == {
        "safetyMargin": 0.2,
        "defaultMaxReplicas": 64,
        "unknownBudget": "Refuse",
        "staleAfterSeconds": 300,
        "reservationTtlSeconds": 120,
        "threadModelTolerance": 0.1,
        "alerts": {"warningHeadroom": 0.3, "criticalHeadroom": 0.15, "nearMaxSafeRatio": 0.9},
    }
    # The hook's service account may write that one policy (and wait for its CRD), no more.
    role = find(default_render, "ClusterRole", "cg-cellguard-default-policy")
    binding = find(default_render, "ClusterRoleBinding", "cg-cellguard-default-policy")
    account = find(default_render, "ServiceAccount", "cg-cellguard-default-policy")
    assert all(is_hook(m) for m in (role, binding, account))
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "cg-cellguard-default-policy"
    assert role["rules"] == [
        {"apiGroups": ["cellguard.io"], "resources": ["threadbudgetpolicies"],
         "verbs": ["create"]},
        {"apiGroups": ["cellguard.io"], "resources": ["threadbudgetpolicies"],
         "resourceNames": ["default"], "verbs": ["get", "patch"]},
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
         "resourceNames": ["threadbudgetpolicies.cellguard.io"],
         "verbs": ["get", "list", "watch"]},
    ]  # fmt: skip
    # Created before the Job, which runs last.
    weights = {
        m["kind"]: int(m["metadata"]["annotations"]["helm.sh/hook-weight"])
        for m in (role, binding, account, job)
    }
    assert max(weights.values()) == weights["Job"] and len(set(weights.values())) == 2


@pytest.mark.parametrize("values", CI_VALUES, ids=_ci_id)
def test_default_policy_is_valid_for_the_api(helm: Helm, values: Path) -> None:
    policy = policy_from_hook(helm.template(values=[values]))
    model = api.ThreadBudgetPolicy.model_validate(policy)
    assert model.spec.safety_margin == policy["spec"]["safetyMargin"]
    values_spec = yaml.safe_load(values.read_text()) or {}
    expected = values_spec.get("defaultPolicy", {}).get("spec", {}).get("safetyMargin", 0.2)
    assert policy["spec"]["safetyMargin"] == expected


def test_values_schema_of_the_policy_follows_the_api() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    spec = schema["properties"]["defaultPolicy"]["properties"]["spec"]

    def aliases(model: type[Any]) -> set[str]:
        return {f.alias or n for n, f in model.model_fields.items()}

    assert set(spec["properties"]) == aliases(api.ThreadBudgetPolicySpec)
    assert set(spec["properties"]["alerts"]["properties"]) == aliases(api.AlertThresholds)
    assert set(spec["properties"]["defaults"]["properties"]) == aliases(api.DefaultLimits)
    assert spec["properties"]["unknownBudget"]["enum"] == [a.value for a in api.UnknownBudgetAction]


def test_policy_can_be_left_out(helm: Helm) -> None:
    manifests = helm.template(set_values=["defaultPolicy.create=false"])
    assert all_of(manifests, "Job") == []
    assert not any("default-policy" in m["metadata"]["name"] for m in manifests)


# --------------------------------------------------------------------------- monitoring


def test_monitoring_is_off_by_default(default_render: list[Manifest]) -> None:
    kinds = {m["kind"] for m in default_render}
    assert not kinds & {"PrometheusRule", "ServiceMonitor", "ConfigMap"}


def test_prometheus_rule_is_the_rule_file(helm: Helm) -> None:
    manifests = helm.template(values=[_ci("monitoring")])
    rule = find(manifests, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    source = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert _strict(rule["spec"]) == _strict({"groups": source["groups"]})


RULES_FILE = CHART / "files" / "prometheus-rules.yaml"
RUNBOOKS = "https://github.com/cellguard/cellguard/blob/main/docs/runbooks/"


def _rule_spec(helm: Helm, values: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The PrometheusRule's spec rendered with monitoring.prometheusRule `values`."""
    path = tmp_path / "rule-values.yaml"
    path.write_text(yaml.safe_dump({"monitoring": {"prometheusRule": values}}))
    spec: dict[str, Any] = find(helm.template(values=[_ci("monitoring"), path]), "PrometheusRule")[
        "spec"
    ]
    return spec


def _spec_rules(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        rule.get("alert") or rule["record"]: rule
        for group in spec["groups"]
        for rule in group["rules"]
    }


def _source_rules() -> dict[str, dict[str, Any]]:
    return _spec_rules(yaml.safe_load(RULES_FILE.read_text()))


def test_prometheus_rule_drops_disabled_alerts(helm: Helm, tmp_path: Path) -> None:
    spec = _rule_spec(
        helm,
        {"disabled": {"CellguardScaleRefused": True, "CellguardNodePIDHeadroomLow": False}},
        tmp_path,
    )
    rules = _spec_rules(spec)
    source = _source_rules()
    assert set(rules) == set(source) - {"CellguardScaleRefused"}
    # the recording rule it was built on stays; everything else is as in the file
    assert "cellguard:refusals:increase10m" in rules
    assert all(_strict(rules[name]) == _strict(source[name]) for name in rules)
    # a group whose alerts are all disabled goes (an empty group is no use)
    operator_alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES_FILE.read_text())["groups"]
        if group["name"] == "cellguard.operator"
        for rule in group["rules"]
    }
    spec = _rule_spec(helm, {"disabled": dict.fromkeys(operator_alerts, True)}, tmp_path)
    assert "cellguard.operator" not in [g["name"] for g in spec["groups"]]


def test_prometheus_rule_refuses_to_disable_an_unknown_alert(helm: Helm, tmp_path: Path) -> None:
    with pytest.raises(HelmError, match=r"CellguardNoSuchAlert, which is not an alert"):
        _rule_spec(helm, {"disabled": {"CellguardNoSuchAlert": True}}, tmp_path)
    with pytest.raises(HelmError, match=r"prometheusRule/disabled"):
        _rule_spec(helm, {"disabled": {"CellguardScaleRefused": "yes"}}, tmp_path)


def test_prometheus_rule_adds_labels_to_every_alert(helm: Helm, tmp_path: Path) -> None:
    extra = {"team": "platform", "severity": "page"}
    rules = _spec_rules(_rule_spec(helm, {"additionalRuleLabels": extra}, tmp_path))
    source = _source_rules()
    for name, rule in rules.items():
        if "record" in rule:
            assert "labels" not in rule, name  # series of recording rules keep their labels
            continue
        # the alert's own severity wins
        assert rule["labels"] == {"team": "platform", **source[name]["labels"]}, name
        assert rule["labels"]["severity"] != "page"
    with pytest.raises(HelmError, match=r"invalid propertyName 'team-name'"):
        _rule_spec(helm, {"additionalRuleLabels": {"team-name": "x"}}, tmp_path)


def test_prometheus_rule_points_runbooks_elsewhere(helm: Helm, tmp_path: Path) -> None:
    base = "https://wiki.example.com/ops/cellguard/v0.1/"
    rules = _spec_rules(_rule_spec(helm, {"runbookBaseUrl": base}, tmp_path))
    source = _source_rules()
    alerts = [name for name in rules if "record" not in rules[name]]
    assert len(alerts) >= 10
    for name in alerts:
        assert rules[name]["annotations"]["runbook_url"] == f"{base}{name}.md"
        assert source[name]["annotations"]["runbook_url"] == f"{RUNBOOKS}{name}.md"
        # the Prometheus templates of the other annotations are untouched
        for key in ("summary", "description"):
            assert rules[name]["annotations"][key] == source[name]["annotations"][key]
    with pytest.raises(HelmError, match=r"prometheusRule/runbookBaseUrl"):
        _rule_spec(helm, {"runbookBaseUrl": "https://wiki.example.com/no-slash"}, tmp_path)


def test_prometheus_rule_selects_the_job_it_is_told(helm: Helm, tmp_path: Path) -> None:
    selector = 'job=~"cellguard|monitoring/cellguard"'
    rules = _spec_rules(_rule_spec(helm, {"jobSelector": selector}, tmp_path))
    source = _source_rules()
    down = rules["CellguardOperatorDown"]
    assert down["expr"] == f"absent(up{{{selector}}} == 1)"
    assert selector in down["annotations"]["summary"]
    text = yaml.safe_dump(rules)
    assert 'job="cellguard"' not in text
    # nothing else changed
    for name, rule in rules.items():
        if 'job="cellguard"' not in yaml.safe_dump(source[name]):
            assert _strict(rule) == _strict(source[name]), name
    with pytest.raises(HelmError, match=r"prometheusRule/jobSelector"):
        _rule_spec(helm, {"jobSelector": "cellguard"}, tmp_path)


def test_prometheus_rule_values_keep_prometheus_templates(helm: Helm, tmp_path: Path) -> None:
    """All four values at once still give rules promtool accepts, with Prometheus's own
    `{{ $labels... }}` templates intact (never run through Helm's)."""
    spec = _rule_spec(
        helm,
        {
            "disabled": {"CellguardThreadModelWrong": True},
            "additionalRuleLabels": {"team": "platform"},
            "runbookBaseUrl": "https://wiki.example.com/runbooks/",
            "jobSelector": 'job="cg"',
        },
        tmp_path,
    )
    rules = _spec_rules(spec)
    source = _source_rules()
    summary = rules["CellguardNodeThreadHeadroomCritical"]["annotations"]["summary"]
    assert summary == source["CellguardNodeThreadHeadroomCritical"]["annotations"]["summary"]
    assert "{{ $labels.node }}" in summary
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package)")
    rule_file = tmp_path / "rendered-rules.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": spec["groups"]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_monitor_scrapes_the_metrics_service_as_job_cellguard(helm: Helm) -> None:
    manifests = helm.template(values=[_ci("monitoring")])
    monitor = find(manifests, "ServiceMonitor")
    services = all_of(manifests, "Service")
    selected = [
        s
        for s in services
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected] == ["cg-cellguard-metrics"]
    (metrics,) = selected
    # The alert rules select job="cellguard": the job label comes from this Service label.
    assert metrics["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "cellguard"
    rules_text = (CHART / "files" / "prometheus-rules.yaml").read_text()
    assert 'job="cellguard"' in rules_text
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in metrics["spec"]["ports"]}
    assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "15s")
    # The cell gauges' own namespace/service labels must survive the scrape.
    assert endpoint["honorLabels"] is True
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # The standby is scraped too; its selector is the operator pods'.
    assert metrics["spec"]["publishNotReadyAddresses"] is True
    deployment = find(manifests, "Deployment")
    assert metrics["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_dashboard_config_map_carries_the_dashboard(helm: Helm) -> None:
    manifests = helm.template(values=[_ci("monitoring")])
    config_map = find(manifests, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "cellguard"}
    source = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    assert json.loads(config_map["data"]["cellguard.json"]) == source


# --------------------------------------------------------------------------- helm test


@pytest.fixture
def fake_kubectl(tmp_path: Path) -> Path:
    """A `kubectl` that records its arguments and stdin and answers as told."""
    script = tmp_path / "kubectl"
    script.write_text(
        "#!/bin/sh\n"
        'printf "%s\\n" "$*" > "$FAKE_DIR/args"\n'
        'cat > "$FAKE_DIR/stdin"\n'
        'cat "$FAKE_DIR/answer"\n'
        'exit "$(cat "$FAKE_DIR/code")"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def _test_pod(manifests: list[Manifest]) -> Manifest:
    pods = [
        m
        for m in all_of(manifests, "Pod")
        if m["metadata"]["annotations"].get("helm.sh/hook") == "test"
    ]
    assert len(pods) == 1
    return pods[0]


def _run_test_pod(
    pod: Manifest, fake: Path, answer: str, code: int
) -> subprocess.CompletedProcess[str]:
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    (fake / "answer").write_text(answer)
    (fake / "code").write_text(str(code))
    return subprocess.run(
        ["/bin/sh", "-c", container["args"][0]],
        env={"PATH": f"{fake}:{os.environ['PATH']}", "FAKE_DIR": str(fake)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


REFUSAL = (
    'Error from server (Forbidden): error when creating "STDIN": admission webhook '
    '"validate-streamcell.cellguard.io" denied the request: scaling default/cellguard-helm-'
    "test-oversized ... add a cell\n"
)


def test_helm_test_passes_only_when_cellguard_refuses(
    default_render: list[Manifest], fake_kubectl: Path
) -> None:
    pod = _test_pod(default_render)
    refused = _run_test_pod(pod, fake_kubectl, REFUSAL, 1)
    assert refused.returncode == 0, refused.stdout + refused.stderr
    assert "PASS" in refused.stdout
    assert (fake_kubectl / "args").read_text().split() == ["apply", "--dry-run=server", "-f", "-"]
    # What it asks for is a StreamCell the API accepts: only the webhook can refuse it.
    cell = yaml.safe_load((fake_kubectl / "stdin").read_text())
    model = api.StreamCell.model_validate(cell)
    assert cell["metadata"]["namespace"] == "default"
    assert model.spec.replicas == 100_000 and model.spec.threads.base == 4_194_304

    accepted = _run_test_pod(
        pod,
        fake_kubectl,
        "streamcell.cellguard.io/cellguard-helm-test-oversized created (server dry run)\n",
        0,
    )
    assert accepted.returncode == 1 and "was accepted" in accepted.stdout
    unreachable = _run_test_pod(
        pod,
        fake_kubectl,
        "Error from server (InternalError): Internal error occurred: failed calling webhook "
        '"validate-streamcell.cellguard.io": connect: connection refused\n',
        1,
    )
    assert unreachable.returncode == 1 and "not because" in unreachable.stdout
    other = _run_test_pod(
        pod,
        fake_kubectl,
        'admission webhook "policy.example.com" denied the request: no\n',
        1,
    )
    assert other.returncode == 1


def test_helm_test_refuses_to_run_in_an_exempt_namespace(helm: Helm, fake_kubectl: Path) -> None:
    manifests = helm.template(namespace="default")
    result = _run_test_pod(_test_pod(manifests), fake_kubectl, REFUSAL, 1)
    assert result.returncode == 1
    assert "exempt from the webhook" in result.stdout
    assert not (fake_kubectl / "args").exists(), "it must not even ask"


def test_helm_test_pods_are_hardened(default_render: list[Manifest]) -> None:
    pod = _test_pod(default_render)
    job_pod = find(default_render, "Job")["spec"]["template"]
    for spec in (pod["spec"], job_pod["spec"]):
        assert spec["securityContext"]["runAsNonRoot"] is True
        container = spec["containers"][0]
        assert container["image"] == "registry.k8s.io/kubectl:v1.36.3"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_missing_monitoring_files_fail_loudly(helm: Helm, tmp_path: Path) -> None:
    chart = tmp_path / "cellguard"
    subprocess.run(["cp", "-rL", str(CHART), str(chart)], check=True)
    (chart / "files" / "prometheus-rules.yaml").unlink()
    # Off (the default): no need for the file.
    helm.template(chart=chart)
    with pytest.raises(HelmError, match=r"needs files/prometheus-rules\.yaml"):
        helm.template(chart=chart, set_values=["monitoring.prometheusRule.enabled=true"])


def test_render_output_parses_as_yaml_documents(helm: Helm) -> None:
    text = helm.template_text(values=[_ci("monitoring")])
    assert parse(text)


# --------------------------------------------------------------------------- distribution


def test_artifact_hub_annotations_say_what_the_chart_ships() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    annotations = chart["annotations"]
    crds = yaml.safe_load(annotations["artifacthub.io/crds"])
    generated = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))]
    assert sorted((c["name"], c["kind"], c["version"]) for c in crds) == sorted(
        (g["metadata"]["name"], g["spec"]["names"]["kind"], g["spec"]["versions"][0]["name"])
        for g in generated
    )
    assert all(c["description"] and c["displayName"] == c["kind"] for c in crds)
    # The examples are the repository's own, as they are.
    examples = yaml.safe_load(annotations["artifacthub.io/crdsExamples"])
    assert examples == [
        yaml.safe_load((REPO / "examples" / name).read_text())
        for name in ("policy-default.yaml", "ingest-a.yaml")
    ]
    for example in examples:  # and valid for the API
        if example["kind"] == "StreamCell":
            api.StreamCell.model_validate(example)
        else:
            api.ThreadBudgetPolicy.model_validate(example)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    images = {i["name"]: i["image"] for i in yaml.safe_load(annotations["artifacthub.io/images"])}
    kubectl = values["kubectl"]["image"]
    assert images == {
        "cellguard": f"{values['image']['repository']}:{chart['appVersion']}",
        "kubectl": f"{kubectl['repository']}:{kubectl['tag']}",
    }
    assert annotations["artifacthub.io/license"] == "Apache-2.0"
    assert chart["home"] and chart["sources"]


@pytest.mark.parametrize("enabled", [True, False])
def test_the_chart_works_as_a_subchart(helm: Helm, tmp_path: Path, enabled: bool) -> None:
    """A parent chart with `condition: cellguard.enabled` and `global` values: the schema
    accepts both, and the condition switches cellguard on and off."""
    parent = tmp_path / "platform"
    parent.mkdir()
    (parent / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "platform",
                "version": "1.0.0",
                "dependencies": [
                    {
                        "name": "cellguard",
                        "version": yaml.safe_load((CHART / "Chart.yaml").read_text())["version"],
                        "repository": f"file://{CHART}",
                        "condition": "cellguard.enabled",
                    }
                ],
            }
        )
    )
    (parent / "values.yaml").write_text(
        yaml.safe_dump({"global": {"imageRegistry": "mirror.example.com"}, "cellguard": {}})
    )
    helm.run("dependency", "build", str(parent))
    rendered = helm.template(chart=parent, set_values=[f"cellguard.enabled={str(enabled).lower()}"])
    ours = [m for m in rendered if m["metadata"].get("labels", {}).get(
        "app.kubernetes.io/name") == "cellguard"]  # fmt: skip
    if enabled:
        assert {"Deployment", "DaemonSet", "ValidatingWebhookConfiguration"} <= {
            m["kind"] for m in ours
        }
    else:
        assert ours == []


def test_the_operator_may_run_on_the_host_network(helm: Helm) -> None:
    """For clusters whose API server cannot reach the pod network (issue 17 item 6)."""
    default = find(helm.template(), "Deployment")["spec"]["template"]["spec"]
    assert "hostNetwork" not in default and "dnsPolicy" not in default
    host = find(helm.template(set_values=["operator.hostNetwork=true"]), "Deployment")
    spec = host["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"  # in-cluster names still resolve
    chosen = find(
        helm.template(set_values=["operator.hostNetwork=true", "operator.dnsPolicy=Default"]),
        "Deployment",
    )
    assert chosen["spec"]["template"]["spec"]["dnsPolicy"] == "Default"
    refused = helm.run(
        "template", "cg", str(CHART), "--set", "operator.dnsPolicy=Sometimes", check=False
    )
    assert refused.returncode != 0 and "dnsPolicy" in refused.stderr
