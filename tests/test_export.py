import importlib.util
import subprocess
import sys

import torch
from hypothesis import given, settings

from space import build, export_code, get_preset
from strategies import genomes


def load_module(path, name="exported"):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@settings(max_examples=40, deadline=None)
@given(genomes)
def test_exported_net_loads_built_weights_strictly_with_identical_outputs(tmp_path_factory, genome):
    path = tmp_path_factory.mktemp("export") / "net.py"
    path.write_text(export_code(genome))
    Net = load_module(path).Net
    model = build(genome, seed=1).eval()
    twin = Net().eval()
    twin.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, genome.in_channels, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))


def test_exported_file_imports_only_torch_and_annotates_layers(tmp_path):
    code = export_code(get_preset("seed003_net"))
    imports = {line.split()[1] for line in code.splitlines() if line.startswith(("import ", "from "))}
    assert imports == {"torch", "torch.nn"}
    assert "RF 55" in code and "84,322" in code
    path = tmp_path / "net.py"
    path.write_text(code)
    # runs on its own, in a fresh interpreter that never sees this project
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert "84,322 parameters" in out.stdout


def test_exported_residual_net_loads_strictly_and_matches(tmp_path):
    from space import Genome, Layer
    g = Genome([[Layer("conv3", 16), Layer("conv3", 16)], [Layer("dsc3", 24, stride=2)],
                [Layer("dsc3", 24, dilation=2), Layer("conv1", 24)], [Layer("conv3", 32, stride=2)]],
               residual=(True, True, True, True))  # projection, strided projection, identity, strided projection
    code = export_code(g)
    assert "Residual(" in code and "skip=Projection(24, 32, stride=2)" in code and "skip=nn.Identity()" in code
    path = tmp_path / "net.py"
    path.write_text(code)
    model, twin = build(g, seed=2).eval(), load_module(path, "exported_residual").Net().eval()
    twin.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert f"{sum(p.numel() for p in model.parameters()):,} parameters" in out.stdout
