from lit_ptm.objectives.base import OptimConfig, PretrainObjective
from lit_ptm.objectives.causal_lm import CausalLM
from lit_ptm.objectives.encoder_decoder import BART, MASS, T5, EncoderDecoderLM
from lit_ptm.objectives.glm import GLM
from lit_ptm.objectives.masked_lm import MaskedLM
from lit_ptm.objectives.permutation_lm import MPNet, PermutationLM, XLNet
from lit_ptm.objectives.span_bert import SpanBERT
from lit_ptm.objectives.unilm import TaskMix, UniLM

__all__ = ["BART", "CausalLM", "EncoderDecoderLM", "GLM", "MASS", "MaskedLM", "MPNet", "OptimConfig", "PermutationLM", "PretrainObjective",
           "SpanBERT", "T5", "TaskMix", "UniLM", "XLNet"]
