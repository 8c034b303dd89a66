"""Hypothesis strategies for genomes: the search space, and arbitrary genomes beyond it (residual blocks included)."""
import random

from hypothesis import strategies as st

from space import Genome, Head, Layer, OPS, RandomTrial, suggest_genome


@st.composite
def layers(draw):
    op = draw(st.sampled_from(sorted(OPS)))
    dilation = 1 if OPS[op].kernel == 1 else draw(st.integers(1, 4))
    return Layer(op, draw(st.integers(1, 40)), stride=draw(st.sampled_from([1, 2])), dilation=dilation,
                 post=draw(st.sampled_from(["bn_relu", "relu_bn"])),
                 dw_post=OPS[op].separable and draw(st.booleans()))


@st.composite
def any_genomes(draw):
    blocks = [draw(st.lists(layers(), min_size=1, max_size=3)) for _ in range(4)]
    head = Head(draw(st.sampled_from(["linear", "conv1x1"])), draw(st.booleans()),
                draw(st.sampled_from([0.0, 0.1, 0.5])))
    residual = tuple(draw(st.lists(st.booleans(), min_size=4, max_size=4)))
    return Genome(blocks, head, num_classes=draw(st.integers(2, 12)), in_channels=draw(st.integers(1, 4)),
                  residual=residual)


space_genomes = st.integers(0, 2**32 - 1).map(lambda seed: suggest_genome(RandomTrial(random.Random(seed))))
genomes = st.one_of(space_genomes, any_genomes())
