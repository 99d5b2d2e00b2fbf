"""The deployment configs in cluster/: they parse, name what their tool requires, keep every port off
public interfaces, turn token auth on, and only show commands that name real experiment files."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from raycontrast.config import load_config
from raycontrast.tune.sweep import load_sweep

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
YAML_FILES = sorted(p for p in CLUSTER.iterdir() if p.suffix in (".yaml", ".yml"))
ALL_FILES = sorted(p for p in CLUSTER.iterdir() if p.is_file())
LOOPBACK = "127.0.0.1"


def _docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name}: empty"
    assert all(isinstance(d, dict) for d in docs), f"{path.name}: a document is not a mapping"
    return docs


def _launcher_files() -> list[Path]:
    return [p for p in YAML_FILES if any("provider" in d and "cluster_name" in d for d in _docs(p))]


def _kuberay(kind: str) -> list[tuple[Path, dict]]:
    return [
        (p, d)
        for p in YAML_FILES
        for d in _docs(p)
        if str(d.get("apiVersion", "")).startswith("ray.io/") and d.get("kind") == kind
    ]


def test_every_yaml_file_parses_and_is_a_known_kind():
    assert {p.name for p in YAML_FILES} >= {
        "aws.yaml",
        "onprem.yaml",
        "kuberay-raycluster.yaml",
        "kuberay-rayjob.yaml",
    }
    for path in YAML_FILES:
        for doc in _docs(path):
            launcher = "provider" in doc and "cluster_name" in doc
            kube = "apiVersion" in doc and "kind" in doc and "metadata" in doc
            runtime_env = path.name == "runtime_env.yaml" and "excludes" in doc
            assert launcher or kube or runtime_env, f"{path.name}: unknown document {list(doc)}"


# ------------------------------------------------------------------------------- cluster launcher


@pytest.mark.parametrize("path", _launcher_files(), ids=lambda p: p.name)
def test_launcher_config_names_required_fields_and_ray_accepts_it(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    (config,) = _docs(path)
    assert isinstance(config["cluster_name"], str) and config["cluster_name"]
    assert isinstance(config["max_workers"], int) and config["max_workers"] >= 1
    assert config["auth"]["ssh_user"]
    provider = config["provider"]
    if provider["type"] == "local":
        # the local provider takes machines, not node types (Ray rejects available_node_types)
        assert provider["head_ip"] and provider["worker_ips"]
        assert "available_node_types" not in config
    else:
        types = config["available_node_types"]
        assert config["head_node_type"] in types
        for name, node_type in types.items():
            assert isinstance(node_type["node_config"], dict) and node_type["node_config"], name
            assert isinstance(node_type["resources"], dict), name
            assert "min_workers" in node_type and "max_workers" in node_type, name
        head = types[config["head_node_type"]]
        assert head["resources"].get("CPU") == 0  # the head trains nothing
        workers = [t for n, t in types.items() if n != config["head_node_type"]]
        assert any(t["resources"].get("GPU", 0) > 0 and t["max_workers"] >= 1 for t in workers)
    # What `ray up` does before it contacts any cloud: merge the provider defaults, validate.
    prepared = prepare_config(config)
    validate_config(prepared)
    # The defaults merged in must not bring back a public dashboard (Ray's AWS defaults have one).
    assert "0.0.0.0" not in yaml.safe_dump(prepared)


@pytest.mark.parametrize("path", _launcher_files(), ids=lambda p: p.name)
def test_launcher_config_turns_token_auth_on_and_keeps_the_dashboard_on_loopback(path):
    (config,) = _docs(path)
    head = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    workers = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    assert head and workers
    for command in head + workers:
        assert "RAY_AUTH_MODE=token" in command, command
    for command in head:
        assert f"--dashboard-host={LOOPBACK}" in command, command
        assert "--num-cpus=0" in command, command
    # the token reaches every node at Ray's default token path
    assert "~/.ray/auth_token" in config["file_mounts"]


# ------------------------------------------------------------------------------------- KubeRay


def _check_ray_cluster_spec(where: str, spec: dict) -> None:
    assert spec["authOptions"]["mode"] == "token", where
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict), where
    assert head["template"]["spec"]["containers"][0]["image"], where
    # KubeRay binds the dashboard to every interface unless rayStartParams names a host.
    host = head["rayStartParams"].get("dashboard-host")
    assert host in (LOOPBACK, "$(MY_POD_IP)"), f"{where}: dashboard-host {host!r}"
    if host == "$(MY_POD_IP)":
        env = head["template"]["spec"]["containers"][0].get("env", [])
        assert any(
            e["name"] == "MY_POD_IP" and e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
            for e in env
        ), where
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", where
    assert not head.get("enableIngress", False), where
    assert head["rayStartParams"].get("num-cpus") == "0", where
    groups = spec["workerGroupSpecs"]
    assert groups, where
    for group in groups:
        assert group["groupName"], where
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], where
        assert isinstance(group["rayStartParams"], dict), where
        container = group["template"]["spec"]["containers"][0]
        assert container["image"], where
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, where
    # every Pod mounts the shared volume that storage_path and data.root live on
    for pod in [head, *groups]:
        mounts = pod["template"]["spec"]["containers"][0]["volumeMounts"]
        assert any(m["mountPath"] == "/mnt/raycontrast" for m in mounts), where
        volumes = pod["template"]["spec"]["volumes"]
        assert any(v.get("persistentVolumeClaim", {}).get("claimName") for v in volumes), where


def test_kuberay_raycluster_names_required_fields():
    (found,) = _kuberay("RayCluster")
    path, doc = found
    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
    _check_ray_cluster_spec(path.name, doc["spec"])


def test_kuberay_rayjob_names_required_fields():
    (found,) = _kuberay("RayJob")
    path, doc = found
    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
    spec = doc["spec"]
    assert spec["entrypoint"].startswith("raycontrast train ")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and runtime_env["working_dir"]
    assert spec["shutdownAfterJobFinishes"] is True
    _check_ray_cluster_spec(path.name, spec["rayClusterSpec"])


def test_kuberay_volume_claim_is_shared_between_pods():
    claims = {
        d["metadata"]["name"]: d
        for p in YAML_FILES
        for d in _docs(p)
        if d.get("kind") == "PersistentVolumeClaim"
    }
    used = {
        v["persistentVolumeClaim"]["claimName"]
        for _, doc in _kuberay("RayCluster") + _kuberay("RayJob")
        for pod in _pods(doc)
        for v in pod["template"]["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    assert used and used <= set(claims)
    for name in used:
        assert "ReadWriteMany" in claims[name]["spec"]["accessModes"]


def _pods(doc: dict) -> list[dict]:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def test_runtime_env_keeps_the_upload_small():
    (env,) = _docs(CLUSTER / "runtime_env.yaml")
    assert {".git", ".venv", "runs", "data"} <= set(env["excludes"])


# --------------------------------------------------------------------------------- every file


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_nothing_binds_a_public_interface(path):
    text = path.read_text()
    assert "0.0.0.0" not in text and "[::]" not in text
    for host in re.findall(r"dashboard-host[=:]\s*\"?([^\s\"]+)", text):
        assert host in (LOOPBACK, "$(MY_POD_IP)"), f"{path.name}: dashboard-host={host}"
    assert not re.search(r"\b(LoadBalancer|NodePort)\b", text) or path.suffix == ".md"


def test_token_auth_is_on_in_every_ray_config():
    for path in YAML_FILES:
        if path.name in ("runtime_env.yaml", "kuberay-storage.yaml"):
            continue
        text = path.read_text()
        docs = _docs(path)
        kube_auth = [
            d["spec"].get("authOptions") or d["spec"].get("rayClusterSpec", {}).get("authOptions")
            for d in docs
            if str(d.get("apiVersion", "")).startswith("ray.io/")
        ]
        assert "RAY_AUTH_MODE=token" in text or (
            kube_auth and all(a and a["mode"] == "token" for a in kube_auth)
        ), path.name
    readme = (CLUSTER / "README.md").read_text()
    assert "RAY_AUTH_MODE=token" in readme and "RAY_AUTH_TOKEN" in readme


# ------------------------------------------------------------------------------ shown commands


def _shown_commands() -> list[tuple[str, str]]:
    """(where, command) for every `raycontrast train|tune <file>` in cluster/ (README and configs)."""
    found = []
    for path in ALL_FILES:
        text = re.sub(r"\\\n\s*", " ", path.read_text())  # join shell line continuations
        for doc in _docs(path) if path in YAML_FILES else []:
            if doc.get("kind") == "RayJob":
                text += "\n" + " ".join(doc["spec"]["entrypoint"].split())
        for match in re.finditer(r"raycontrast (?:train|tune) [^\n`|;&]*", text):
            command = match.group(0).strip()
            if re.match(r"raycontrast \w+ \S+\.ya?ml", command):
                found.append((path.name, command))
    return found


def test_shown_commands_name_existing_experiments_with_valid_overrides():
    commands = _shown_commands()
    readme = [c for where, c in commands if where == "README.md"]
    assert any(c.startswith("raycontrast train ") for c in readme)
    assert any(c.startswith("raycontrast tune ") for c in readme)
    assert any(where == "kuberay-rayjob.yaml" for where, _ in commands)
    for where, command in commands:
        _, verb, target, *rest = shlex.split(command)
        overrides = [w for w in rest if "=" in w and not w.startswith("-")]
        path = REPO / target
        assert path.is_file(), f"{where}: {command!r} names a missing file"
        if verb == "train":
            assert path.parent == REPO / "experiments", f"{where}: {command!r}"
            load_config(path, overrides)  # every override is a real key with a valid value
        else:
            assert path.parent == REPO / "experiments" / "sweeps", f"{where}: {command!r}"
            load_sweep(path, overrides)
