"""The deployment files agree with each other and with the server (no Docker, no cluster needed).

Kubernetes manifests are checked offline against the API's JSON schemas (kubernetes-validate, strict);
the compose override and the HAProxy config must name the same replica slots; the grace periods must
cover the drain deadline.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes" / "tokenwire.yaml"
HAPROXY = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
SCALE = ROOT / "docker-compose.scale.yml"
K8S_VERSION = "1.33.0"  # a version clusters run today; the schemas ship inside the package


class ComposeLoader(yaml.SafeLoader):
    """Compose's YAML: `!reset` (drop an inherited value) reads as an empty value here."""


ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def _documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFESTS.read_text(encoding="utf-8")) if d]


def _kind(kind: str) -> dict:
    return next(d for d in _documents() if d["kind"] == kind)


@pytest.mark.parametrize("document", _documents(), ids=lambda d: d["kind"])
def test_every_manifest_matches_the_kubernetes_schema(document):
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_the_schema_check_is_not_vacuous():
    broken = copy.deepcopy(_kind("Deployment"))
    broken["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 45  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_probes_and_grace_period_fit_the_drain():
    pod = _kind("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    drain = float(_kind("ConfigMap")["data"]["TOKENWIRE_DRAIN_TIMEOUT_S"])
    pre_stop = float(re.search(r"sleep\((\d+)\)", " ".join(container["lifecycle"]["preStop"]["exec"]["command"]))[1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 10
    assert drain == Settings(_env_file=None).drain_timeout_s  # the documented default


def test_compose_and_haproxy_name_the_same_replica_slots():
    config = HAPROXY.read_text(encoding="utf-8")
    slots = sorted(set(re.findall(r"\$\{(TW_REPLICA_\d+)\}", config)), key=lambda s: int(s.rsplit("_", 1)[1]))
    environment = yaml.load(SCALE.read_text(encoding="utf-8"), Loader=ComposeLoader)["services"]["balancer"]["environment"]
    assert slots == [f"TW_REPLICA_{i}" for i in range(1, 9)]
    assert {name for name in environment if name.startswith("TW_REPLICA_") and name[11:].isdigit()} == set(slots)
    for name in re.findall(r"\$\{(TW_\w+)\}", config):
        assert name in environment, f"{name} is used by haproxy.cfg but compose does not set it"
    settings = Settings(_env_file=None)
    default = re.fullmatch(r"\$\{TW_REPLICA_MAXCONN:-(\d+)\}", environment["TW_REPLICA_MAXCONN"])
    assert default and int(default[1]) == settings.max_running + settings.max_waiting
