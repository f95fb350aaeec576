from lit_ptm.nn.attention import Attention, KVCache
from lit_ptm.nn.config import ModelConfig
from lit_ptm.nn.heads import LMHead, PairHead, SpanBoundaryHead
from lit_ptm.nn.mask import AttentionMask
from lit_ptm.nn.stack import Embeddings, StackOutput, Transformer

__all__ = ["Attention", "AttentionMask", "Embeddings", "KVCache", "LMHead", "ModelConfig", "PairHead", "SpanBoundaryHead", "StackOutput", "Transformer"]
