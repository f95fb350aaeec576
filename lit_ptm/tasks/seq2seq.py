"""Sequence-to-sequence fine-tuning (summarisation, translation, any text -> text) on an encoder-decoder
run (T5, BART, MASS), a causal one (GPT), a GLM or a UniLM run.

Encoder-decoder: the source is the encoder's input and the target the decoder's, both laid out as the
run's objective laid out its texts (``frame_source`` / ``frame_target``: T5 ``text [EOS]``, BART and
MASS ``[CLS] text [SEP]``); the decoder is fed its start token and the target shifted right, and the
encoder, the decoder and the LM head all continue from the run. Causal: one sequence
``source [SEP] target [EOS]`` (GPT's tokenizers have no [SEP]: ``[EOS]`` separates), read causally, the
loss on the target tokens only; generation continues ``source [SEP]``. GLM: as its [gMASK] blanks,
``[CLS] source [gMASK] [SEP]`` is Part A (bidirectional), ``[SOP] target`` Part B predicting ``target
[EOP]`` (causal), at the blank's position with block positions 1..; generation fills the blank.
UniLM: as its seq2seq sub-task, ``[CLS] source [SEP] target [SEP]`` with segments 4 / 5, the source
bidirectional (a prefix that never sees the target), the target causal; a share of the target's tokens
(``target_mask_probability``) is masked and predicted at its [MASK] (a cloze task, as UniLM fine-tuned);
generation writes the target one [MASK] slot at a time, up to [SEP].
"""

from __future__ import annotations

from functools import cached_property

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.text import BLEUScore, ROUGEScore

from lit_ptm import objectives
from lit_ptm.callbacks import CheckpointMismatchError
from lit_ptm.data.collate.common import pad_windows, sample_seed
from lit_ptm.data.collate.unilm import SEGMENTS
from lit_ptm.errors import ConfigError
from lit_ptm.generate import BlankFiller, CausalModel, EncoderDecoderModel, GenerationConfig, Generator, layout_ids
from lit_ptm.nn import AttentionMask, LMHead, ModelConfig, Transformer
from lit_ptm.objectives.base import OptimConfig
from lit_ptm.objectives.encoder_decoder import DecoderStart, EncoderDecoderLM
from lit_ptm.objectives.unilm import cloze_reader
from lit_ptm.tasks.base import FINETUNE_OPTIM, FinetuneTask
from lit_ptm.tasks.demo import write_summary_task
from lit_ptm.tasks.features import IGNORE
from lit_ptm.tasks.records import field

ENCODER_DECODERS = tuple(name for name in objectives.__all__
                         if isinstance(getattr(objectives, name), type) and issubclass(getattr(objectives, name), EncoderDecoderLM))
OWN_LAYOUTS = ("GLM", "UniLM")  # bidirectional stacks pretrained to write text: each fine-tunes in its own layout


