"""The search space: a frozen Genome, its exact analysis, the rules, presets and renderers."""
from .analysis import Analysis, LayerInfo, analyze
from .genome import OPS, Genome, GenomeError, Head, Layer
from .layers import GenomeNet, build
from .presets import PRESETS, get_preset
from .rules import DEFAULT_MAX_PARAMS, DEFAULT_MIN_RF, Rules, RulesError, check, constraint_values
from .searchspace import (CONSTRUCTION_VERSION, SPACE_VERSION, Construction, RandomTrial, check_satisfiable,
                          construct, params_from_genome, random_rejection_rate, suggest_genome)
from .cli import load_spec

__all__ = ["Genome", "Layer", "Head", "GenomeError", "OPS", "analyze", "check", "Analysis", "LayerInfo",
           "DEFAULT_MAX_PARAMS", "DEFAULT_MIN_RF", "build", "GenomeNet", "PRESETS", "get_preset", "suggest_genome",
           "params_from_genome", "RandomTrial", "SPACE_VERSION", "load_spec", "export_code", "Rules", "construct",
           "Construction", "CONSTRUCTION_VERSION", "RulesError", "constraint_values", "check_satisfiable",
           "random_rejection_rate"]


def __getattr__(name: str):
    if name == "export_code":
        # space.export is also a command (python -m space.export): imported here up front, runpy would warn "found
        # in sys.modules ... prior to execution" and run it twice. So export_code is a lazy attribute, on purpose.
        from .export import export_code
        return export_code
    raise AttributeError(name)
