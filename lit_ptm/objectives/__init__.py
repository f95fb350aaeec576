from lit_ptm.objectives.base import OptimConfig, PretrainObjective
from lit_ptm.objectives.causal_lm import CausalLM
from lit_ptm.objectives.masked_lm import MaskedLM

__all__ = ["CausalLM", "MaskedLM", "OptimConfig", "PretrainObjective"]