class Seq2Seq(FinetuneTask):
    """Text to text: records with a source and a target (``data.source_field`` / ``data.target_field``).

    Training is teacher-forced cross-entropy on the target tokens (mean over tokens). Validation and
    test also generate each target (greedy; ``num_beams`` > 1: beam search with ``length_penalty``;
    at most ``max_new_tokens``, default ``max_target_length``) and log ROUGE-L (F-measure), BLEU
    (4-gram, torchmetrics) and exact match, fractions in [0, 1], each against the reference as the
    tokenizer writes it back (its decoding of the whole target: lower case for an uncased WordPiece,
    say), so that normalisation is not counted as an error but truncation is. ``predict`` writes the
    generated text per record. For layer-wise decay the decoder and LM head count as the head.

    Args (beyond FinetuneTask's):
        max_target_length: target tokens, its framing included (longer targets are truncated); a causal
            model keeps this much room after the source, whose tokens are cut to fit ``data.max_length``.
        num_beams, max_new_tokens, length_penalty: generation at validation, test and predict. Beam search
            runs one source at a time (greedy and sampling run the batch at once): slower in evaluation.
        objective: the encoder-decoder objective whose layout and decoder start are used (T5, BART,
            MASS, EncoderDecoderLM), or GLM's blank layout, or UniLM's seq2seq layout; None: the pretrained run's.
            Without a pretrained run and with ``causal`` unset: a fresh encoder-decoder in EncoderDecoderLM's layout.
        decoder_start: the decoder's start token (a tokenizer role); None: as the run recorded it, else
            the objective's default (T5: pad, BART: eos, MASS: bos).
        target_mask_probability: UniLM's layout only: the share of each target's tokens (its final [SEP]
            included; at least one) masked in training and predicted at their [MASK]. Default 0.7, UniLM's for
            abstractive summarisation; the others stay in view (teacher forcing), the source is never masked.

    A GLM run writes the target into a final [gMASK] of the source, a UniLM run reads source and target as
    its seq2seq sub-task (see the module's docstring). An encoder-only run (BERT, RoBERTa, ELECTRA) has no
    decoder and is refused.
    """

    def __init__(
        self, pretrained: str | None = None, config: ModelConfig = ModelConfig(), optim: OptimConfig = FINETUNE_OPTIM,
        layer_decay: float = 1.0, freeze_embeddings: bool = False, predictions_file: str | None = None,
        from_scratch: bool = False, causal: bool | None = None,
        max_target_length: int = 64, num_beams: int = 1, max_new_tokens: int | None = None, length_penalty: float = 1.0,
        objective: str | None = None, decoder_start: DecoderStart | None = None, target_mask_probability: float = 0.7,
    ):
        super().__init__(pretrained, config, optim, layer_decay, freeze_embeddings, predictions_file, from_scratch, causal)
        if max_target_length < 2:
            raise ConfigError(f"model.max_target_length={max_target_length} must be at least 2 (a token and the end of the target)")
        if objective is not None and objective not in (*ENCODER_DECODERS, *OWN_LAYOUTS):
            raise ConfigError(f"model.objective={objective!r} is not one of {', '.join((*ENCODER_DECODERS, *OWN_LAYOUTS))}")
        if not 0.0 < target_mask_probability <= 1.0:
            raise ConfigError(f"model.target_mask_probability={target_mask_probability} must be in (0, 1]")
        if decoder_start is not None and decoder_start not in DecoderStart.__args__:
            raise ConfigError(f"model.decoder_start={decoder_start!r} is not one of {', '.join(DecoderStart.__args__)}")
        for key, value in (("num_beams", num_beams), ("max_new_tokens", max_new_tokens), ("max_target_length", max_target_length)):
            if value is not None and value < 1:
                raise ConfigError(f"model.{key}={value} must be at least 1")
        self.max_target_length, self.objective, self.decoder_start = max_target_length, objective, decoder_start
        self.target_mask_probability = target_mask_probability
        self.generation = GenerationConfig(max_new_tokens=max_new_tokens if max_new_tokens is not None else max_target_length,
                                           num_beams=num_beams,
                                           length_penalty=length_penalty)
        self._generated = 0  # examples generated in this evaluation epoch

    # -- which model: an encoder-decoder, or a causal LM ----------------------------------------------
    def architecture(self) -> ModelConfig:
        reading = self.pretrained is not None and self._run is None
        config = super().architecture()
        if reading:
            self._take_layout(self._run)
        # A fresh model in GLM's or UniLM's layout needs the tables its inputs index, as the objective does (the
        # embeddings would silently drop block positions or segment ids without them).
        if self.objective in OWN_LAYOUTS:
            getattr(objectives, self.objective).require_architecture(config)
        return config

    def _take_layout(self, run) -> None:
        """The pretrained run's kind: its objective's layout and decoder start, or a causal reader; else refused."""
        cls = getattr(objectives, run.objective, None)
        if isinstance(cls, type) and issubclass(cls, EncoderDecoderLM):
            if self.causal:
                raise ConfigError(f"model.causal=true, but model.pretrained={run.checkpoint} is an encoder-decoder ({run.objective})")
            if self.objective not in (None, run.objective):
                raise ConfigError(f"model.objective={self.objective}, but model.pretrained={run.checkpoint} is a {run.objective} run "
                                  "(leave model.objective unset: the run's layout is taken)")
            self.objective = run.objective
            self.decoder_start = self.decoder_start or run.decoder_start
        elif run.objective in OWN_LAYOUTS:  # GLM: the target written into a final [gMASK]; UniLM: its seq2seq sub-task
            if self.causal or self.objective not in (None, run.objective):
                raise ConfigError(f"model.pretrained={run.checkpoint} is a {run.objective} run: it takes {run.objective}'s "
                                  "own layout (leave model.causal and model.objective unset)")
            if run.objective == "GLM" and self.generation.num_beams > 1:  # refused now, not when evaluation starts
                raise ConfigError(f"model.num_beams={self.generation.num_beams}: a GLM run fills its [gMASK] greedily "
                                  "(GLM's blank filling has no beam search); set model.num_beams 1")
            self.objective = run.objective
        elif not run.causal:
            raise ConfigError(
                f"model.pretrained={run.checkpoint} is a {run.objective} run, an encoder only: sequence-to-sequence "
                "fine-tuning needs a decoder. Start from an encoder-decoder run (configs t5 / bart / mass), a causal "
                "LM (configs/gpt.yaml), or a GLM or UniLM run (each fine-tunes in its own layout)"
            )
        self.hparams["objective"], self.hparams["decoder_start"] = self.objective, self.decoder_start

    @property
    def glm(self) -> bool:
        """A GLM run: Part A = [CLS] source [gMASK] [SEP], Part B = [SOP] target -> target [EOP]."""
        self.architecture()
        return self.objective == "GLM"

    @property
    def unilm(self) -> bool:
        """A UniLM run: [CLS] source [SEP] (segment 4, bidirectional) target [SEP] (segment 5, causal), a cloze task."""
        self.architecture()
        return self.objective == "UniLM"

    @property
    def encoder_decoder(self) -> bool:
        return not self.reads_causally() and not self.glm and not self.unilm

    @cached_property
    def layout(self) -> EncoderDecoderLM:
        """The encoder-decoder objective, unbuilt: how it frames sources and targets, which token its decoder
        starts from. (A cached_property lives outside the module tree: no weights, no state dict entry.)"""
        self.architecture()
        cls = getattr(objectives, self.objective or "EncoderDecoderLM")
        start = self.decoder_start or cls.default_decoder_start()
        self.decoder_start = self.hparams["decoder_start"] = start
        self.objective = self.hparams["objective"] = cls.__name__
        return cls(config=self.config, decoder_start=start)

    def require_special_tokens(self, tokenizer) -> None:
        if self.glm:
            tokenizer.require("cls", "sep", "gmask", "sop", "eop", purpose="sequence-to-sequence fine-tuning of a GLM run")
        elif self.unilm:
            tokenizer.require("cls", "sep", "mask", purpose="sequence-to-sequence fine-tuning of a UniLM run")
        elif self.encoder_decoder:
            layout_ids(self.layout, tokenizer.ids, f"fine-tuning a {self.layout.__class__.__name__} run")
        else:
            tokenizer.require("eos", purpose="sequence-to-sequence fine-tuning of a causal model (source [SEP] target [EOS])")

    def demo_task(self, directory):
        return write_summary_task(directory)

    # -- building -------------------------------------------------------------------------------
    # The encoder-decoder's API (generation and the loss call it): the objective's own methods, on this
    # module's encoder (the backbone, ``transformer``) and decoder.
    encode_source = EncoderDecoderLM.encode_source
    decode = EncoderDecoderLM.decode
    new_cache = EncoderDecoderLM.new_cache

    @property
    def encoder(self) -> Transformer:
        return self.transformer

    def build_head(self, pretrained_state):
        tokens = self.transformer.embeddings.tokens  # one table: encoder, decoder and tied LM head
        if self.encoder_decoder:  # as EncoderDecoderLM builds it
            self.decoder = Transformer(self.config.decoder(), cross_attention=True, tokens=tokens)
            self._load(self.decoder, "decoder", pretrained_state)
            if self.freeze_embeddings:
                self.decoder.embeddings.requires_grad_(False)
        self.lm_head = LMHead(self.config, tokens)
        self._load(self.lm_head, "lm_head", pretrained_state)
        make = lambda: nn.ModuleDict({"rouge": ROUGEScore(rouge_keys="rougeL"), "bleu": BLEUScore(),  # noqa: E731
                                      "exact_match": MeanMetric()})
        self.metrics = nn.ModuleDict({"val_": make(), "test_": make()})
        if self.encoder_decoder and self.max_target_length > self.decoder.config.max_length:
            raise ConfigError(f"model.max_target_length={self.max_target_length} exceeds the decoder's "
                              f"{self.decoder.config.max_length} positions")

    @staticmethod
    def _load(module: nn.Module, prefix: str, state: dict) -> None:
        """The pretrained run's ``prefix.*`` weights, all of them (none: a fresh start or from_scratch)."""
        if not state:
            return
        own = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        missing, unexpected = module.load_state_dict(own, strict=False)
        if missing or unexpected:
            raise CheckpointMismatchError(f"the pretrained run's {prefix} does not match this model's: missing "
                                          f"{', '.join(missing[:5]) or 'nothing'}; unexpected {', '.join(unexpected[:5]) or 'nothing'}")

    # -- data -----------------------------------------------------------------------------------
    def text_fields(self, data) -> tuple[str, ...]:
        return (data.source_field,)

    def build_features(self, records, split, data):
        path, tokenizer, ids = data.file(split), data.tokenizer, data.tokenizer.ids
        sources = [s for s, _ in tokenizer.encode_batch([field(r, data.source_field, path, str) for r in records])]
        labelled = split != "predict" or all(r.get(data.target_field) is not None for r in records)
        targets = ([t for t, _ in tokenizer.encode_batch([field(r, data.target_field, path, str) for r in records])]
                   if labelled else [None] * len(records))
        features = []
        for r, source, target in zip(records, sources, targets):
            f = {"id": r.get(data.id_field, r["_line"])}
            if self.glm:  # [CLS] source [gMASK] [SEP] | target [EOP]
                f["source"] = torch.tensor([ids.cls, *source[: data.max_length - 3], ids.gmask, ids.sep])
                if target is not None:
                    f["target"] = torch.tensor([*target[: self.max_target_length - 1], ids.eop])
            elif self.unilm:  # [CLS] source [SEP] | target [SEP]; room for the target and generation's [MASK] slot
                f["source"] = torch.tensor([ids.cls, *source[: self._source_room(data, 3)], ids.sep])
                if target is not None:
                    f["target"] = torch.tensor([*target[: self.max_target_length - 1], ids.sep])
            elif self.encoder_decoder:
                layout = self.layout
                room = data.max_length - len(layout.frame_source([], ids))
                f["source"] = torch.tensor(layout.frame_source(source[:room], ids))
                if target is not None:
                    room = self.max_target_length - len(layout.frame_target([], ids))
                    f["target"] = torch.tensor(layout.frame_target(target[:room], ids))
            else:  # source [SEP] | target [EOS], room for max_target_length target tokens after the source
                f["source"] = torch.tensor([*source[: self._source_room(data, 1)], ids.sep if ids.sep is not None else ids.eos])
                if target is not None:
                    f["target"] = torch.tensor([*target[: self.max_target_length - 1], ids.eos])
            if target is not None:
                f["reference"] = tokenizer.hf.decode(target)
            features.append(f)
        return features

    def _source_room(self, data, framing: int) -> int:
        """A source's tokens in one sequence with the target: ``data.max_length`` less ``max_target_length``
        and ``framing`` other tokens."""
        room = data.max_length - self.max_target_length - framing
        if room < 1:
            raise ConfigError(f"data.max_length={data.max_length} leaves no room for a source before "
                              f"model.max_target_length={self.max_target_length} target tokens (one sequence reads both)")
        return room

    def collate(self, samples):
        ids = self.trainer.datamodule.tokenizer.ids
        batch = {"sources": [s["source"].tolist() for s in samples], "index": torch.tensor([s["index"] for s in samples]),
                 "ids": [s["id"] for s in samples]}
        labelled = all("target" in s for s in samples)
        if labelled:
            batch["references"] = [s["reference"] for s in samples]
        if self.glm and labelled:  # [Part A | [SOP] target], the target's tokens at the blank's position
            rows = []
            for s in samples:
                a, t = len(s["source"]), len(s["target"])
                rows.append({"ids": torch.cat([s["source"], torch.tensor([ids.sop]), s["target"][:-1]]),
                             "labels": torch.cat([torch.full((a,), IGNORE), s["target"]]),
                             "positions": torch.cat([torch.arange(a), torch.full((t,), a - 2)]),
                             "blocks": torch.cat([torch.zeros(a, dtype=torch.long), torch.arange(1, t + 1)])})
            batch.update({"input_ids": pad_windows(rows, "ids", ids.pad), "labels": pad_windows(rows, "labels", IGNORE),
                          "position_ids": pad_windows(rows, "positions", 0), "block_position_ids": pad_windows(rows, "blocks", 0),
                          "prefix_length": torch.tensor([len(s["source"]) for s in samples])})
            lengths = torch.tensor([len(r["ids"]) for r in rows])
            batch["attention_mask"] = torch.arange(batch["input_ids"].size(1)) < lengths[:, None]
        elif self.unilm and labelled:
            batch.update(self._unilm_rows(samples, ids))
        elif self.encoder_decoder:
            batch["input_ids"] = pad_windows(samples, "source", ids.pad)
            lengths = torch.tensor([len(s["source"]) for s in samples])
            batch["attention_mask"] = torch.arange(batch["input_ids"].size(1)) < lengths[:, None]
            if labelled:  # decoder fed [start] + target[:-1], predicting the target; padding is ignored
                start = self.layout.decoder_start_id(ids)
                shifted = [{"ids": torch.cat([torch.tensor([start]), s["target"][:-1]])} for s in samples]
                batch["decoder_input_ids"] = pad_windows(shifted, "ids", ids.pad)
                batch["labels"] = pad_windows(samples, "target", IGNORE)
        elif labelled:  # one sequence: source [SEP] target[:-1] in, the target's tokens predicted after the source
            rows = [{"ids": torch.cat([s["source"], s["target"][:-1]]),
                     "labels": torch.cat([torch.full((len(s["source"]) - 1,), IGNORE), s["target"]])} for s in samples]
            batch["input_ids"] = pad_windows(rows, "ids", ids.pad)
            batch["labels"] = pad_windows(rows, "labels", IGNORE)
            lengths = torch.tensor([len(r["ids"]) for r in rows])
            batch["attention_mask"] = torch.arange(batch["input_ids"].size(1)) < lengths[:, None]
        return batch

    def _unilm_rows(self, samples, ids) -> dict:
        """[CLS] source [SEP] target [SEP], segments 4 / 5, ``prefix_length`` the source's; in each target
        ``max(1, round(target_mask_probability * len))`` tokens drawn from the sample's (seed, epoch, index)
        stream become [MASK], their labels the tokens (UniLM's fine-tuning: a cloze task on the target)."""
        prefix = torch.tensor([len(s["source"]) for s in samples])
        lengths = prefix + torch.tensor([len(s["target"]) for s in samples])
        input_ids = pad_windows([{"ids": torch.cat([s["source"], s["target"]])} for s in samples], "ids", ids.pad)
        seed = self.trainer.datamodule.seed
        noise = torch.ones(input_ids.shape)  # a target token's draw, below 1; 1 elsewhere (chosen last)
        for i, s in enumerate(samples):
            g = torch.Generator().manual_seed(sample_seed(seed, s.get("epoch", 0), s["index"]))
            noise[i, prefix[i] : lengths[i]] = torch.rand(int(lengths[i] - prefix[i]), generator=g) * 0.999
        rank = noise.argsort(1).argsort(1)  # the target's tokens first, in random order
        masked = rank < ((lengths - prefix) * self.target_mask_probability).round().clamp(min=1)[:, None]
        position = torch.arange(input_ids.size(1))
        a, b = SEGMENTS["seq2seq"]
        return {"input_ids": input_ids.masked_fill(masked, ids.mask), "labels": input_ids.masked_fill(~masked, IGNORE),
                "token_type_ids": torch.where(position < prefix[:, None], a, b), "prefix_length": prefix,
                "attention_mask": position < lengths[:, None]}

    # -- steps ----------------------------------------------------------------------------------
    def forward(self, batch) -> torch.Tensor:
        """Hidden states (B, T, H) of the positions that predict the target: the decoder's, or the causal stack's."""
        if self.encoder_decoder:
            memory = self.encode_source(batch["input_ids"], batch["attention_mask"]).hidden
            return self.decode(batch["decoder_input_ids"], memory, batch["attention_mask"]).hidden
        mask = AttentionMask(padding=batch["attention_mask"], causal=True, prefix_length=batch.get("prefix_length"))
        return self.transformer(batch["input_ids"], mask, position_ids=batch.get("position_ids"),
                                block_position_ids=batch.get("block_position_ids"), token_type_ids=batch.get("token_type_ids")).hidden

    def step(self, split: str, batch):
        labels = batch["labels"]
        predicted = labels != IGNORE
        loss, _ = self.lm_head.loss(self(batch)[predicted], labels[predicted])  # the target tokens' rows only
        self.log_loss(split, loss, len(labels))
        if split != "train":
            self._score(split, self.generate(batch["sources"]), batch["references"])
        return loss

    def generator(self) -> Generator:
        ids = self.trainer.datamodule.tokenizer.ids
        if self.encoder_decoder:
            start, end = layout_ids(self.layout, ids, f"a {self.objective} model")
            return Generator(EncoderDecoderModel(self, self.lm_head, start, ids.pad), eos_id=end, pad_id=ids.pad)
        if self.unilm:  # as ``lit-ptm generate --mode seq2seq`` reads a UniLM run: up to [SEP]
            return Generator(cloze_reader(self, self.transformer, self.lm_head, ids, "seq2seq"), eos_id=ids.sep, pad_id=ids.pad)
        return Generator(CausalModel(self, self.transformer, self.lm_head, ids.pad), eos_id=ids.eos, pad_id=ids.pad)

    def generate(self, sources: list[list[int]]) -> list[str]:
        """The generated text of each source (laid out as the features lay it out)."""
        tokenizer = self.trainer.datamodule.tokenizer
        if self.glm:  # the span written into the source's [gMASK]
            filler = BlankFiller(self, tokenizer.ids, self.transformer, self.lm_head)
            # The last blank: the target's [gMASK] (a source may hold blank tokens of its own, filled on the way).
            return [tokenizer.hf.decode(spans[-1]) for spans in filler.spans(sources, self.generation)]
        generator = self.generator()
        texts = []
        for new in generator.generate(sources, self.generation):
            if new and new[-1] == generator.eos_id:
                new = new[:-1]
            texts.append(tokenizer.hf.decode(new))
        return texts

    def _score(self, split: str, predictions: list[str], references: list[str]) -> None:
        predictions, references = [" ".join(t.split()) for t in predictions], [" ".join(t.split()) for t in references]
        metrics = self.metrics[f"{split}_"]
        metrics["rouge"].update(predictions, references)
        metrics["bleu"].update(predictions, [[r] for r in references])
        metrics["exact_match"].update(torch.tensor([float(p == r) for p, r in zip(predictions, references)]))
        self._generated += len(predictions)

    def epoch_end(self, split: str) -> None:
        metrics = self.metrics[f"{split}_"]
        if self._generated:
            # compute() gathers over ranks: every rank logs the same value (sync_dist only silences the warning).
            values = {"rougeL": metrics["rouge"].compute()["rougeL_fmeasure"], "bleu": metrics["bleu"].compute(),
                      "exact_match": metrics["exact_match"].compute()}
            for name, value in values.items():
                self.log(f"{split}/{name}", value, prog_bar=split == "val" and name == "rougeL", sync_dist=True)
        for metric in metrics.values():
            metric.reset()
        self._generated = 0

    def predict_step(self, batch, batch_idx):
        for i, example_id, text in zip(batch["index"].tolist(), batch["ids"], self.generate(batch["sources"])):
            self._predictions.append({"index": i, "id": example_id, "prediction": text})

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.encoder_decoder:  # no HF encoder family describes an encoder-decoder's encoder alone
            checkpoint["lit_ptm"]["family"] = None
