"""int8 post-training quantization: photographs, ReLU, cross-layer equalisation, bias
correction, ONNX Runtime quantization and the agreement metrics."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from mbv2 import MobileNetV2, int8, photos
from mbv2.deploy import fold_batch_norm
from mbv2.torchvision_compat import randomise_batch_norm


def small_folded(relu: bool = True, width: float = 0.35, scale=(0.5, 4.0)) -> MobileNetV2:
    model = fold_batch_norm(randomise_batch_norm(MobileNetV2(num_classes=10, width_mult=width), scale=scale))
    return int8.replace_relu6(model) if relu else model


# --- ReLU and cross-layer equalisation ------------------------------------------------------


def test_replace_relu6_changes_every_relu6_and_only_in_the_copy():
    model = small_folded(relu=False)
    relu = int8.replace_relu6(model)
    count = lambda m, kind: sum(isinstance(x, kind) for x in m.modules())
    assert count(relu, nn.ReLU6) == 0 and count(relu, nn.ReLU) == count(model, nn.ReLU6) == 35
    assert count(model, nn.ReLU) == 0


def test_equalisation_chains_of_mobilenet_v2():
    chains = int8.equalisation_chains(MobileNetV2(width_mult=0.35))
    assert chains[0] == ["stem.conv", "stages.0.0.depthwise.conv", "stages.0.0.projection.conv"]
    assert chains[1] == ["stages.1.0.expansion.conv", "stages.1.0.depthwise.conv", "stages.1.0.projection.conv"]
    assert chains[-1] == ["head.conv", "classifier.linear"]
    assert len(chains) == 17 + 1


def test_equalisation_keeps_the_function_and_equalises_the_ranges():
    model = small_folded()
    equalised = int8.equalise(model)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        before, after = model(x), equalised(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item())
    layers = dict(equalised.named_modules())
    originals = dict(model.named_modules())
    changed = 0
    for chain in int8.equalisation_chains(equalised):
        for first, second in zip(chain, chain[1:]):
            r1 = int8.channel_ranges(layers[first], "output")
            r2 = int8.channel_ranges(layers[second], "input")
            torch.testing.assert_close(r1, r2, rtol=1e-4, atol=0)  # the paper's optimum: equal ranges
            # ... at the geometric mean of the original ranges, for a pair that stands alone.
            if len(chain) == 2:
                expected = torch.sqrt(int8.channel_ranges(originals[first], "output")
                                      * int8.channel_ranges(originals[second], "input"))
                torch.testing.assert_close(r1, expected, rtol=1e-4, atol=0)
            changed += int(not torch.allclose(r1, int8.channel_ranges(originals[first], "output")))
    assert changed > 10  # it did something


def test_equalisation_evens_out_a_depthwise_layers_channels():
    model = small_folded()
    equalised = int8.equalise(model)
    name = "stages.1.0.depthwise.conv"
    spread = lambda m: (lambda r: (r.max() / r.min()).item())(int8.channel_ranges(dict(m.named_modules())[name]))
    assert spread(equalised) < spread(model)


def test_equalisation_refuses_relu6_and_unfolded_batch_norm():
    with pytest.raises(ValueError, match="replace_relu6"):
        int8.equalise(small_folded(relu=False))
    with pytest.raises(ValueError, match="fold_batch_norm"):
        int8.equalise(MobileNetV2(width_mult=0.35))
    with pytest.raises(TypeError, match="model must be an mbv2.MobileNetV2"):
        int8.equalise(nn.Conv2d(3, 3, 1))


# --- Weight quantization and bias correction ------------------------------------------------


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_weight_rounds_to_127_symmetric_levels(per_channel):
    weight = torch.randn(6, 4, 3, 3) * torch.logspace(-2, 0, 6).reshape(-1, 1, 1, 1)
    quantized = int8.quantize_weight(weight, per_channel)
    top = weight.abs().flatten(1).amax(1).reshape(-1, 1, 1, 1) if per_channel else weight.abs().max()
    step = top / 127
    levels = quantized / step
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
    assert levels.abs().max() <= 127 + 1e-4
    assert bool(((quantized - weight).abs() <= step / 2 + 1e-7).all())


def test_bias_correction_removes_the_mean_shift_of_each_layer_and_reduces_the_networks():
    # Batch-norm scales near 1 keep the random network's outputs of order 1.
    model = int8.equalise(small_folded(scale=(0.5, 1.5)))
    data, held_out = torch.randn(16, 3, 64, 64), torch.randn(16, 3, 64, 64)
    corrected = int8.correct_bias(model, data)

    def weights_quantized(m):
        m = int8.replace_relu6(m)  # a copy (there is no ReLU6 left to replace)
        for layer in m.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                layer.weight.data = int8.quantize_weight(layer.weight)
        return m

    with torch.no_grad():
        # The mean shift of the logits over images the correction did not see.
        reference = model(held_out)
        shift_before = (weights_quantized(model)(held_out) - reference).mean(0).abs().mean().item()
        shift_after = (weights_quantized(corrected)(held_out) - reference).mean(0).abs().mean().item()
        # One layer alone, fed the float input: its mean output shift is gone.
        layer = dict(model.named_modules())["stages.1.0.depthwise.conv"]
        fixed = dict(corrected.named_modules())["stages.1.0.depthwise.conv"]
        x = nn.Sequential(model.stem, model.stages[0], model.stages[1][0].expansion)(data)
        quantized = nn.functional.conv2d(x, int8.quantize_weight(layer.weight), fixed.bias, layer.stride,
                                         layer.padding, layer.dilation, layer.groups)
        layer_shift = (quantized - layer(x)).mean(dim=(0, 2, 3))
    assert shift_after < 0.1 * shift_before
    torch.testing.assert_close(layer_shift, torch.zeros_like(layer_shift), rtol=0, atol=1e-4)


# --- ONNX Runtime, on the trained network ---------------------------------------------------


@pytest.fixture(scope="module")
def pretrained_quantized(tmp_path_factory):
    """The trained network quantized per channel (classifier in float), at 112 pixels to be quick."""
    from mbv2 import load_pretrained

    model = load_pretrained()
    views = (photos.View(0.875, "centre"), photos.View(0.65, "top left"))
    calibration = int8.calibration_crops(views=views, size=112)
    evaluation = int8.evaluation_crops(views=views, size=112, flips=False)
    path = int8.build(model, int8.RECIPES["int8, per-channel, float classifier"], calibration.images,
                      tmp_path_factory.mktemp("int8") / "model.onnx")
    with torch.no_grad():
        reference = model(evaluation.images)
    return path, evaluation, reference, calibration


def test_crop_sets_name_the_photo_and_view_of_every_crop(pretrained_quantized):
    *_, calibration = pretrained_quantized
    names = photos.calibration_photo_names()
    assert calibration.images.shape == (4 * len(names), 3, 112, 112)
    assert calibration.photos == [name for name in names for _ in range(4)]
    assert calibration.views[:4] == ["0.875 centre", "0.65 top left", "0.875 centre, mirrored",
                                     "0.65 top left, mirrored"]
    torch.testing.assert_close(calibration.images[2], calibration.images[0].flip(-1))
    # Normalised as the trained network expects: values of order 1 around 0.
    assert calibration.images.dtype == torch.float32 and calibration.images.abs().mean() < 3


def test_the_quantized_network_runs_and_agrees_with_float32(pretrained_quantized):
    path, evaluation, reference, _ = pretrained_quantized
    import onnx

    graph = onnx.load(str(path)).graph
    kinds = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds
    (last,) = [node for node in graph.node if "logits" in node.output]
    assert last.op_type == "Gemm"  # the classifier stayed in float32, so the logits are not rounded
    float32 = int8.agreement(reference, int8.onnx_logits(path.with_suffix(".fp32.onnx"), evaluation.images))
    assert float32.top1 == float32.n and float32.median_relative_error < 1e-4
    result = int8.agreement(reference, int8.onnx_logits(path, evaluation.images))
    assert result.n == 24
    assert result.top1 >= 0.75 * result.n and result.top5_overlap >= 0.6
    assert 1e-3 < result.median_relative_error < 0.4  # changed, but not far


def test_agreement_counts_top1_and_top5():
    reference = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    other = torch.tensor([[4.0, 5, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5.5]])
    result = int8.agreement(reference, other)
    assert (result.top1, result.n, result.top5_overlap) == (1, 2, 1.0)
    assert result.median_relative_error > 0


# --- Bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("call, error, match", [
    (lambda: int8.quantize_onnx(MobileNetV2(), torch.zeros(1, 3, 32, 32), "m.pt"), ValueError, "path must end in .onnx"),
    (lambda: int8.quantize_onnx(MobileNetV2(), torch.zeros(3, 32, 32), "m.onnx"), ValueError, "calibration must be"),
    (lambda: int8.quantize_onnx(MobileNetV2(), torch.zeros(1, 3, 32, 32), "m.onnx", method="mse"), ValueError,
     "method must be one of"),
    (lambda: int8.quantize_onnx(MobileNetV2(), torch.zeros(1, 3, 32, 32), "m.onnx", activations="int4"),
     ValueError, "activations must be one of"),
    (lambda: int8.quantize_onnx(MobileNetV2(), torch.zeros(1, 3, 32, 32), "m.onnx", per_channel=1), TypeError,
     "per_channel must be True or False"),
    (lambda: int8.quantize_onnx(MobileNetV2(), torch.zeros(1, 3, 32, 32), "m.onnx", keep_float="Gemm"), TypeError,
     "keep_float must be a list"),
    (lambda: int8.quantize_onnx(MobileNetV2(width_mult=0.35), torch.zeros(1, 3, 32, 32), "m.onnx",
                                keep_float=["classifier"]), ValueError, "keep_float must name .* is a Sequential"),
    (lambda: int8.correct_bias(MobileNetV2(), torch.zeros(2, 3, 32, 32), batch_size=0), ValueError,
     "batch_size must be an integer >= 1"),
    (lambda: int8.correct_bias("model", torch.zeros(2, 3, 32, 32)), TypeError, "model must be a torch.nn.Module"),
    (lambda: int8.quantize_weight(torch.zeros(4)), ValueError, "weight must be"),
    (lambda: int8.channel_ranges(nn.Conv2d(2, 2, 1), side="both"), ValueError, "side must be one of"),
    (lambda: int8.channel_ranges(nn.ReLU()), TypeError, "layer must be"),
    (lambda: int8.agreement(torch.zeros(2, 10), torch.zeros(3, 10)), ValueError, "reference and other"),
    (lambda: int8.prepare(MobileNetV2(), int8.Recipe(equalise=True)), ValueError, "recipe.equalise needs recipe.relu"),
    (lambda: int8.prepare(MobileNetV2(), int8.Recipe(bias_correction=True)), ValueError, "calibration images"),
    (lambda: int8.quantize_onnx(MobileNetV2(width_mult=0.35), torch.zeros(1, 3, 64, 64), "m.onnx",
                                float_path="nowhere.onnx"), FileNotFoundError, "float_path must be an existing ONNX file"),
    (lambda: int8.normalise([np.zeros((4, 4), np.uint8)]), ValueError, r"images\[0\] must be"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_the_recorded_table_holds_every_recipe_with_its_provenance():
    table = int8.recorded()
    assert list(table["rows"]) == list(int8.RECIPES)
    for name, row in table["rows"].items():
        # recorded with today's recipes (JSON turns the tuples into lists)
        assert row["recipe"] == json.loads(json.dumps(int8.RECIPES[name]._asdict())), name
        assert 0 <= row["agreement"].top1 <= row["agreement"].n == table["evaluation"]["crops"]
    assert table["rows"]["float32, BN folded"]["agreement"].top1 == table["evaluation"]["crops"]
    assert set(table["evaluation"]["photos"]) == set(photos.photo_names())
    assert set(table["calibration"]["photos"]) == set(photos.calibration_photo_names())
    for key in ("commit", "torch", "onnxruntime", "threads", "command"):
        assert key in table["provenance"]
    with pytest.raises(FileNotFoundError, match="python -m mbv2.int8"):
        int8.recorded("nowhere.json")


def test_one_recorded_row_is_reproduced_by_the_code(tmp_path):
    # The speed chapter does the same check live; the tolerance is the same.
    from mbv2 import load_pretrained
    from mbv2.deploy import runtimes

    name = "int8, per-channel, float classifier"
    variants = runtimes(load_pretrained(), 224, workdir=tmp_path, int8=True)
    assert list(variants)[-1] == "ONNX Runtime, int8"
    evaluation = int8.evaluation_crops()
    reference = int8.onnx_logits(tmp_path / "model.onnx", evaluation.images)
    live = int8.agreement(reference, int8.onnx_logits(tmp_path / "model.int8.onnx", evaluation.images))
    recorded = int8.recorded()["rows"][name]["agreement"]
    assert abs(live.top1 - recorded.top1) <= 2 and abs(live.median_relative_error - recorded.median_relative_error) <= 0.02
