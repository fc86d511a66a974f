"""deploy/: the Kubernetes and KServe manifests validate, the container build file is sound, and the server keeps
KServe's container contract.

* Every manifest validates: KServe kinds against the `openAPIV3Schema` of their CRD in ../shared/kserve/ (jsonschema),
  built-in kinds with kubernetes-validate.
* deploy/Dockerfile is parsed, not built (no container engine here): stages, non-root USER, no ADD of URLs, and an
  ENTRYPOINT / CMD that the runtime's command and args extend.
* The contract: the runtime container's command and args, rendered as KServe does (`{{.Name}}` = the
  InferenceService's name), run as a non-root user (nobody, through setpriv, when the tests run as root) on a
  read-only copy of a one-method servable folder. Only three things are replaced: /mnt/models by that copy's
  temporary path, and the ports 8080 and 9000 by free ones. The manifest's liveness and readiness paths answer 200,
  tritonclient infers by the InferenceService's name over HTTP and gRPC, and SIGTERM stops it cleanly.
"""

from __future__ import annotations

import copy
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import requests
import yaml
from conftest import HOST, communicate_or_fail, free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KSERVE = ROOT.parent / "shared" / "kserve"
CRDS = {
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
}
MODELS = "/mnt/models"
START_TIMEOUT_S = 30.0

SERVABLE_CONFIG = """
from rustserve.server import register

model = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=False)


@register.register_method(output_names=["y"])
def add_common(x1, x2):
    return register.add_stage(model, x1, x2, outputs_count=1)
"""


def _manifests() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                found.append((path, document))
    return found


MANIFESTS = _manifests()


def _one(kind: str) -> dict[str, Any]:
    (manifest,) = [document for _, document in MANIFESTS if document["kind"] == kind]
    return manifest


def _runtime_container() -> dict[str, Any]:
    (container,) = _one("ClusterServingRuntime")["spec"]["containers"]
    return container


def _crd_schema(kind: str, api_version: str) -> dict[str, Any]:
    crd = yaml.safe_load((KSERVE / CRDS[kind]).read_text())
    group, _, version = api_version.partition("/")
    assert crd["spec"]["group"] == group, f"{kind}: apiVersion {api_version}, CRD group {crd['spec']['group']}"
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served")]
    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
    return schema


def test_deploy_holds_every_kind() -> None:
    kinds = sorted(document["kind"] for _, document in MANIFESTS)
    assert kinds == ["ClusterServingRuntime", "Deployment", "HorizontalPodAutoscaler", "InferenceService", "Service"]


@pytest.mark.parametrize(("path", "manifest"), MANIFESTS, ids=[f"{p.name}:{m['kind']}" for p, m in MANIFESTS])
def test_manifest_validates(path: Path, manifest: dict[str, Any]) -> None:
    if manifest["kind"] in CRDS:
        schema = _crd_schema(manifest["kind"], manifest["apiVersion"])
        jsonschema.validate(manifest, schema, cls=jsonschema.Draft7Validator)
        # The schema itself catches mistakes: a misspelt field of the predictor is refused.
        broken = copy.deepcopy(manifest)
        broken["spec"]["containers" if "containers" in broken["spec"] else "predictor"] = "not an object"
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema, cls=jsonschema.Draft7Validator)
    else:
        kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)


def test_cluster_serving_runtime_follows_kserve_conventions() -> None:
    runtime = _one("ClusterServingRuntime")
    spec = runtime["spec"]
    assert {fmt["name"] for fmt in spec["supportedModelFormats"]} == {"onnx", "rustserve"}
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    assert spec["annotations"] == {"prometheus.kserve.io/port": "8080", "prometheus.kserve.io/path": "/metrics"}
    container = _runtime_container()
    assert container["name"] == "kserve-container"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http1": 8080, "h2c": 9000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    args = container["args"]
    assert f"--dir={MODELS}" in args and "--model-name={{.Name}}" in args
    assert "--rest=0.0.0.0:8080" in args and "--grpc=0.0.0.0:9000" in args
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    # /tmp is the only writable place, and SIGTERM's drain ends within the default 30 s grace period.
    assert [mount["mountPath"] for mount in container["volumeMounts"]] == ["/tmp"]
    drain = float(next(arg for arg in args if arg.startswith("--drain-timeout-s=")).partition("=")[2])
    assert drain + 4.5 < 30


