"""Fine-tuning tasks on any pretrained run: sequence classification / regression, token classification,
extractive question answering, sequence-to-sequence generation."""

from lit_ptm.tasks.classify import SequenceClassification
from lit_ptm.tasks.data import FinetuneDataModule
from lit_ptm.tasks.qa import ExtractiveQA
from lit_ptm.tasks.seq2seq import Seq2Seq
from lit_ptm.tasks.tag import TokenClassification

__all__ = ["ExtractiveQA", "FinetuneDataModule", "Seq2Seq", "SequenceClassification", "TokenClassification"]
