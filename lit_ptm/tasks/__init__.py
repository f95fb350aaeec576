"""Fine-tuning tasks on any pretrained run: sequence classification / regression, token classification,
extractive question answering."""

from lit_ptm.tasks.classify import SequenceClassification
from lit_ptm.tasks.data import FinetuneDataModule
from lit_ptm.tasks.qa import ExtractiveQA
from lit_ptm.tasks.tag import TokenClassification

__all__ = ["ExtractiveQA", "FinetuneDataModule", "SequenceClassification", "TokenClassification"]
