import math

import pytest
import torch
import torchinfo
from torch import nn
from torchvision.models._utils import _make_divisible as torchvision_make_divisible

from mbv2 import PAPER_TABLE_2, InvertedResidual, MobileNetV2, StageSpec, make_divisible, trace_shapes
from mbv2.model import with_t1_expansion

WIDTHS = [0.35, 0.5, 0.75, 1.0, 1.3, 1.4]


def test_make_divisible_agrees_with_torchvision_over_a_sweep():
    values = [c * w for c in (16, 24, 32, 64, 96, 160, 320, 1280) for w in WIDTHS]
    values += [v / 4 for v in range(1, 400)]
    for divisor in (4, 8, 16):
        for value in values:
            assert make_divisible(value, divisor) == torchvision_make_divisible(value, divisor), (value, divisor)


@pytest.mark.parametrize("value", [3.0, 11.2, 12.0, 20.0, 35.0, 44.8, 100.0, 1000.5])
def test_make_divisible_rule(value):
    result = make_divisible(value)
    assert result % 8 == 0 and result >= 8
    assert result >= 0.9 * value
    # The nearest multiple of 8 unless that is below 8 or more than 10% below the value.
    nearest = 8 * math.floor(value / 8 + 0.5)
    assert result in (nearest, nearest + 8, 8)


@pytest.mark.parametrize("args, match", [
    ((0,), "value must be a finite number > 0"),
    ((-3.0,), "value must be a finite number > 0"),
    ((16, 0), "divisor must be an integer >= 1"),
])
def test_make_divisible_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        make_divisible(*args)


def test_width_1_has_the_channels_of_table_2():
    model = MobileNetV2()
    assert model.stem.conv.out_channels == 32 and model.stem.conv.stride == (2, 2)
    blocks = model.blocks()
    assert len(blocks) == sum(row.n for row in PAPER_TABLE_2) == 17
    rows = [row for row in PAPER_TABLE_2 for _ in range(row.n)]
    firsts = [i == 0 for row in PAPER_TABLE_2 for i in range(row.n)]
    for block, row, first in zip(blocks, rows, firsts):
        assert block.out_channels == row.c
        assert block.expand_ratio == row.t
        assert block.stride == (row.s if first else 1)
    assert model.head.conv.out_channels == 1280
    assert model.classifier.linear.in_features == 1280


def test_head_is_not_shrunk_below_1280():
    assert MobileNetV2(width_mult=0.35).last_channels == 1280
    assert MobileNetV2(width_mult=1.4).last_channels == make_divisible(1280 * 1.4)


@pytest.mark.parametrize("resolution", [32, 96, 224, 225])
def test_any_resolution_from_32_on(resolution):
    model = MobileNetV2(num_classes=10, width_mult=0.35).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, resolution, resolution + 8)).shape == (2, 10)


def test_every_part_sees_the_input_of_table_2():
    # The "input" column of the paper's Table 2 at 224x224, as (H = W, channels).
    table_2_inputs = [(224, 3), (112, 32), (112, 16), (56, 24), (28, 32), (14, 64), (14, 96),
                      (7, 160), (7, 320), (7, 1280)]
    model = MobileNetV2()
    parts = ["stem"] + [f"stages.{i}" for i in range(7)] + ["head", "pool"]
    records = trace_shapes(model, torch.randn(1, 3, 224, 224), parts)
    assert [r.name for r in records] == parts
    assert [r.input_shape for r in records] == [(1, c, h, h) for h, c in table_2_inputs]
    assert records[-1].output_shape == (1, 1280, 1, 1)


def test_multiply_adds_by_torchinfo_match_torchvision_figure():
    stats = torchinfo.summary(MobileNetV2(), input_size=(1, 3, 224, 224), verbose=0)
    assert stats.total_mult_adds == pytest.approx(300.8e6, abs=0.1e6)


