import torch
import torch.nn as nn
from hypothesis import given, settings

from space import analyze, build
from strategies import genomes


def measured_rf(genome, size):
    """Extent along one axis of the input pixels with non-zero gradient for the centre C4 output.

    All weights and inputs are positive and BatchNorm is an identity in eval mode, so every ReLU passes
    and no gradient cancels: the non-zero footprint is exactly the receptive field. A 1-pixel-wide input
    keeps it cheap (RF is separable per axis); `size` must be large enough not to clip it.
    """
    model = build(genome, seed=0).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.uniform_(0.5, 1.0)
    x = torch.ones(1, genome.in_channels, size, 1, requires_grad=True)
    y = model.features(x)
    y[0, :, y.shape[2] // 2, 0].sum().backward()
    rows = (x.grad[0].abs().sum(0)[:, 0] > 0).nonzero().flatten()
    return int(rows.max() - rows.min() + 1)


@settings(max_examples=300, deadline=None)
@given(genomes)
def test_analytic_params_equal_built_params(genome):
    model = build(genome)
    assert analyze(genome).params == sum(p.numel() for p in model.parameters() if p.requires_grad)


@settings(max_examples=150, deadline=None)
@given(genomes)
def test_analytic_rf_equals_gradient_footprint(genome):
    a = analyze(genome)
    # large enough that the centre output's footprint stays clear of the zero padding, even when the
    # stride leaves only a few outputs (jump = input pixels between neighbouring outputs)
    assert measured_rf(genome, size=2 * (a.rf + a.layers[-1].jump) + 64) == a.rf


@settings(max_examples=60, deadline=None)
@given(genomes)
def test_analytic_sizes_and_macs_match_forward_hooks(genome):
    model = build(genome).eval()
    seen = {}  # conv name -> (output size, MACs)

    def hook(name):
        def record(module, inputs, output):
            k = module.kernel_size[0] * module.kernel_size[1]
            seen[name] = (output.shape[-1], output.numel() * (module.in_channels // module.groups) * k)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, genome.in_channels, 32, 32))
    for h in handles:
        h.remove()
    a = analyze(genome)
    body = {n: v for n, v in seen.items() if not n.startswith("head.")}
    assert sum(m for _, m in body.values()) + a.head_macs == a.macs
    # the last conv of each layer (pointwise for separable ones) gives the layer's output size
    assert [body[f"{i.name}.{'pw' if i.layer.separable else 'conv'}"][0] for i in a.layers] == [i.size for i in a.layers]
    # every projection shortcut: its size and MACs; identity shortcuts run no conv
    projections = {s.name: s for s in a.shortcuts if s.kind == "projection"}
    assert {n.removesuffix(".conv") for n in body if ".skip" in n} == set(projections)
    for name, s in projections.items():
        assert body[f"{name}.conv"] == (s.size, s.macs)


def test_rf_recurrence_on_a_hand_computed_net():
    from space import Genome, Layer
    g = Genome([[Layer("conv3", 8)], [Layer("conv3", 8, stride=2)], [Layer("dsc3", 8, dilation=2)],
                [Layer("conv1", 8)]])
    # 3, then +2*1 = 5 (jump 2), then +2*2*2 = 13, then 1x1 adds nothing
    assert [i.rf for i in analyze(g).layers] == [3, 5, 13, 13]
    assert [i.jump for i in analyze(g).layers] == [1, 2, 2, 2]


def measured_peak_activations(genome) -> int:
    """Max over the leaf modules of a forward pass of input + output elements, each tensor storage once
    (an in-place ReLU's input is its output; eval-mode Dropout and Identity pass their input through)."""
    model = build(genome).eval()
    peaks = []

    def hook(module, inputs, output):
        storages = {t.untyped_storage().data_ptr(): t.numel() for t in (*inputs, output) if torch.is_tensor(t)}
        peaks.append(sum(storages.values()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(torch.zeros(1, genome.in_channels, 32, 32))
    for h in handles:
        h.remove()
    return max(peaks)


@settings(max_examples=60, deadline=None)
@given(genomes.filter(lambda g: not any(g.residual)))  # hooks see one op at a time, not a block's held input
def test_analytic_peak_activations_match_forward_hooks(genome):
    assert analyze(genome).peak_activations == measured_peak_activations(genome)


def test_peak_activations_of_a_hand_computed_net():
    from space import Genome, Layer
    g = Genome([[Layer("conv3", 16)], [Layer("dsc3", 8, stride=2)], [Layer("conv3", 8, dilation=2)],
                [Layer("conv1", 8)]])
    # c1: conv 3x32x32 in + 16x32x32 out = 19,456; its BatchNorm 2 x 16,384 = 32,768 is the peak
    assert analyze(g).peak_activations == 2 * 16 * 32 * 32


def test_peak_activations_count_the_input_a_residual_block_holds_for_its_shortcut():
    from space import Genome, Layer

    def net(c2_width, residual):
        return Genome([[Layer("conv3", 16)], [Layer("conv3", c2_width)], [Layer("conv3", 8, dilation=2)],
                       [Layer("conv1", 8)]], residual=(False, residual, False, False))
    # identity C2 (16 -> 16): its BatchNorm holds in + out while the block input x waits for the add
    assert analyze(net(16, False)).peak_activations == 2 * 16 * 32 * 32
    assert analyze(net(16, True)).peak_activations == 3 * 16 * 32 * 32
    # projection C2 (16 -> 24): after the body, the shortcut's BN holds the body output, its input and output
    assert analyze(net(24, True)).shortcuts[0].kind == "projection"
    assert analyze(net(24, True)).peak_activations == 3 * 24 * 32 * 32


def _residual(residual, widths=(8, 8, 16, 16), strides=(1, 2, 1, 1)):
    from space import Genome, Layer
    blocks = [[Layer("conv3", widths[0])], [Layer("conv3", widths[1]), Layer("dsc3", widths[1], stride=strides[1])],
              [Layer("dsc3", widths[2], dilation=2)], [Layer("conv3", widths[3], stride=strides[3])]]
    return Genome(blocks, residual=residual)


def test_shortcuts_are_identity_only_when_channels_and_resolution_match():
    g = _residual((True, True, True, True))
    # C1: 3 -> 8 channels; C2: strides; C3: 8 -> 16 channels; C4: 16 -> 16 at stride 1
    assert [s.kind for s in analyze(g).shortcuts] == ["projection", "projection", "projection", "identity"]
    assert [s.stride for s in analyze(g).shortcuts] == [1, 2, 1, 1]
    # projection params: 1x1 conv cin * cout, BN 2 * cout
    assert [s.params for s in analyze(g).shortcuts] == [3 * 8 + 16, 8 * 8 + 16, 8 * 16 + 32, 0]
    plain = _residual((False,) * 4)
    assert analyze(g).params == analyze(plain).params + 40 + 80 + 160
    assert sum(p.numel() for p in build(g).parameters()) == analyze(g).params
    # C2's projection runs on the 16x16 output: 16 * 16 * 8 * 8 MACs
    assert analyze(g).shortcuts[1].macs == 16 * 16 * 64 and analyze(g).macs > analyze(plain).macs


def test_residual_rf_is_the_largest_over_both_paths_and_matches_the_gradient():
    g = _residual((True, True, True, True), strides=(1, 2, 1, 2))
    a = analyze(g)
    # the body dominates: RF as without shortcuts, and the gradient footprint agrees
    assert a.rf == analyze(_residual((False,) * 4, strides=(1, 2, 1, 2))).rf
    assert [s.rf for s in a.shortcuts] == [a.layers[0].rf, a.layers[2].rf, a.layers[3].rf, a.layers[4].rf]
    assert measured_rf(g, size=2 * (a.rf + a.layers[-1].jump) + 64) == a.rf


def test_a_strided_projection_is_a_strided_1x1_conv_and_trains_in_channels_last():
    from space.layers import Projection
    torch.manual_seed(0)
    p = Projection(3, 40, stride=2).to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 31, 31).contiguous(memory_format=torch.channels_last)
    expected = p.bn(torch.nn.functional.conv2d(x.contiguous(), p.conv.weight, stride=2))
    assert torch.allclose(p(x), expected, atol=1e-5) and p(x).shape[-1] == 16  # ceil(31 / 2)
    for _ in range(5):  # the native strided kernel's backward corrupted the heap here (torch 2.13, CPU)
        p(x).sum().backward()
    assert p.conv.weight.grad is not None and torch.isfinite(p.conv.weight.grad).all()
