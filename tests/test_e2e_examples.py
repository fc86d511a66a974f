"""The shipped examples: a server on a copy of examples/servables (and one on a small ResNet-50), driven by the
example clients' own functions."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import requests
from conftest import RPC_TIMEOUT_S, ServerProcess

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TEST_RESNET_WIDTH = 8  # base channels of the test ResNet-50 (64 is the real one): same topology, 1.6 MB


def load_example(name: str) -> ModuleType:
    """Imports examples/<name>.py as a module (examples/ is not a package; its folder goes on sys.path, as when a
    script there runs, so `import ocr_font` works)."""
    folder = str((EXAMPLES / name).parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(f"example_{name.replace('/', '_')}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def examples_server(tmp_path: Path, start_server: Callable[..., ServerProcess]) -> Iterator[ServerProcess]:
    """A server on a copy of examples/servables (the tree itself stays untouched)."""
    servables = shutil.copytree(EXAMPLES / "servables", tmp_path / "servables")
    yield start_server(servables)


def test_build_models_reproduces_the_committed_models(tmp_path: Path) -> None:
    """examples/build_models.py rebuilds the committed models (add byte for byte, digits the same graph); reruns
    change nothing (idempotent)."""
    import onnx

    build = load_example("build_models")
    assert build.main(["--out", str(tmp_path)]) == 0
    committed = EXAMPLES / "servables"
    for small in ("add/1/add.onnx", "matmul/1/matmul.onnx", "ocr/1/detector.onnx", "ocr/1/recognizer.onnx"):
        assert (committed / small).read_bytes() == (tmp_path / small).read_bytes(), small
    old, new = (onnx.load(str(root / "digits/1/digits.onnx")) for root in (committed, tmp_path))
    assert [n.op_type for n in old.graph.node] == [n.op_type for n in new.graph.node]
    assert [list(t.dims) for t in old.graph.initializer] == [list(t.dims) for t in new.graph.initializer]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.onnx")}
    assert build.main(["--out", str(tmp_path)]) == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.onnx")} == stamps


def test_add_client(examples_server: ServerProcess) -> None:
    """add_client.py's calls: add_common adds float32 tensors, add_cast keeps the integer dtype."""
    add_client = load_example("add_client")
    common = add_client.run_add_common(examples_server.grpc_address)
    assert len(common) == 3
    for x1, x2, y in common:
        assert y.dtype == np.float32 and y.shape == (2, 2)
        np.testing.assert_array_equal(y, x1 + x2)
    cast = add_client.run_add_cast(examples_server.grpc_address)
    assert len(cast) == 2
    for x1, x2, y in cast:
        assert y.dtype == np.int32
        np.testing.assert_array_equal(y, x1 + x2)
    assert add_client.main(["--address", examples_server.grpc_address]) == 0


def test_digits_client_accuracy(examples_server: ServerProcess) -> None:
    """digits_client.py renders held-out digits to PNG and reaches at least 0.9 accuracy through the server."""
    digits_client = load_example("digits_client")
    accuracy = digits_client.evaluate(examples_server.grpc_address)
    assert accuracy >= digits_client.MIN_ACCURACY == 0.9
    assert digits_client.main(["--address", examples_server.grpc_address, "--limit", "40"]) == 0


def test_digits_over_rest(examples_server: ServerProcess) -> None:
    """The digits method over REST with a b64 PNG: label (int) and probability (float)."""
    import base64

    digits_client = load_example("digits_client")
    images, labels = digits_client.held_out_digits(limit=5)
    instances = [{"image": {"b64": base64.b64encode(digits_client.render_png(im)).decode()}} for im in images]
    response = requests.post(
        f"{examples_server.rest_base}/model/digits:predict", json={"instances": instances}, timeout=RPC_TIMEOUT_S
    )
    assert response.status_code == 200
    outputs = response.json()["instances"]
    assert len(outputs) == 5
    for output in outputs:
        assert isinstance(output["label"], int) and 0 <= output["label"] <= 9
        assert 0.0 < output["probability"] <= 1.0
    assert sum(out["label"] == int(label) for out, label in zip(outputs, labels, strict=True)) >= 4


def test_every_example_servable_passes_check(capsys: pytest.CaptureFixture[str]) -> None:
    """`rustserve check` accepts every servable of examples/servables (what README command 1 serves)."""
    from rustserve.cli import main

    assert main(["check", "--dir", str(EXAMPLES / "servables")]) == 0
    report = capsys.readouterr().out
    for name in ("add", "digits", "matmul", "ocr"):
        assert f"ok    {name}:" in report


def test_matmul_client(examples_server: ServerProcess) -> None:
    """matmul_client.py: instances of different shapes in one request, each multiplied whole (no batch dim)."""
    matmul_client = load_example("matmul_client")
    triples = matmul_client.run(examples_server.grpc_address)
    assert [c.shape for _, _, c in triples] == [(2, 2), (1, 3), (3, 1)]
    for a, b, c in triples:
        assert c.dtype == np.float32
        np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-5)
    assert matmul_client.main(["--address", examples_server.grpc_address]) == 0


