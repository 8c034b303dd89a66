"""The search space: a frozen Genome, its exact analysis, the rules, presets and renderers."""
from .analysis import DEFAULT_MAX_PARAMS, DEFAULT_MIN_RF, Analysis, LayerInfo, analyze, check
from .genome import OPS, Genome, GenomeError, Head, Layer
from .layers import GenomeNet, build
from .presets import PRESETS, get_preset
from .rules import Rules
from .searchspace import SPACE_VERSION, RandomTrial, params_from_genome, suggest_genome
from .spec import load_spec

__all__ = ["Genome", "Layer", "Head", "GenomeError", "OPS", "analyze", "check", "Analysis", "LayerInfo",
           "DEFAULT_MAX_PARAMS", "DEFAULT_MIN_RF", "Rules", "build", "GenomeNet", "PRESETS", "get_preset", "suggest_genome",
           "params_from_genome", "RandomTrial", "SPACE_VERSION", "load_spec", "export_code"]


def __getattr__(name: str):
    # export_code pulls in inspect and the module sources; load it on first use only.
    if name == "export_code":
        from .export import export_code
        return export_code
    raise AttributeError(name)
