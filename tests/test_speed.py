import math

import numpy as np
import pytest
import torch

from mbv2 import MobileNetV2, speed
from mbv2.cost import count_madds
from mbv2.deploy import export_onnx, fold_batch_norm
from mbv2.mobilenet_v1 import MobileNetV1
from mbv2.torchvision_compat import randomise_batch_norm


def test_our_counts_round_down_to_every_released_checkpoints_printed_multiply_adds():
    # The README prints millions rounded down: 0.35 at 96 is 11.9M, printed 11.
    for (width, resolution), checkpoint in speed.RELEASED_CHECKPOINTS.items():
        ours = count_madds(MobileNetV2(width_mult=width), resolution)
        assert ours // 10**6 == checkpoint.madds_millions, (width, resolution)


def test_table_4_and_the_checkpoint_table_agree_where_they_overlap():
    table = {row.network: row for row in speed.TABLE_4}
    assert table["MobileNetV2"].madds_millions == speed.RELEASED_CHECKPOINTS[1.0, 224].madds_millions
    # The paper's 75 ms and 143 ms against the checkpoints' 73.8 and 138: within 4%.
    assert table["MobileNetV2"].pixel_1_ms == pytest.approx(speed.RELEASED_CHECKPOINTS[1.0, 224].pixel_1_ms, rel=0.04)
    assert table["MobileNetV2 (1.4)"].pixel_1_ms == pytest.approx(speed.RELEASED_CHECKPOINTS[1.4, 224].pixel_1_ms, rel=0.04)


def test_figure_5_grid_has_every_width_at_every_resolution_and_1_4_at_224_only():
    grid = speed.figure_5_grid()
    assert len(grid) == 4 * 5 + 1 and len(set(grid)) == len(grid)
    assert [p for p in grid if p[0] == 1.4] == [(1.4, 224)]
    assert all(point in speed.RELEASED_CHECKPOINTS for point in grid)
    assert speed.figure_5_grid([0.5], [96]) == [(0.5, 96), (1.4, 224)]


def test_fit_latency_recovers_a_line_and_weights_errors_relatively():
    madds = np.array([1e7, 5e7, 1e8, 3e8])
    fit = speed.fit_latency(madds, 0.002 + madds * 3e-11)
    assert fit.overhead == pytest.approx(0.002) and fit.seconds_per_madd == pytest.approx(3e-11)
    assert np.allclose(fit.relative_residuals, 0, atol=1e-9)
    assert fit.madds_per_second == pytest.approx(1 / 3e-11)
    # One point 10% slow: its residual is about +10%, the others stay near 0.
    times = 0.002 + madds * 3e-11
    times[1] *= 1.1
    fit = speed.fit_latency(madds, times)
    assert np.argmax(np.abs(fit.relative_residuals)) == 1
    np.testing.assert_allclose(fit.predict(madds) * (1 + fit.relative_residuals), times)


@pytest.mark.parametrize("madds, seconds, match", [
    ([1.0], [1.0], "at least 2"),
    ([1.0, 2.0], [1.0], "equally long"),
    ([1.0, -2.0], [1.0, 2.0], "positive"),
])
def test_fit_latency_rejects_bad_input(madds, seconds, match):
    with pytest.raises(ValueError, match=match):
        speed.fit_latency(madds, seconds)


def test_latency_grid_times_every_point_in_both_runtimes(tmp_path):
    points = [(0.35, 64), (0.35, 96), (0.5, 64)]
    grid, timings = speed.latency_grid(points, rounds=2, calls=1, workdir=tmp_path)
    assert {(p.runtime, p.width, p.resolution) for p in grid} == {
        (runtime, w, r) for runtime in speed.RUNTIMES for (w, r) in points}
    assert len(timings.names) == 6 and sorted(tmp_path.iterdir()) == [tmp_path / "width-0.35.onnx",
                                                                      tmp_path / "width-0.5.onnx"]
    for p in grid:
        assert p.madds == count_madds(MobileNetV2(width_mult=p.width), p.resolution)
        assert 0 < p.seconds.low <= p.seconds.median <= p.seconds.high
    with pytest.raises(ValueError, match="runtimes must be one of"):
        speed.latency_grid(points, runtimes=["TF-Lite"])
    with pytest.raises(ValueError, match="points"):
        speed.latency_grid([])


def test_layer_times_counts_every_convolution_and_its_multiply_adds():
    model = MobileNetV2(width_mult=0.5)
    layers, total = speed.layer_times(model, torch.randn(1, 3, 96, 96), calls=2)
    kinds = [layer.kind for layer in layers]
    assert kinds.count("full") == 1 and kinds.count("depthwise") == 17 and kinds.count("pointwise") == 16 + 17 + 1
    classifier = model.classifier.linear.weight.numel()
    assert sum(layer.madds for layer in layers) == count_madds(model, 96) - classifier
    assert layers[1].name == "stages.0.0.depthwise" and layers[-1].name == "head"
    assert 0 < sum(layer.seconds for layer in layers) < total
    v1_layers, _ = speed.layer_times(MobileNetV1(), torch.randn(1, 3, 64, 64), calls=1)
    assert [layer.kind for layer in v1_layers] == ["full"] + ["depthwise", "pointwise"] * 13


def test_onnx_layer_times_matches_the_model_layer_by_layer(tmp_path):
    model = randomise_batch_norm(MobileNetV2(width_mult=0.35)).eval()
    path = export_onnx(fold_batch_norm(model), tmp_path / "m.onnx", 64)
    x = torch.randn(1, 3, 64, 64)
    raw, total = speed.onnx_layer_times(path, x, calls=2)
    named, _ = speed.onnx_layer_times(path, x, model=model, calls=2)
    eager, _ = speed.layer_times(model, x, calls=1)
    assert [r.name for r in named] == [r.name for r in eager]
    assert [(r.kind, r.madds) for r in named] == [(r.kind, r.madds) for r in eager]
    # As ONNX Runtime computes them, channel counts are padded to its blocks: never fewer.
    assert all(r.madds >= e.madds for r, e in zip(raw, eager))
    assert 0 < sum(r.seconds for r in raw) <= total
    with pytest.raises(ValueError, match="do not match"):
        speed.onnx_layer_times(path, x, model=MobileNetV1(), calls=1)


def test_conv_kind():
    assert speed.conv_kind((32, 1, 3, 3), 32) == "depthwise"
    assert speed.conv_kind((64, 32, 1, 1), 1) == "pointwise"
    assert speed.conv_kind((32, 3, 3, 3), 1) == "full"
    assert speed.conv_kind((64, 16, 3, 3), 2) == "full"  # a group conv is not depthwise


def test_matmul_flops_is_a_positive_rate_with_its_range():
    rate = speed.matmul_flops(size=128, rounds=2, calls=2)
    assert 0 < rate.low <= rate.median <= rate.high
    assert rate.median > 1e8  # any CPU of this century does 100 MFLOP/s