def test_inference_service_and_plain_manifests_match_the_runtime() -> None:
    runtime, isvc = _one("ClusterServingRuntime"), _one("InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {fmt["name"] for fmt in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    name = isvc["metadata"]["name"]
    container = _runtime_container()
    rendered = [arg.replace("{{.Name}}", name) for arg in container["args"]]
    deployment = _one("Deployment")
    (plain,) = deployment["spec"]["template"]["spec"]["containers"]
    assert (plain["command"], plain["args"]) == (container["command"], rendered)
    assert plain["livenessProbe"]["httpGet"]["path"] == container["livenessProbe"]["httpGet"]["path"]
    assert plain["readinessProbe"]["httpGet"]["path"] == container["readinessProbe"]["httpGet"]["path"]
    assert {mount["mountPath"]: mount.get("readOnly", False) for mount in plain["volumeMounts"]} == {
        MODELS: True,
        "/tmp": False,
    }
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["terminationGracePeriodSeconds"] == 30
    service, hpa = _one("Service"), _one("HorizontalPodAutoscaler")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    grpc_port = next(port for port in service["spec"]["ports"] if port["name"] == "grpc")
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert metrics == ["rustserve_queue_depth_instances"]


# ---------------------------------------------------------------------------------------------------------------
# the container build file
# ---------------------------------------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per named stage; a stage's first entry is ("FROM", its base image, global ARG defaults filled)."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    global_args: dict[str, str] = {}
    for instruction, arguments in _dockerfile():
        if instruction == "ARG" and not stages:
            name, _, default = arguments.partition("=")
            global_args[name] = default
        elif instruction == "FROM":
            arguments = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], arguments)
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", arguments, re.IGNORECASE)
            assert match, f"every stage is named: FROM {arguments}"
            current = stages.setdefault(match.group(2), [])
            current.append((instruction, match.group(1)))
        else:
            current.append((instruction, arguments))
    return stages


def test_dockerfile_stages_user_and_entrypoint() -> None:
    import json

    stages = _stages()
    assert list(stages)[-1] == "cpu", "the default target (the last stage) is the CPU image"
    assert {"build", "cpu", "gpu"} <= set(stages)
    assert any("maturin build" in args for instruction, args in stages["build"] if instruction == "RUN")
    for instruction, arguments in _dockerfile():
        assert not (instruction == "ADD" and "://" in arguments), f"no ADD of URLs: {arguments}"
    container = _runtime_container()
    for target, extra in (("cpu", "[cpu]"), ("gpu", "[gpu]")):
        stage = stages[target]
        assert stage[0][1] == "base" and "python" in stages["base"][0][1] and "slim" in stages["base"][0][1]
        assert any(extra in args and "pip install" in args for instruction, args in stage if instruction == "RUN")
        users = [args for instruction, args in stage if instruction == "USER"]
        assert users and users[-1].split(":")[0] not in ("0", "root")
        assert int(users[-1].split(":")[0]) == container["securityContext"]["runAsUser"]
        (entrypoint,) = [json.loads(args) for instruction, args in stage if instruction == "ENTRYPOINT"]
        (cmd,) = [json.loads(args) for instruction, args in stage if instruction == "CMD"]
        assert entrypoint == container["command"]
        assert container["args"][: len(cmd)] == cmd, "the runtime's args extend the image's CMD"
    base_env = " ".join(args for instruction, args in stages["base"] if instruction == "ENV")
    assert "HOME=/tmp" in base_env


# ---------------------------------------------------------------------------------------------------------------
# the container contract
# ---------------------------------------------------------------------------------------------------------------


def _read_only(path: Path) -> None:
    for folder, _, files in os.walk(path):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o444)
        os.chmod(folder, 0o555)


