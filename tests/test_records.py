"""Task files read as JSONL, CSV and TSV define them; labels as strings; empty texts reported (no training)."""

import json
import re
from types import SimpleNamespace

import pytest

from lit_ptm.data.corpus import CorpusError
from lit_ptm.nn import ModelConfig
from lit_ptm.tasks import ExtractiveQA, FinetuneDataModule, SequenceClassification, TokenClassification
from lit_ptm.tasks.records import read_records
from lit_ptm.tokenizer import train_tokenizer

WORDS = "alice bob met in paris the a of to is value and then first second line with comma plain hello world".split()


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    sentences = [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(8)) for i in range(200)]
    train_tokenizer(sentences, "wordpiece", 300).save(path)
    return path


def setup_task(module, tokenizer_file, train, val=None, **flags):
    """A FinetuneDataModule set up for ``fit`` with ``module``'s features, without a Trainer."""
    data = FinetuneDataModule(train_file=str(train), val_file=str(val or train), tokenizer=str(tokenizer_file), max_length=32, stride=8, **flags)
    data.trainer = SimpleNamespace(lightning_module=module, is_global_zero=True, default_root_dir=None)
    data.setup("fit")
    return data


def tiny(task):
    return task(config=ModelConfig(vocab_size=None, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- CSV and TSV ----------------------------------------------------------------------------------
def test_a_quoted_csv_field_holds_a_newline_and_a_comma(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('id,text,label\na,"first line, with a comma\nsecond line",pos\n\nb,plain,neg\n', encoding="utf-8-sig")  # as Excel saves it
    records = read_records(path)
    assert [r["id"] for r in records] == ["a", "b"]  # the byte-order mark is not part of the first field's name
    assert [r["text"] for r in records] == ["first line, with a comma\nsecond line", "plain"]
    assert [r["_line"] for r in records] == [2, 5]  # the physical line where each record starts


@pytest.mark.parametrize("row, fields", [("b,hello, world,neg", 4), ("b,hello", 2)])
def test_a_csv_row_with_more_or_fewer_fields_than_the_header_is_an_error(row, fields, tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(f'id,text,label\na,"two\nlines",pos\n{row}\nc,fine,neg\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=rf"{re.escape(str(path))}:4: has {fields} fields, the header has 3"):
        read_records(path)
    path.write_text("id,text,id\na,b,c\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r":1: the header names 'id' more than once"):
        read_records(path)


def test_glue_style_tsv_reads_a_stray_quote_as_a_character(tmp_path):
    path = tmp_path / "train.tsv"
    sentences = ['" a stray quote opens this sentence', 'it \'s a " ordinary character', "the third one"]
    path.write_text("sentence\tlabel\n" + "".join(f"{s}\t{k % 2}\n" for k, s in enumerate(sentences)), encoding="utf-8")
    records = read_records(path)
    assert [r["sentence"] for r in records] == sentences and [r["label"] for r in records] == ["0", "1", "0"]
    assert [r["_line"] for r in records] == [2, 3, 4]
    # With CSV's quoting the first quote would swallow the following rows: an error that says why.
    with pytest.raises(CorpusError, match=rf"{re.escape(str(path))}:2: not valid TSV .*data.tsv_quoting=none"):
        read_records(path, tsv_quoting="csv")


def test_a_file_that_is_not_utf8_names_the_line(tmp_path):  # a guard: the old reader said this as well
    path = tmp_path / "train.tsv"
    path.write_bytes(b"text\tlabel\n" + b"plain words\t1\n" * 2000 + b"caf\xe9\t0\n")
    with pytest.raises(CorpusError, match=rf"{re.escape(str(path))}:2002: not UTF-8"):
        read_records(path)


# -- JSONL ----------------------------------------------------------------------------------------
def test_jsonl_lines_end_at_newline_only(tmp_path):
    """U+2028 and U+0085 are valid inside a JSON string (str.splitlines breaks lines there); CRLF files work."""
    path = tmp_path / "train.jsonl"
    rows = [{"text": "one\u2028paragraph", "label": "a"}, {"text": "next\x85line", "label": "b"}]
    path.write_bytes("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows).encode() + b"\r\n\r\n")
    records = read_records(path)
    assert [r["text"] for r in records] == ["one\u2028paragraph", "next\x85line"] and [r["_line"] for r in records] == [1, 2]


# -- labels ---------------------------------------------------------------------------------------
def test_integer_tags_work_end_to_end(tokenizer_file, tmp_path):
    rows = [{"tokens": ["alice", "met", "bob", "in", "paris"], "tags": [1, 0, 1, 0, 2]}, {"tokens": ["hello"], "tags": [0]}]
    module = tiny(TokenClassification)
    data = setup_task(module, tokenizer_file, write_jsonl(tmp_path / "train.jsonl", rows))
    assert module.labels == ["0", "1", "2"] and module.hparams["labels"] == ["0", "1", "2"]
    first = data.datasets["train"].windows[0]
    assert first["tags"] == ["1", "0", "1", "0", "2"]
    assert [t for t in first["labels"].tolist() if t != -100] == [1, 0, 1, 0, 2]


def test_integer_class_labels_are_one_class_with_their_strings(tokenizer_file, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "hello world", "label": k} for k in (2, 10, 0, 1, 2)])
    val = tmp_path / "val.csv"
    val.write_text("text,label\nhello,10\nworld,2\n", encoding="utf-8")
    module = tiny(SequenceClassification)
    data = setup_task(module, tokenizer_file, train, val)
    assert module.labels == ["0", "1", "2", "10"] and module.hparams["labels"] == module.labels  # numeric order, plain strings
    assert [f["label"] for f in data.datasets["train"].windows] == [2, 3, 0, 1, 2]
    assert [f["label"] for f in data.datasets["val"].windows] == [3, 2]


@pytest.mark.parametrize("bad", [{"type": "PER"}, ["B-PER"], None, float("nan"), True])
def test_a_tag_that_is_not_a_string_or_integer_names_file_line_and_field(bad, tokenizer_file, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"tokens": ["a", "b"], "tags": ["O", "O"]}, {"tokens": ["a", "b"], "tags": ["O", bad]}])
    with pytest.raises(CorpusError, match=rf"{re.escape(str(train))}:2: tags\[1\] is .*a label is a string or an integer"):
        setup_task(tiny(TokenClassification), tokenizer_file, train)


@pytest.mark.parametrize("bad", [1.5, [1], False])
def test_a_class_label_that_is_not_a_string_or_integer_names_file_line_and_field(bad, tokenizer_file, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a b", "label": 1}, {"text": "a", "label": 0}, {"text": "b", "label": bad}])
    with pytest.raises(CorpusError, match=rf"{re.escape(str(train))}:3: label is .*a label is a string or an integer"):
        setup_task(tiny(SequenceClassification), tokenizer_file, train)


# -- empty texts ----------------------------------------------------------------------------------
QA = {"question": "who ?", "context": "alice met bob", "answers": {"text": ["bob"], "answer_start": [10]}}
EMPTY_TEXTS = {  # task: (rows, the empty ones' field names)
    "classify": (SequenceClassification, [{"text": t, "label": k % 2} for k, t in enumerate(["hello", "", "world", " \t", "a", "b"])], "text"),
    "tag": (TokenClassification, [{"tokens": w, "tags": ["O"] * len(w)} for w in (["a"], [], ["b"], [], ["c"], ["d"])], "tokens"),
    "qa": (ExtractiveQA, [QA, {**QA, "question": ""}, QA, {**QA, "context": "  ", "answers": {"text": [""], "answer_start": [0]}}, QA, QA],
           "question|context"),
}


@pytest.mark.parametrize("task", sorted(EMPTY_TEXTS))
def test_empty_texts_fail_with_their_count_and_lines_or_are_skipped(task, tokenizer_file, tmp_path):
    cls, rows, names = EMPTY_TEXTS[task]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(CorpusError, match=rf"{re.escape(str(train))}:2: 2 record\(s\) with an empty text, at line\(s\) 2 \((?:{names})\), 4 "
                                          r".*data.empty_texts=skip"):
        setup_task(tiny(cls), tokenizer_file, train)
    with pytest.warns(UserWarning, match=r"left out 2 record\(s\) with an empty text, at line\(s\) 2 "):
        data = setup_task(tiny(cls), tokenizer_file, train, empty_texts="skip")
    assert [r["_line"] for r in data.records["train"]] == [1, 3, 5, 6]
    assert len(data.datasets["train"]) >= 4


# -- flags ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value", [("batch_size", 0), ("eval_batch_size", 0), ("stride", -1), ("num_workers", -1),
                                        ("format", "xml"), ("tsv_quoting", "quoted"), ("empty_texts", "keep")])
def test_flag_values_are_checked_naming_the_key(key, value):
    with pytest.raises(ValueError, match=rf"data.{key}={value!r}" if isinstance(value, str) else rf"data.{key}={value} "):
        FinetuneDataModule(**{key: value})


def test_choice_flags_are_literals_the_command_line_validates():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(FinetuneDataModule, "data")
    assert parser.parse_args(["--data.tsv_quoting", "csv", "--data.empty_texts", "skip"]).data.tsv_quoting == "csv"
    for key in ("format", "tsv_quoting", "empty_texts"):
        with pytest.raises(Exception, match=key):
            parser.parse_args([f"--data.{key}", "bogus"])


def test_a_blank_row_of_a_one_column_file_is_an_empty_text_not_a_blank_line(tmp_path):
    from lit_ptm.tasks.records import drop_empty_texts

    path = tmp_path / "one.csv"
    path.write_text("text\nfirst\n\"\"\n  \nlast\n")
    records = read_records(path)
    assert [r["text"] for r in records] == ["first", "", "  ", "last"] and [r["_line"] for r in records] == [2, 3, 4, 5]
    with pytest.raises(CorpusError, match=r"2 record\(s\) with an empty text, at line\(s\) 3 \(text\), 4 \(text\)"):
        drop_empty_texts(records, path, ("text",), "fail")
