"""deploy/: the Kubernetes manifests validate against the Kubernetes schemas (offline, kubernetes-validate's
bundled schemas), with the high-availability settings the server needs; the Dockerfile is multi-stage and
non-root. Overlays are rendered with ``kubectl kustomize`` where kubectl is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

kv = pytest.importorskip("kubernetes_validate")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBE_VERSION = "1.30.0"


def _validate(docs: list[dict]) -> dict[str, dict]:
    by_kind = {}
    for doc in docs:
        kv.validate(doc, KUBE_VERSION, strict=True)  # raises ValidationError with the failing field
        by_kind[doc["kind"]] = doc
    return by_kind


def _render(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (for kubectl kustomize) is not installed; the base files are validated alone")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _check_ha(by_kind: dict[str, dict]) -> dict:
    assert set(by_kind) == {"Secret", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    dep = by_kind["Deployment"]
    assert dep["spec"]["replicas"] >= 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
    env = {e["name"]: e for e in c["env"]}
    assert env["DISTILL4D_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == by_kind["Secret"]["metadata"]["name"]
    assert by_kind["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    hpa = by_kind["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] >= 2 and hpa["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    svc = by_kind["Service"]["spec"]
    assert svc["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    return c


def test_base_manifests_validate_and_are_highly_available():
    docs = []
    for f in sorted((K8S / "base").glob("*.yaml")):
        if f.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    _check_ha(_validate(docs))


def test_invalid_manifests_are_caught():
    dep = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    dep["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, KUBE_VERSION, strict=True)


def test_cpu_overlay():
    c = _check_ha(_validate(_render(K8S / "overlays" / "cpu")))
    assert c["image"] == "distill4d:cpu" and "nvidia.com/gpu" not in c["resources"]["limits"]


def test_cuda_overlay_requests_a_gpu():
    c = _check_ha(_validate(_render(K8S / "overlays" / "cuda")))
    assert c["image"] == "distill4d:cuda"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and "--device" in c["args"]
    assert c["args"][c["args"].index("--device") + 1] == "cuda"


def test_data_volume_component(tmp_path):
    rel = Path(os.path.relpath(K8S, tmp_path))  # kustomize takes relative paths only
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources: [{rel / 'overlays' / 'cpu'}]\ncomponents: [{rel / 'components' / 'data-volume'}]\n")
    by_kind = _validate(_render(tmp_path))
    c = _check_ha(by_kind)
    assert c["args"][-2:] == ["--data-root", "/data"]
    assert {"name": "data", "mountPath": "/data", "readOnly": True} in c["volumeMounts"]


def test_dockerfile_is_multi_stage_and_non_root():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2 and "COPY --from=build" in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and not users[-1].startswith(("0", "root"))
    assert '"torch==${TORCH_VERSION}"' in text and "ARG TORCH_VERSION=2.13.0" in text
    pinned = next(x for x in (ROOT / "pyproject.toml").read_text().splitlines() if x.startswith("ml = "))
    assert "torch==2.13.0" in pinned, "the image's torch must be the version the ml extra pins"