def test_matmul_shape_mismatch_is_an_instance_error(examples_server: ServerProcess) -> None:
    """[2, 3] @ [2, 3] cannot be multiplied: that instance fails with an error, its neighbour succeeds."""
    from rustserve.client import Client

    good = {"a": np.ones((2, 3), np.float32), "b": np.ones((3, 1), np.float32)}
    bad = {"a": np.ones((2, 3), np.float32), "b": np.ones((2, 3), np.float32)}
    with Client(examples_server.grpc_address, "matmul", "matmul") as client:
        result = client.infer([good, bad])
    assert isinstance(result, list) and len(result) == 2, result
    np.testing.assert_array_equal(result[0]["c"], np.full((2, 1), 3.0, np.float32))
    assert "error" in result[1] and result[1]["error"], result


def test_ocr_client_reads_every_generated_image(examples_server: ServerProcess) -> None:
    """ocr_client.py: random digit strings at random scales, places, shades and noise are read exactly, boxes
    included, through decode -> detector -> find_boxes -> crop -> recognizer -> read_text."""
    ocr_client = load_example("ocr_client")
    images = ocr_client.generate(24, seed=7)
    readings = ocr_client.read(examples_server.grpc_address, images)
    assert len(readings) == 24
    for reading in readings:
        assert reading.text == reading.truth.text
        assert reading.boxes == reading.truth.boxes
        assert 0.9 < reading.confidence <= 1.0
    assert ocr_client.main(["--address", examples_server.grpc_address, "--count", "6", "--seed", "3"]) == 0


def test_ocr_edge_cases(examples_server: ServerProcess) -> None:
    """A blank image reads as "" with no boxes; an oversized image, a string and junk bytes fail that instance with
    a message that says what is wrong, and the server keeps serving."""
    ocr_client = load_example("ocr_client")
    font = load_example("ocr_font")
    from rustserve.client import Client

    blank = np.full((30, 100), 255, np.uint8)
    wide = font.render("0123456789012345", scale=4)  # 16 * 20 + 15 * 5 + 8 = 403 pixels wide
    assert wide.image.shape[1] > 384
    instances = [
        {"image": ocr_client.to_png(blank)},
        {"image": ocr_client.to_png(wide.image)},
        {"image": "not an image"},
        {"image": b"junk" * 10},
        {"image": ocr_client.to_png(font.render("42", scale=2).image)},
    ]
    with Client(examples_server.grpc_address, "ocr", "read") as client:
        result = client.infer(instances)
    assert isinstance(result, list) and len(result) == 5, result
    assert result[0]["text"] == "" and np.asarray(result[0]["boxes"]).size == 0
    assert "the detector reads at most 384x48" in result[1]["error"]
    assert "got a string" in result[2]["error"]
    assert "expected a PNG or JPEG image, got 40 bytes" in result[3]["error"]
    assert result[4]["text"] == "42"


def test_ocr_too_many_characters(examples_server: ServerProcess) -> None:
    """17 characters fit the detector's canvas but not the recognizer's 16 slots: a clear error (one failed
    instance is the whole reply, MindSpore's collapse rule)."""
    ocr_client = load_example("ocr_client")
    font = load_example("ocr_font")
    from rustserve.client import Client

    # Scale 2 with 3 blank pixels between cells: 17 * 10 + 16 * 3 + 8 = 226 pixels wide, 14 + 8 tall.
    many = font.render("01234567890123456", scale=2, spacing=3)
    with Client(examples_server.grpc_address, "ocr", "read") as client:
        result = client.infer({"image": ocr_client.to_png(many.image)})
    assert isinstance(result, dict), result
    assert "found 17 characters, the recognizer reads at most 16" in result["error"], result


# ---------------------------------------------------------------------------------------------------------------
# ResNet-50 (reduced width: the full model is built only by the example script)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A servables tree with the resnet50 servable and both versions built at width 8."""
    build = load_example("resnet50/build_model")
    root = tmp_path_factory.mktemp("resnet")
    (root / "resnet50").mkdir()
    shutil.copy(EXAMPLES / "resnet50/servables/resnet50/servable_config.py", root / "resnet50")
    build.write_versions(root, width=TEST_RESNET_WIDTH, show_progress=False)
    return root


