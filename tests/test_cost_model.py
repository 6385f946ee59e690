"""Model-level counts (mbv2.cost.count_params, count_madds, cost_table) and Table 2's rows
(mbv2.model.table_2_rows), checked against torchinfo, the model's own tensors and a traced
forward pass."""

import pytest
import torch
import torchinfo
from torch import nn

from mbv2 import MobileNetV2, StageSpec, trace_shapes
from mbv2.cost import count_madds, count_params, cost_table
from mbv2.model import table_2_rows

WIDTHS = [0.35, 0.5, 0.75, 1.0, 1.3, 1.4]
RESOLUTIONS = [96, 128, 160, 192, 224]


def batch_norm_channels(model):
    return sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.fixture(scope="module", params=WIDTHS, ids=lambda w: f"width{w}")
def model(request):
    return MobileNetV2(width_mult=request.param).eval()


def test_parameters_equal_the_models_tensors_and_torchinfo(model):
    stats = torchinfo.summary(model, input_size=(1, 3, 96, 96), verbose=0)
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    assert count_params(model) == stats.total_params


def test_torchvision_parameter_counts():
    # torchvision's mobilenet_v2 at 1000 classes (FACTS: 1,677,128 ... 6,108,776).
    from torchvision.models import mobilenet_v2

    for width in (0.35, 1.0, 1.4):
        reference = mobilenet_v2(width_mult=width)
        expected = sum(p.numel() for p in reference.parameters())
        assert count_params(MobileNetV2(width_mult=width)) == expected
    assert count_params(MobileNetV2()) == 3_504_872


def test_multiply_adds_agree_with_torchinfo_at_every_resolution(model):
    linear = model.classifier.linear
    bn_params = 2 * batch_norm_channels(model)
    for resolution in RESOLUTIONS:
        stats = torchinfo.summary(model, input_size=(1, 3, resolution, resolution), verbose=0)
        ours = count_madds(model, resolution)
        # Within 0.2% of torchinfo's total ...
        assert ours == pytest.approx(stats.total_mult_adds, rel=2e-3)
        # ... and exactly its count once batch norm and the classifier's bias are removed,
        assert stats.total_mult_adds == ours + bn_params + linear.out_features
        # ... which is also exactly torchinfo's Conv2d and Linear layers, bias excluded.
        layers = [s for s in stats.summary_list if s.class_name in ("Conv2d", "Linear")]
        assert sum(s.macs for s in layers) - linear.out_features == ours


def test_paper_headline_numbers_at_width_1():
    model = MobileNetV2()
    # Table 4: 300M multiply-adds and 3.4M parameters (3.47M without batch norm).
    assert count_madds(model) == pytest.approx(300e6, rel=5e-3)
    assert count_params(model) - 2 * batch_norm_channels(model) == pytest.approx(3.47e6, abs=5e3)
    # The classifier costs one multiply-add per weight: 1280 per class.
    assert count_madds(model) - count_madds(MobileNetV2(num_classes=1)) == 1280 * 999
    # Doubling the side quadruples every feature map (all but the classifier's 1.28M).
    assert count_madds(model, 448) - 1280 * 1000 == 4 * (count_madds(model, 224) - 1280 * 1000)


def test_cost_table_rows_match_each_module_and_the_traced_shapes():
    model = MobileNetV2(width_mult=0.75, num_classes=10)
    rows = cost_table(model, 160)
    names = [row.name for row in rows]
    assert names == ["stem", *[f"stages.{s}.{b}" for s, stage in enumerate(model.stages)
                               for b in range(len(stage))], "head", "pool", "classifier"]
    records = trace_shapes(model, torch.randn(1, 3, 160, 160), names)
    for row, record in zip(rows, records):
        module = model.get_submodule(row.name)
        assert row.params == sum(p.numel() for p in module.parameters()), row.name
        assert row.output_shape == record.output_shape[1:], row.name
        if row.name != "pool":
            stats = torchinfo.summary(module, input_size=record.input_shape, verbose=0)
            convs = [s for s in stats.summary_list if s.class_name in ("Conv2d", "Linear")]
            bias = module.linear.out_features if row.name == "classifier" else 0
            assert row.madds == sum(s.macs for s in convs) - bias, row.name
    assert sum(row.madds for row in rows) == count_madds(model, 160)


