"""Fine-tuning tasks on any pretrained run: sequence classification / regression (more to come)."""

from lit_ptm.tasks.classify import SequenceClassification
from lit_ptm.tasks.data import FinetuneDataModule

__all__ = ["FinetuneDataModule", "SequenceClassification"]
