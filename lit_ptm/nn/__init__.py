from lit_ptm.nn.config import ModelConfig
from lit_ptm.nn.heads import LMHead, PairHead
from lit_ptm.nn.stack import Transformer

__all__ = ["LMHead", "ModelConfig", "PairHead", "Transformer"]