def test_training_mode_backward_gives_finite_gradients_everywhere():
    model = MobileNetV2(num_classes=10, width_mult=0.5).train()
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_custom_stages_and_projection_activation():
    stages = [StageSpec(1, 8, 1, 1), StageSpec(4, 16, 2, 2)]
    model = MobileNetV2(num_classes=3, width_mult=1.0, stages=stages, projection_activation=nn.ReLU6)
    assert model.min_input_size == 4
    assert len(model.blocks()) == 3
    assert all(isinstance(b.projection.act, nn.ReLU6) for b in model.blocks())
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(width_mult=0), "width_mult must be a finite number > 0, got 0"),
    (dict(width_mult=-1.0), "width_mult must be a finite number > 0"),
    (dict(width_mult="1.0"), "width_mult must be a finite number > 0, got '1.0'"),
    (dict(width_mult=float("inf")), "width_mult must be a finite number > 0"),
    (dict(num_classes=0), "num_classes must be an integer >= 1, got 0"),
    (dict(num_classes=10.0), "num_classes must be an integer >= 1, got 10.0"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (dict(dropout=-0.1), "dropout must be a finite number >= 0"),
    (dict(stages=[]), "stages must be a non-empty sequence"),
    (dict(stages=[(6, 16, 1, 3)]), r"stages\[0\].s must be one of 1, 2, got 3"),
    (dict(stages=[(6, 16, 0, 1)]), r"stages\[0\].n must be an integer >= 1"),
    (dict(stages=[(6, 16, 1)]), r"stages\[0\] must be a \(t, c, n, s\) row"),
    (dict(stages=[(0, 16, 1, 1)]), r"stages\[0\].t must be a finite number > 0, got 0"),
    (dict(shortcut="classic"), "shortcut must be one of 'bottleneck', 'expansion', 'none'"),
])
def test_model_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MobileNetV2(**kwargs)


@pytest.mark.parametrize("shape, match", [
    ((3, 224, 224), r"input must be a 4-D tensor \(N, 3, H, W\), got 3-D"),
    ((1, 1, 224, 224), "input must have 3 channels"),
    ((1, 224, 224, 3), "input must have 3 channels"),
    ((1, 3, 31, 224), r"input height and width must be at least 32 pixels, got \(31, 224\)"),
])
def test_forward_rejects_bad_inputs(shape, match):
    with pytest.raises(ValueError, match=match):
        MobileNetV2()(torch.randn(shape))


def test_forward_rejects_non_tensors():
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got ndarray"):
        MobileNetV2()(torch.randn(1, 3, 32, 32).numpy())


def activations(model):
    return [type(m) for m in model.modules() if type(m).__module__ == "torch.nn.modules.activation"]


def test_activations_are_relu6_in_v2_and_relu_in_v1():
    from mbv2.mobilenet_v1 import MobileNetV1

    v2 = MobileNetV2()
    convs = sum(isinstance(m, nn.Conv2d) for m in v2.modules())
    # ReLU6 after the stem, the head, every expansion and every depthwise conv; the 17
    # projections are linear (the first block, t = 1, has no expansion).
    assert activations(v2) == [nn.ReLU6] * 35
    assert convs == 35 + len(v2.blocks())
    v1 = MobileNetV1()
    assert activations(v1) == [nn.ReLU] * (1 + 2 * 13)
    variant = with_t1_expansion(v2)
    assert isinstance(variant.stages[0][0].expansion.act, nn.ReLU6)


def test_blocks_are_inverted_residuals_in_order():
    blocks = MobileNetV2().blocks()
    assert all(isinstance(b, InvertedResidual) for b in blocks)
    assert [b.use_shortcut for b in blocks].count(True) == 10