class Contract:
    """The runtime's container, run as KServe would run it (see the module docstring)."""

    def __init__(self, scratch: Path) -> None:
        container = _runtime_container()
        self.name = _one("InferenceService")["metadata"]["name"]
        self.liveness = container["livenessProbe"]["httpGet"]["path"]
        self.readiness = container["readinessProbe"]["httpGet"]["path"]
        self.models = scratch / "mnt" / "models"
        self.models.mkdir(parents=True)
        (self.models / "servable_config.py").write_text(SERVABLE_CONFIG.lstrip())
        (self.models / "1").mkdir()
        shutil.copy(ROOT / "examples" / "servables" / "add" / "1" / "add.onnx", self.models / "1" / "add.onnx")
        _read_only(scratch / "mnt")
        self.home = scratch / "tmp"  # stands for the pod's /tmp (HOME=/tmp in the image)
        self.home.mkdir()
        self.rest_port, self.grpc_port = free_port(), free_port()
        args = [
            arg.replace("{{.Name}}", self.name)
            .replace(MODELS, str(self.models))
            .replace(":8080", f":{self.rest_port}")
            .replace(":9000", f":{self.grpc_port}")
            for arg in container["args"]
        ]
        program = shutil.which(container["command"][0], path=os.path.dirname(sys.executable))
        assert program is not None, f"{container['command'][0]} is not installed next to {sys.executable}"
        self.command = [program, *container["command"][1:], *args]
        prefix: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.home, nobody.pw_uid, nobody.pw_gid)
            prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups", "--"]
        else:
            os.chmod(self.home, stat.S_IRWXU)
        env = {key: value for key, value in os.environ.items() if not key.startswith(("RUST_LOG", "RUSTSERVE_"))}
        env.update(HOME=str(self.home), TMPDIR=str(self.home), PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen(
            [*prefix, *self.command],
            cwd=self.models,  # read-only: nothing may be written next to the model
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.rest_port}{path}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"the server exited with {self.proc.returncode}\n{out}\n{err}")
            try:
                if requests.get(self.url(self.readiness), timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.proc.kill()
        out, err = self.proc.communicate()
        pytest.fail(f"not ready within {START_TIMEOUT_S} s\n{out}\n{err}")


@pytest.fixture(scope="module")
def contract() -> Iterator[Contract]:
    # NOTE: not pytest's tmp_path: its folders are private to the user that runs the tests, and the server runs as
    # nobody.
    with tempfile.TemporaryDirectory(prefix="rustserve-contract-") as scratch:
        os.chmod(scratch, 0o755)
        running = Contract(Path(scratch))
        try:
            running.wait_ready()
            yield running
        finally:
            if running.proc.poll() is None:
                running.proc.kill()
                running.proc.communicate()
            for folder, _, _ in os.walk(scratch):
                os.chmod(folder, 0o755)  # the read-only copy, made removable


def test_contract_runs_as_non_root_on_read_only_models(contract: Contract) -> None:
    status = Path(f"/proc/{contract.proc.pid}/status").read_text()
    uids = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
    assert uids is not None and int(uids.group(1)) != 0
    assert not os.access(contract.models, os.W_OK) or os.geteuid() == 0
    assert stat.S_IMODE(contract.models.stat().st_mode) == 0o555
    assert sorted(os.listdir(contract.models)) == ["1", "servable_config.py"]  # no __pycache__, nothing written


def test_contract_probes_answer(contract: Contract) -> None:
    assert requests.get(contract.url(contract.liveness), timeout=5).status_code == 200
    assert requests.get(contract.url(contract.readiness), timeout=5).status_code == 200
    assert requests.get(contract.url(f"/v2/models/{contract.name}/ready"), timeout=5).status_code == 200
    metrics = requests.get(contract.url("/metrics"), timeout=5)
    assert metrics.status_code == 200 and "# TYPE rustserve_" in metrics.text


def _inputs(module: Any, **arrays: np.ndarray) -> list[Any]:
    """tritonclient FP32 inputs of `module` (tritonclient.http or tritonclient.grpc)."""
    inputs = []
    for name, array in arrays.items():
        item = module.InferInput(name, list(array.shape), "FP32")
        item.set_data_from_numpy(array)
        inputs.append(item)
    return inputs


def test_contract_infers_by_the_inference_service_name(contract: Contract) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x1 = np.array([[1, 2], [3, 4]], np.float32)
    x2 = np.array([[10, 20], [30, 40]], np.float32)
    with httpclient.InferenceServerClient(f"{HOST}:{contract.rest_port}") as client:
        assert client.get_model_metadata(contract.name)["name"] == contract.name
        result = client.infer(contract.name, _inputs(httpclient, x1=x1, x2=x2))
        np.testing.assert_array_equal(result.as_numpy("y"), x1 + x2)
    with grpcclient.InferenceServerClient(f"{HOST}:{contract.grpc_port}") as client:
        assert client.is_model_ready(contract.name)
        reply = client.infer(contract.name, _inputs(grpcclient, x1=x1, x2=x2))
        np.testing.assert_array_equal(reply.as_numpy("y"), x1 + x2)


def test_contract_sigterm_drains_and_exits(contract: Contract) -> None:
    """Last of the contract tests: the pod's stop signal ends the server with status 0, well within its grace."""
    started = time.monotonic()
    contract.proc.send_signal(signal.SIGTERM)
    out, err = communicate_or_fail(contract.proc, 25, "the server after SIGTERM")
    assert contract.proc.returncode == 0, f"{out}\n{err}"
    assert time.monotonic() - started < 25
    assert not list(Path(contract.models).rglob("__pycache__"))


def test_model_name_names_a_servable_folder(tmp_path: Path) -> None:
    """`--model-name` names DIR when DIR is one servable; a folder of servables keeps its servables' names."""
    import argparse

    from rustserve import cli
    from rustserve.server import _loader

    def names(directory: Path, model_name: str | None = None, servable: list[str] | None = None) -> list[str]:
        return cli._servable_names(argparse.Namespace(model_name=model_name, servable=servable), str(directory))

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "servable_config.py").write_text(SERVABLE_CONFIG.replace('"add.onnx"', '"m.onnx"'))
    (folder / "3").mkdir()
    (folder / "3" / "m.onnx").write_bytes(b"")
    assert names(folder) == ["models"]
    assert names(folder, "rustserve-add") == ["rustserve-add"]
    assert names(folder, "types", ["types"]) == ["types"]
    for bad in ("", "a.b", "a/b"):
        with pytest.raises(RuntimeError, match="^--model-name must be a name without"):
            names(folder, bad)
    with pytest.raises(RuntimeError, match="is one servable, served as 'x': --servable names none other"):
        names(folder, "x", ["y"])
    (spec,) = _loader.load_all_versions(str(folder), "types")
    assert (spec["name"], spec["version"], spec["servable_directory"]) == ("types", 3, str(folder))
    assert spec["models"][0]["files"] == [str(folder / "3" / "m.onnx")]
    assert _loader.newest_version_number(str(folder), "anything") == 3
    assert names(ROOT / "examples" / "servables", "ignored") == ["add", "digits", "matmul", "ocr"]