def test_counts_follow_custom_stages_and_non_integer_expansion():
    model = MobileNetV2(num_classes=7, stages=[StageSpec(1, 8, 1, 1), StageSpec(4.5, 16, 2, 2)])
    stats = torchinfo.summary(model, input_size=(1, 3, 40, 40), verbose=0)
    assert count_params(model) == stats.total_params
    assert count_madds(model, 40) == stats.total_mult_adds - 2 * batch_norm_channels(model) - 7


# The paper's Table 2 (input 224x224x3): input (channels, side), operator, t, c, n, s.
PAPER_TABLE_2_ROWS = [
    ((3, 224), "conv2d 3×3", None, 32, 1, 2),
    ((32, 112), "bottleneck", 1, 16, 1, 1),
    ((16, 112), "bottleneck", 6, 24, 2, 2),
    ((24, 56), "bottleneck", 6, 32, 3, 2),
    ((32, 28), "bottleneck", 6, 64, 4, 2),
    ((64, 14), "bottleneck", 6, 96, 3, 1),
    ((96, 14), "bottleneck", 6, 160, 3, 2),
    ((160, 7), "bottleneck", 6, 320, 1, 1),
    ((320, 7), "conv2d 1×1", None, 1280, 1, 1),
    ((1280, 7), "avgpool 7×7", None, None, 1, None),
    ((1280, 1), "conv2d 1×1", None, 1000, None, None),
]


def test_table_2_rows_are_the_papers_table_2_at_224():
    rows = table_2_rows(MobileNetV2(), 224)
    got = [((r.input_shape[0], r.input_shape[1]), r.operator, r.t, r.c, r.n, r.s) for r in rows]
    assert got == PAPER_TABLE_2_ROWS
    assert all(r.input_shape[1] == r.input_shape[2] for r in rows)


@pytest.mark.parametrize("resolution", RESOLUTIONS + [32, 100])
def test_table_2_input_column_is_what_each_part_receives(model, resolution):
    rows = table_2_rows(model, resolution)
    parts = ["stem", *[f"stages.{i}" for i in range(len(model.stages))], "head", "pool",
             "classifier.linear"]
    records = trace_shapes(model, torch.randn(1, 3, resolution, resolution), parts)
    traced = [r.input_shape[1:] for r in records]
    traced[-1] = (*traced[-1], 1, 1)  # the linear layer sees the flattened 1x1 map
    assert [r.input_shape for r in rows] == traced
    assert [r.c for r in rows[1:8]] == [stage[-1].out_channels for stage in model.stages]
    assert rows[8].c == model.last_channels == records[-1].input_shape[1]


@pytest.mark.parametrize("call, error, match", [
    (lambda: count_params(nn.Linear(2, 2)), TypeError, "model must be an mbv2.MobileNetV2, got Linear"),
    (lambda: count_madds(MobileNetV2(), 31), ValueError, "resolution must be at least 32 pixels"),
    (lambda: count_madds(MobileNetV2(), 224.0), ValueError, "resolution must be an integer >= 1"),
    (lambda: cost_table(MobileNetV2(), 0), ValueError, "resolution must be an integer >= 1"),
    (lambda: cost_table("model"), TypeError, "model must be an mbv2.MobileNetV2, got str"),
    (lambda: table_2_rows(MobileNetV2(), 16), ValueError, "resolution must be at least 32"),
    (lambda: table_2_rows(None), TypeError, "model must be an mbv2.MobileNetV2, got NoneType"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
