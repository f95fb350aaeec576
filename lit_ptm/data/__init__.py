from lit_ptm.data.datamodule import PretrainDataModule

__all__ = ["PretrainDataModule"]
