"""The book's model works with PyTorch's tracers and exporters and keeps its eager outputs."""

import onnxruntime
import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor

import mbv2
from mbv2 import photos, pretrained
from mbv2.deploy import export_onnx
from mbv2.mobilenet_v1 import MobileNetV1


@pytest.fixture(scope="module")
def model():
    return pretrained.load_pretrained()


@pytest.fixture(scope="module")
def batch():
    return pretrained.preprocess([photos.load_photo("coffee"), photos.load_photo("chelsea")])


def test_fx_symbolic_trace(model, batch):
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(traced(batch), model(batch))
    torch.fx.symbolic_trace(MobileNetV1())  # the V1 model too


def test_create_feature_extractor(model, batch):
    nodes = {"stages.5.0.expansion": "layer_15", "stages.6": "c320", "head": "c1280",
             "classifier": "logits"}
    extractor = create_feature_extractor(model, nodes)
    _, eager = mbv2.capture(model, batch, ["stages.5.0.expansion", "stages.6", "head"])
    with torch.no_grad():
        out = extractor(batch)
        assert torch.equal(out["logits"], model(batch))
    assert out["layer_15"].shape == (2, 576, 14, 14)
    assert out["c320"].shape == (2, 320, 7, 7) and out["c1280"].shape == (2, 1280, 7, 7)
    for ours, name in [("stages.5.0.expansion", "layer_15"), ("stages.6", "c320"), ("head", "c1280")]:
        assert torch.equal(out[name], eager[ours])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torch_jit_script(model, batch):
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(batch), model(batch), rtol=0, atol=1e-5)


def test_torch_export(model, batch):
    program = torch.export.export(model, (batch,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(batch), model(batch), rtol=0, atol=1e-4)


def test_onnx_export_runs_in_onnxruntime(model, batch, tmp_path):
    path = export_onnx(model, tmp_path / "mobilenet_v2.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    single = batch[:1]  # the batch dimension is dynamic
    (logits,) = session.run(None, {name: single.numpy()})
    with torch.no_grad():
        expected = model(single)
    torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=0, atol=1e-3)
    assert logits.argmax() == expected.argmax()


def test_eager_errors_are_kept(model):
    with pytest.raises(ValueError, match="4-D"):
        model(torch.zeros(3, 224, 224))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([1, 2, 3])
