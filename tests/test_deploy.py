import onnxruntime
import pytest
import torch
from torch import nn

from mbv2 import MobileNetV2
from mbv2.deploy import (
    ONNX_OPSET, compiler_available, export_onnx, fold_batch_norm, fold_conv_bn, onnx_session, runtimes,
    torchscript_frozen,
)
from mbv2.mobilenet_v1 import MobileNetV1
from mbv2.torchvision_compat import randomise_batch_norm as randomise


@pytest.mark.parametrize("groups, bias", [(1, False), (8, False), (1, True)])
def test_fold_conv_bn_equals_conv_then_batch_norm(groups, bias):
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=groups, bias=bias)
    bn = randomise(nn.BatchNorm2d(16))
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(fold_conv_bn(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    # By hand for one channel: the scale multiplies the weights, the shift becomes the bias.
    folded = fold_conv_bn(conv, bn)
    scale = bn.weight[3] / torch.sqrt(bn.running_var[3] + bn.eps)
    torch.testing.assert_close(folded.weight[3], conv.weight[3] * scale)


@pytest.mark.parametrize("build", [lambda: MobileNetV2(width_mult=0.5), MobileNetV1])
def test_fold_batch_norm_keeps_the_outputs_and_removes_every_batch_norm(build):
    model = randomise(build())
    folded = fold_batch_norm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is kept
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    # The folded network has the BN shifts as biases and drops the scales and statistics.
    bn = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(folded) == count(model) - bn


def test_a_training_mode_model_is_folded_with_its_running_statistics():
    model = randomise(MobileNetV2(width_mult=0.35)).train()
    folded = fold_batch_norm(model)
    assert model.training and not folded.training
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model.eval()(x), rtol=1e-4, atol=1e-4)


def test_export_onnx_runs_in_onnxruntime_with_a_free_batch_size(tmp_path):
    model = fold_batch_norm(randomise(MobileNetV2(width_mult=0.35)))
    path = export_onnx(model, tmp_path / "small.onnx", resolution=96)
    import onnx

    assert onnx.load(str(path)).opset_import[0].version == ONNX_OPSET
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    for batch in (1, 3):
        x = torch.randn(batch, 3, 96, 96)
        (logits,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(logits), model(x), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("call, error, match", [
    (lambda: fold_conv_bn(nn.Linear(2, 2), nn.BatchNorm2d(2)), TypeError, "conv must be a torch.nn.Conv2d"),
    (lambda: fold_conv_bn(nn.Conv2d(2, 4, 1), nn.BatchNorm1d(4)), TypeError, "bn must be a torch.nn.BatchNorm2d"),
    (lambda: fold_conv_bn(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(3)), ValueError, "bn has 3 channels but conv has 4"),
    (lambda: fold_conv_bn(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4, track_running_stats=False)), ValueError, "running statistics"),
    (lambda: fold_batch_norm(nn.Sequential(nn.Conv2d(2, 2, 1))), ValueError, "no mbv2.ConvBNAct"),
    (lambda: fold_batch_norm("model"), TypeError, "model must be a torch.nn.Module"),
    (lambda: export_onnx(MobileNetV2(), "model.pt"), ValueError, "path must end in .onnx"),
    (lambda: export_onnx(MobileNetV2(), "m.onnx", resolution=0), ValueError, "resolution must be an integer >= 1"),
    (lambda: export_onnx(MobileNetV2(), "m.onnx", dynamic_size=1), TypeError, "dynamic_size must be True or False"),
    (lambda: torchscript_frozen(MobileNetV2(), resolution=-1), ValueError, "resolution must be an integer >= 1"),
    (lambda: onnx_session("m.onnx", num_threads=0), ValueError, "num_threads must be an integer >= 1"),
    (lambda: onnx_session("nowhere.onnx"), FileNotFoundError, "path must be an existing ONNX file"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_runtimes_agree_and_the_command_prints_the_table(tmp_path, capsys):
    from mbv2.benchmark import main

    model = randomise(MobileNetV2(width_mult=0.35))
    variants = runtimes(model, 96, workdir=tmp_path)
    assert list(variants) == ["PyTorch eager", "PyTorch, BN folded", "PyTorch, BN folded, channels-last",
                              "TorchScript, frozen", "ONNX Runtime"]
    assert (tmp_path / "model.onnx").exists()
    main(["--width", "0.35", "--resolution", "96", "--threads", "1", "--rounds", "1", "--calls", "1"])
    out = capsys.readouterr().out
    assert "MobileNetV2 0.35, 96×96, batch 1: median of 1 interleaved rounds" in out
    rows = [line for line in out.splitlines() if line.startswith(("PyTorch", "ONNX", "TorchScript"))]
    assert len(rows) == 6 and rows[0].split()[-2] == "1.00" and rows[-1].startswith("ONNX Runtime, int8")


def test_a_dynamic_size_export_runs_at_every_resolution_in_one_file(tmp_path):
    model = fold_batch_norm(randomise(MobileNetV2(width_mult=0.35)))
    path = export_onnx(model, tmp_path / "any-size.onnx", resolution=64, dynamic_size=True)
    assert sorted(tmp_path.iterdir()) == [path]  # weights inside, no separate data file
    session = onnx_session(path, num_threads=1)
    for size in (33, 96, 100):
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(session.run(None, {"images": x.numpy()})[0]), model(x),
                                       rtol=1e-3, atol=1e-3)
    fixed = onnx_session(export_onnx(model, tmp_path / "fixed.onnx", resolution=64))
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        fixed.run(None, {"images": torch.randn(1, 3, 96, 96).numpy()})


def test_torchscript_frozen_computes_the_same_function_without_batch_norm(recwarn):
    model = randomise(MobileNetV2(width_mult=0.35)).eval()
    frozen = torchscript_frozen(model, resolution=64)
    assert not [w for w in recwarn if "deprecated" in str(w.message)]  # silenced on purpose
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), model(x), rtol=1e-4, atol=1e-4)
    assert "batch_norm" not in str(frozen.graph)


def test_compile_needs_a_compiler(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert compiler_available() is False
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler"):
        runtimes(MobileNetV2(width_mult=0.35), 64, compile=True)
    with pytest.raises(TypeError, match="compile must be True or False"):
        runtimes(MobileNetV2(width_mult=0.35), 64, compile="yes")


def test_the_command_refuses_compile_without_a_compiler(monkeypatch, capsys):
    import shutil

    from mbv2.benchmark import main

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SystemExit):
        main(["--compile", "--threads", "1"])
    assert "--compile needs a C++ compiler" in capsys.readouterr().err


def test_runtimes_take_an_image_and_check_its_shape(tmp_path):
    model = randomise(MobileNetV2(width_mult=0.35))
    image = torch.randn(1, 3, 64, 64)
    variants = runtimes(model, 64, workdir=tmp_path, image=image)
    with torch.no_grad():
        torch.testing.assert_close(variants["PyTorch eager"](), model.eval()(image))
    with pytest.raises(ValueError, match=r"image must be a tensor of shape \(1, 3, 64, 64\)"):
        runtimes(model, 64, image=torch.randn(1, 3, 96, 96))
    with pytest.raises(TypeError, match="int8 must be True or False"):
        runtimes(model, 64, int8="yes")
