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
    seen = []

    def hook(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1]
        seen.append((output.shape[-1], output.numel() * (module.in_channels // module.groups) * k))

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles = [m.register_forward_hook(hook) for m in convs]
    with torch.no_grad():
        model(torch.zeros(1, genome.in_channels, 32, 32))
    for h in handles:
        h.remove()
    a = analyze(genome)
    head_conv = genome.head.kind == "conv1x1"
    body = seen[:-1] if head_conv else seen
    assert sum(m for _, m in body) + a.head_macs == a.macs
    # the last conv of each layer (pointwise for separable ones) gives the layer's output size
    sizes, i = [], 0
    for info in a.layers:
        i += 2 if info.layer.separable else 1
        sizes.append(body[i - 1][0])
    assert sizes == [info.size for info in a.layers]


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
@given(genomes)
def test_analytic_peak_activations_match_forward_hooks(genome):
    assert analyze(genome).peak_activations == measured_peak_activations(genome)


def test_peak_activations_of_a_hand_computed_net():
    from space import Genome, Layer
    g = Genome([[Layer("conv3", 16)], [Layer("dsc3", 8, stride=2)], [Layer("conv3", 8, dilation=2)],
                [Layer("conv1", 8)]])
    # c1: conv 3x32x32 in + 16x32x32 out = 19,456; its BatchNorm 2 x 16,384 = 32,768 is the peak
    assert analyze(g).peak_activations == 2 * 16 * 32 * 32