@pytest.fixture
def resnet_server(resnet_dir: Path, start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(resnet_dir)


def test_resnet_topology_is_resnet50_v1_5() -> None:
    """The builder's full-width graph has ResNet-50's 25,557,032 trainable parameters (torchvision's count), 53
    convolutions, 16 residual adds, and the v1.5 stride placement (3x3 convolution of the first bottleneck of
    stages 2-4)."""
    build = load_example("resnet50/build_model")
    assert build.parameter_count(64) == 25_557_032
    graph = build._topology(64)
    convs = [node for node in graph.nodes if node.op_type == "Conv"]
    assert len(convs) == 53
    assert sum(node.op_type == "Add" for node in graph.nodes) == 16
    strides = {node.name: next(list(a.ints) for a in node.attribute if a.name == "strides") for node in convs}
    strided = sorted(name for name, stride in strides.items() if stride == [2, 2])
    assert strided == [
        "layer2.0.conv2.conv", "layer2.0.downsample.conv",
        "layer3.0.conv2.conv", "layer3.0.downsample.conv",
        "layer4.0.conv2.conv", "layer4.0.downsample.conv",
        "stem.conv",
    ]  # fmt: skip


def test_resnet_build_is_deterministic_and_idempotent(resnet_dir: Path, tmp_path: Path) -> None:
    """Same width and seed -> same bytes; the two versions differ; a rerun leaves the files alone."""
    build = load_example("resnet50/build_model")
    v1, v2 = (resnet_dir / f"resnet50/{version}/resnet50.onnx" for version in (1, 2))
    assert v1.read_bytes() != v2.read_bytes()
    assert build.build(TEST_RESNET_WIDTH, seed=1, show_progress=False) == v1.read_bytes()
    stamps = {path: path.stat().st_mtime_ns for path in (v1, v2)}
    build.write_versions(resnet_dir, width=TEST_RESNET_WIDTH, show_progress=False)
    assert {path: path.stat().st_mtime_ns for path in (v1, v2)} == stamps


def test_resnet_config_without_model_says_how_to_build_it(tmp_path: Path) -> None:
    """Serving the servable before building the model fails with the command that builds it."""
    from rustserve.server import _loader

    (tmp_path / "resnet50").mkdir()
    shutil.copy(EXAMPLES / "resnet50/servables/resnet50/servable_config.py", tmp_path / "resnet50")
    with pytest.raises(RuntimeError, match=r"run `python examples/resnet50/build_model.py` first"):
        _loader.load_all_versions(str(tmp_path), "resnet50")


def test_resnet_client_routes_agree(resnet_server: ServerProcess, tmp_path: Path) -> None:
    """client.py: JPEG files through classify_top1, classify_top1_batch, classify_top5 and REST agree."""
    client = load_example("resnet50/client")
    paths = client.generate_images(tmp_path / "images", 6)
    assert all(path.read_bytes()[:2] == b"\xff\xd8" for path in paths)  # JPEG files
    address = resnet_server.grpc_address
    top1 = client.classify(address, "classify_top1", paths)
    top1_batch = client.classify(address, "classify_top1_batch", paths)
    top5 = client.classify(address, "classify_top5", paths)
    rest = client.classify_rest(resnet_server.rest_base.removeprefix("http://"), paths)
    assert client.check(top1, top1_batch, top5, rest) == []
    rest_address = resnet_server.rest_base.removeprefix("http://")
    argv = ["--address", address, "--rest-address", rest_address, "--images", str(tmp_path / "main"), "--count", "3"]
    assert client.main(argv) == 0


def test_resnet_answers_match_onnxruntime(resnet_dir: Path, resnet_server: ServerProcess, tmp_path: Path) -> None:
    """classify_top5 of each version equals the servable's own preprocessing + onnxruntime (Python) + softmax."""
    import onnxruntime

    from rustserve.server import _loader

    client = load_example("resnet50/client")
    registry = _loader.ServableLoader().import_config(str(resnet_dir), "resnet50")
    top5_method = next(method for method in registry.methods if method["name"] == "classify_top5")
    preprocess = top5_method["stages"][0]["function"]
    paths = client.generate_images(tmp_path, 4)
    answers = {}
    for version in (1, 2):
        session = onnxruntime.InferenceSession(
            str(resnet_dir / f"resnet50/{version}/resnet50.onnx"), providers=["CPUExecutionProvider"]
        )
        batch = np.stack([preprocess(path.read_bytes()) for path in paths])
        (logits,) = session.run(["score"], {"image": batch})
        answers[version] = client.classify(resnet_server.grpc_address, "classify_top5", paths, version=version)
        for row, answer in zip(logits, answers[version], strict=True):
            probabilities = np.exp(row - row.max())
            probabilities /= probabilities.sum()
            best = np.argsort(-probabilities, kind="stable")[:5]
            assert answer["label"] == ";".join(f"class_{index:03d}" for index in best)
            np.testing.assert_allclose(answer["score"], probabilities[best], rtol=1e-4, atol=1e-6)
    newest = client.classify(resnet_server.grpc_address, "classify_top5", paths)
    assert [a["label"] for a in newest] == [a["label"] for a in answers[2]]
    assert not all(np.allclose(a["score"], b["score"]) for a, b in zip(answers[1], answers[2], strict=True)), (
        "versions 1 and 2 should be different models"
    )
