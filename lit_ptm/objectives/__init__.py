from lit_ptm.objectives.base import OptimConfig, PretrainObjective
from lit_ptm.objectives.causal_lm import CausalLM
from lit_ptm.objectives.encoder_decoder import BART, MASS, T5, EncoderDecoderLM
from lit_ptm.objectives.masked_lm import MaskedLM
from lit_ptm.objectives.span_bert import SpanBERT

__all__ = ["BART", "CausalLM", "EncoderDecoderLM", "MASS", "MaskedLM", "OptimConfig", "PretrainObjective", "SpanBERT", "T5"]
