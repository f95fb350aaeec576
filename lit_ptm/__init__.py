"""lit_ptm: pre-trained language models (GPT, BERT, RoBERTa, ...) on one Lightning stack."""

__version__ = "0.1.0"
