import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from lit_ptm.tokenizer import NUM_SENTINELS, SPECIAL_TOKENS, TOKENIZER_KINDS, Tokenizer, TokenizerError, train_tokenizer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Unbelievable results were reported by the researchers yesterday.",
    "Tokenizers split words into pieces that a model can learn.",
] * 50


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_trained_tokenizer_holds_special_token_contract(kind, tmp_path):
    tok = train_tokenizer(SENTENCES, kind, vocab_size=400, lowercase=kind == "wordpiece")
    # Special tokens come first, in contract order, and are all flagged special.
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.hf.token_to_id(t) == i
    assert set(range(len(SPECIAL_TOKENS))) <= set(tok.ids.special)
    assert tok.ids.pad == 0 and tok.ids.mask == SPECIAL_TOKENS.index("[MASK]")
    regular = tok.ids.regular_ids()
    assert len(regular) == tok.vocab_size - len(tok.ids.special)
    assert not set(regular.tolist()) & set(tok.ids.special)
    # Round trip through tokenizer.json keeps the identity (sha) and the ids.
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "tokenizer.json")
    assert again.sha == tok.sha and again.ids == tok.ids


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_word_starts_follow_the_tokenizers_words(kind):
    tok = train_tokenizer(SENTENCES, kind, vocab_size=300)
    (ids, starts), = tok.encode_batch(["unbelievably researching"])
    enc = tok.hf.encode("unbelievably researching", add_special_tokens=False)
    assert ids == enc.ids
    # One word start per distinct word id, at the first piece of each word.
    expected = [i == 0 or enc.word_ids[i] != enc.word_ids[i - 1] for i in range(len(ids))]
    assert starts == expected
    assert sum(starts) == len(set(enc.word_ids))
    assert len(ids) > sum(starts)  # these words were split into several pieces


def test_loaded_tokenizer_missing_specials_gets_them_appended(tmp_path):
    hf = HFTokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "t.json"))
    with pytest.warns(UserWarning, match="lacks"):
        tok = Tokenizer.load(tmp_path / "t.json")
    assert tok.vocab_size == 3 + len(SPECIAL_TOKENS) - 1
    assert tok.ids.unk == 2 and tok.ids.mask >= 3
    assert tok.encode_batch(["hello world"])[0][0] == [0, 1]


def test_bad_tokenizer_files_name_the_file(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="bad.json"):
        Tokenizer.load(tmp_path / "bad.json")
    with pytest.raises(TokenizerError, match="tokenizer_kind"):
        train_tokenizer(SENTENCES, "sentencepiece", 400)


def test_sentinels_are_the_contracts_in_order_or_hf_t5s_or_none(tmp_path):
    tok = train_tokenizer(SENTENCES, "unigram", vocab_size=400)
    assert tok.ids.sentinels == tuple(tok.hf.token_to_id(f"[X{i}]") for i in range(NUM_SENTINELS))
    tok.require("sentinels", purpose="T5 span corruption")  # present: no error
    # A tokenizer with HF roles: HF T5's <extra_id_N>, ordered by N (not by id: T5 numbers them downwards).
    vocab = {"hello": 0, "world": 1, "<pad>": 2, "</s>": 3, "<unk>": 4, "<extra_id_2>": 5, "<extra_id_1>": 6, "<extra_id_0>": 7}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    roles = {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}
    assert Tokenizer(hf, roles=roles).ids.sentinels == (7, 6, 5)
    # Without them, () and require names them as missing.
    del vocab["<extra_id_0>"], vocab["<extra_id_1>"], vocab["<extra_id_2>"]
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    plain = Tokenizer(hf, source="plain.json", roles=roles)
    assert plain.ids.sentinels == ()
    with pytest.raises(TokenizerError, match="no sentinels token, which T5 span corruption needs"):
        plain.require("sentinels", purpose="T5 span corruption")