def test_with_t1_expansion_adds_exactly_one_1x1_conv_with_batch_norm():
    import torchinfo

    from mbv2.model import with_t1_expansion

    model = MobileNetV2()
    variant = with_t1_expansion(model)
    added = 32 * 32 + 2 * 32  # the conv's weights, then batch norm's scale and shift
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(variant) - count(model) == added
    assert count(variant) == 3_505_960  # the walkthrough's published count
    stats = torchinfo.summary(variant, input_size=(1, 3, 224, 224), verbose=0)
    assert round(stats.total_mult_adds / 1e6, 2) == 313.65
    assert isinstance(model.stages[0][0].expansion, torch.nn.Identity)  # the original is untouched
    assert variant.stages[0][0].expansion.conv.kernel_size == (1, 1)
    assert variant(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(TypeError, match="model must be an mbv2.MobileNetV2"):
        with_t1_expansion(torch.nn.Identity())


# --- shortcut placements (Figure 6b), t < 1 (Section 3.4), paired initialisation ----------

SHORTCUT_NAMES = ("bottleneck", "expansion", "none")


def test_default_shortcut_is_todays_model():
    torch.manual_seed(0)
    default = MobileNetV2(num_classes=10, width_mult=0.5).eval()
    torch.manual_seed(0)
    explicit = MobileNetV2(num_classes=10, width_mult=0.5, shortcut="bottleneck").eval()
    assert list(default.state_dict()) == list(explicit.state_dict())
    for a, b in zip(default.state_dict().values(), explicit.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(default(x), explicit(x))
    assert default.shortcut == "bottleneck" and default.expansion_links == 0
    assert [b.use_shortcut for b in default.blocks()] == [
        b.stride == 1 and b.in_channels == b.out_channels for b in default.blocks()]


@pytest.mark.parametrize("output_stride", [32, 16, 8])
@pytest.mark.parametrize("width", [0.35, 1.0])
def test_expansion_shortcuts_sit_where_the_papers_shortcuts_are(width, output_stride):
    paper = MobileNetV2(width_mult=width, output_stride=output_stride)
    classic = MobileNetV2(width_mult=width, shortcut="expansion", output_stride=output_stride)
    assert classic.expansion_links == sum(b.use_shortcut for b in paper.blocks()) == 10
    assert [b.passes_expansion for b in classic.blocks()] == [b.use_shortcut for b in paper.blocks()]
    assert not any(b.use_shortcut for b in classic.blocks())


@pytest.mark.parametrize("shortcut", SHORTCUT_NAMES)
def test_every_shortcut_has_the_same_shapes_parameters_and_trains(shortcut):
    from mbv2.cost import count_params

    torch.manual_seed(0)
    model = MobileNetV2(num_classes=10, width_mult=0.35, shortcut=shortcut).train()
    assert count_params(model) == sum(p.numel() for p in model.parameters()) == count_params(
        MobileNetV2(num_classes=10, width_mult=0.35))
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 10)
    out.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # The maps extract() returns are tensors for every placement.
    maps = model.eval().extract(x, ["layer_5", "layer_6/expansion_output", "layer_19"])
    assert [m.shape[1] for m in maps.values()] == [16, 96, 1280]


def test_the_three_placements_compute_different_functions():
    torch.manual_seed(0)
    outputs = []
    x = torch.randn(2, 3, 32, 32)
    for shortcut in SHORTCUT_NAMES:
        model = MobileNetV2(num_classes=10, width_mult=0.35, shortcut=shortcut)
        model.reset_parameters(seed=0)
        outputs.append(model.eval().stages(model.stem(x)))
    for i in range(3):
        for j in range(i):
            assert not torch.allclose(outputs[i], outputs[j])


@pytest.mark.parametrize("t", [0.25, 0.5, 2])
def test_expansion_below_1_builds_the_classic_bottleneck(t):
    stages = [StageSpec(1, 16, 1, 1), StageSpec(t, 24, 2, 2), StageSpec(t, 32, 2, 2)]
    model = MobileNetV2(num_classes=10, stages=stages)
    for block in model.blocks()[1:]:
        assert block.hidden_channels == max(1, round(block.in_channels * t))
        assert block.expansion.conv.out_channels == block.hidden_channels
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_reset_parameters_with_a_seed_pairs_modules_of_the_same_name_and_shape():
    def build(seed, **kwargs):
        model = MobileNetV2(num_classes=10, width_mult=0.35, **kwargs)
        model.reset_parameters(seed=seed)
        return model.state_dict()

    base = build(3)
    for other in (build(3, shortcut="expansion"), build(3, shortcut="none"),
                  build(3, projection_activation=nn.ReLU6)):
        assert all(torch.equal(base[k], other[k]) for k in base)
    stages = [StageSpec(row.t if row.t == 1 else 4, row.c, row.n, row.s) for row in PAPER_TABLE_2]
    t4 = build(3, stages=stages)
    same = [k for k in base if base[k].shape == t4[k].shape and torch.equal(base[k], t4[k])]
    for key in ("stem.conv.weight", "stages.0.0.depthwise.conv.weight", "head.conv.weight",
                "classifier.linear.weight"):
        assert key in same
    assert not torch.equal(base["stages.1.0.projection.conv.weight"][:, :64],
                           t4["stages.1.0.projection.conv.weight"])
    assert not torch.equal(base["stem.conv.weight"], build(4)["stem.conv.weight"])
    # The distribution is the default one's: He-normal (fan-out) for the convolutions.
    w = base["stages.3.0.expansion.conv.weight"]
    assert w.std().item() == pytest.approx((2 / w.shape[0]) ** 0.5, rel=0.1)
