import pytest
import torch
from torch import nn

from mbv2 import InvertedResidual, MobileNetV2
from mbv2.memory import SplitInvertedResidual, split_forward, split_model, valid_pieces
from mbv2.torchvision_compat import randomise_batch_norm as randomise


@pytest.mark.parametrize("in_c, out_c, stride, ratio", [
    (24, 24, 1, 6),   # shortcut
    (24, 32, 2, 6),   # stride 2, no shortcut
    (32, 32, 1, 4),   # shortcut, another ratio
    (16, 24, 1, 6),   # stride 1 without shortcut (widths differ)
    (32, 16, 1, 1),   # t = 1 block: no expansion layer
])
def test_split_equals_the_block_for_every_divisor(in_c, out_c, stride, ratio):
    block = randomise(InvertedResidual(in_c, out_c, stride, ratio))
    x = torch.randn(2, in_c, 15, 15)
    n = block.hidden_channels
    with torch.no_grad():
        reference = block(x)
        for t in [d for d in (1, 2, 3, 4, 6, n // 2, n) if n % d == 0]:  # t = 1 to t = n
            assert torch.allclose(split_forward(block, x, t), reference, atol=1e-5, rtol=1e-4), t


def test_split_of_a_trained_block_and_of_the_ablation_variant():
    from mbv2.pretrained import load_pretrained

    try:
        model = load_pretrained()
    except Exception as error:  # pragma: no cover - the weights are installed by make test
        pytest.skip(f"trained weights not installed: {error}")
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        inner = model.stem(x)
        for i, block in enumerate(model.blocks()):
            for t in (2, 3) if i else (2, block.hidden_channels):
                assert torch.allclose(split_forward(block, inner, t), block(inner), atol=1e-4, rtol=1e-4)
            inner = block(inner)
    relu_after = randomise(InvertedResidual(16, 16, 1, 6, projection_activation=nn.ReLU6))
    y = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        assert torch.allclose(split_forward(relu_after, y, 3), relu_after(y), atol=1e-5)


def test_split_model_equals_the_model_and_keeps_its_parameters():
    model = randomise(MobileNetV2(width_mult=0.5))
    x = torch.randn(2, 3, 64, 64)
    assert valid_pieces(model)[:4] == [1, 2, 3, 4]
    with torch.no_grad():
        reference = model(x)
        for t in (2, 3, 6):
            split = split_model(model, t)
            assert torch.allclose(split(x), reference, atol=1e-4, rtol=1e-4)
            assert split.state_dict().keys() == model.state_dict().keys()
            blocks = split.blocks()
            assert not isinstance(blocks[0], SplitInvertedResidual)  # t = 1 block left whole
            assert all(isinstance(b, SplitInvertedResidual) and b.pieces == t for b in blocks[1:])
    assert type(model.blocks()[1]) is InvertedResidual  # the original is unchanged
    assert "pieces=3" in repr(split_model(model, 3).blocks()[1])


def test_the_split_keeps_only_one_slice_alive():
    # The largest inner tensor allocated during a split block is n/t channels wide.
    block = randomise(InvertedResidual(24, 24, 1, 6))
    x = torch.randn(1, 24, 10, 10)
    widths = []

    def record(module, inputs, output):
        widths.append(output.shape[1])

    handle = block.projection.bn.register_forward_hook(record)
    with torch.no_grad():
        block(x)
    handle.remove()
    assert widths == [24]
    seen = []
    original = torch.nn.functional.conv2d

    def spy(x, weight, *args, **kwargs):
        out = original(x, weight, *args, **kwargs)
        seen.append(out.shape[1])
        return out

    torch.nn.functional.conv2d = spy
    try:
        with torch.no_grad():
            split_forward(block, x, 6)
    finally:
        torch.nn.functional.conv2d = original
    assert max(seen) == 24 and sorted(set(seen)) == [24]  # 144 / 6 inner channels, 24 outputs
    assert len(seen) == 3 * 6


@pytest.mark.parametrize("call, error, match", [
    (lambda b, x: split_forward(b, x, 5), ValueError, "t must divide the block's inner width 144, got t=5; possible values: 1, 2, 3, 4, 6"),
    (lambda b, x: split_forward(b, x, 0), ValueError, "t must be an integer >= 1"),
    (lambda b, x: split_forward(nn.Conv2d(24, 24, 1), x, 2), TypeError, "block must be an mbv2.InvertedResidual"),
    (lambda b, x: split_forward(b.train(), x, 2), ValueError, "block must be in eval mode"),
    (lambda b, x: split_forward(b, x[:, :8], 2), ValueError, r"x must be a tensor of shape \(N, 24, H, W\)"),
    (lambda b, x: split_model(MobileNetV2(), 5), ValueError, "t must divide the inner width of every expanding block"),
    (lambda b, x: split_model(b, 2), TypeError, "model must be an mbv2.MobileNetV2"),
])
def test_bad_arguments(call, error, match):
    block = InvertedResidual(24, 24, 1, 6).eval()
    with pytest.raises(error, match=match):
        call(block, torch.randn(1, 24, 8, 8))


def test_split_of_a_folded_model():
    from mbv2.deploy import fold_batch_norm

    folded = fold_batch_norm(randomise(MobileNetV2(width_mult=0.35)))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(split_model(folded, 4)(x), folded(x), rtol=1e-4, atol=1e-4)


# --- the memory model ------------------------------------------------------------------

from mbv2.memory import Operation, operations, peak_values, table_3  # noqa: E402
from mbv2.mobilenet_v1 import MobileNetV1  # noqa: E402


def test_block_operations_by_hand():
    ops = {op.name: op for op in operations(MobileNetV2(), 224)}
    # stages.1.0: 16 channels at 112² in, 24 at 56² out, 96 inner channels at 112² and 56².
    assert ops["stages.1.0"] == Operation("stages.1.0", 16 * 112**2, 24 * 56**2, 96 * (112**2 + 56**2))
    # The t = 1 block has no expansion: its only inner tensor is the depthwise output.
    assert ops["stages.0.0"].scratch == 32 * 112**2
    assert ops["stem"] == Operation("stem", 3 * 224**2, 32 * 112**2)
    assert ops["pool"] == Operation("pool", 1280 * 49, 1280)
    split = {op.name: op for op in operations(MobileNetV2(), 224, pieces=6)}
    assert split["stages.1.0"].scratch == 16 * (112**2 + 56**2)  # 96 / 6 channels at a time
    assert split["stages.0.0"] == ops["stages.0.0"]  # left whole, as split_model does


def test_layer_operations_keep_the_shortcut_input_alive():
    ops = {op.name: op for op in operations(MobileNetV2(), 224, granularity="layer")}
    # stages.1.1: 24 -> 144 -> 24 at 56², with a shortcut.
    x = 24 * 56**2
    assert ops["stages.1.1.expansion"] == Operation("stages.1.1.expansion", x, 6 * x)
    assert ops["stages.1.1.depthwise"] == Operation("stages.1.1.depthwise", 6 * x, 6 * x, kept=x)
    assert ops["stages.1.1.projection"] == Operation("stages.1.1.projection", 6 * x, x, kept=x)
    assert ops["stages.1.1.add"] == Operation("stages.1.1.add", 2 * x, x)
    assert "stages.1.0.add" not in ops  # stride 2: no shortcut


def test_peaks():
    # MobileNetV1's largest layer: the 32 -> 64 pointwise conv at 112².
    assert peak_values(MobileNetV1(), granularity="layer") == Operation(
        "units.0.pointwise", 32 * 112**2, 64 * 112**2)
    v2 = MobileNetV2()
    assert peak_values(v2).name == "stages.1.0"
    totals = [peak_values(v2, pieces=t).total for t in (1, 2, 3, 6, 48)]
    assert totals == sorted(totals, reverse=True) and totals[-1] == (32 + 16 + 32) * 112**2


def test_table_3_channels():
    # MobileNetV1 equals the paper's printed column (both versions of Table 3 agree on it).
    assert [(r.side, r.channels) for r in table_3(MobileNetV1())] == [
        (112, 64), (56, 128), (28, 256), (14, 512), (7, 1024), (1, 1024)]
    rows = table_3(MobileNetV2(), first_layer_trick=True)
    # The largest tensor between blocks at each side (the head's 1,280 channels at 7²).
    assert [(r.side, r.channels) for r in rows] == [
        (112, 16), (56, 24), (28, 32), (14, 96), (7, 1280), (1, 1280)]
    assert rows[0].values == 16 * 112**2
    assert table_3(MobileNetV2())[0].channels == 32  # the stem output, without the trick


@pytest.mark.parametrize("call, error, match", [
    (lambda: operations(nn.Linear(2, 2)), TypeError, "model must be an mbv2.MobileNetV2 or MobileNetV1"),
    (lambda: operations(MobileNetV2(), granularity="op"), ValueError, "granularity must be one of 'block', 'layer'"),
    (lambda: operations(MobileNetV2(), pieces=5), ValueError, "pieces must be one of"),
    (lambda: operations(MobileNetV2(), 0), ValueError, "resolution must be an integer >= 1"),
])
def test_memory_model_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
