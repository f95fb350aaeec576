import numpy as np
import pytest

from conftest import write_corpus, write_jsonl
from lit_ptm.data.corpus import CorpusError, iter_documents, resolve_files
from lit_ptm.data.store import open_store
from lit_ptm.tokenizer import train_tokenizer


def test_text_and_jsonl_documents(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("First sentence.\nSecond one.\n\n\nOther doc.\n", encoding="utf-8")
    assert list(iter_documents(txt)) == [["First sentence.", "Second one."], ["Other doc."]]
    jl = write_jsonl(tmp_path / "b.jsonl", ["line one\nline two", "solo"])
    assert list(iter_documents(jl)) == [["line one", "line two"], ["solo"]]
    (tmp_path / "c.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(CorpusError, match=r"c.jsonl:1: no string field 'text'"):
        list(iter_documents(tmp_path / "c.jsonl"))
    assert list(iter_documents(tmp_path / "c.jsonl", text_field="body")) == [["x"]]


def test_non_utf8_fails_with_file_and_line_or_is_skipped_and_counted(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good line\nbad \xff byte\nanother good\n")
    with pytest.raises(CorpusError, match=r"bad.txt:2: byte 0xff at column 5 is not valid UTF-8"):
        list(iter_documents(bad))
    with pytest.warns(UserWarning, match=r"skipped 1 line\(s\).*first at line 2"):
        assert list(iter_documents(bad, decode_errors="skip")) == [["good line", "another good"]]


def test_empty_and_missing_files_are_named(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(CorpusError, match="empty.txt holds no text"):
        list(iter_documents(tmp_path / "empty.txt"))
    with pytest.raises(CorpusError, match=r"data.train_files: no corpus file matches '.*nothing\*.txt'"):
        resolve_files(str(tmp_path / "nothing*.txt"))
    assert resolve_files(str(tmp_path)) == [tmp_path / "empty.txt"]


def test_store_round_trip_and_cache(tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", n_docs=12)
    docs = list(iter_documents(corpus))
    tok = train_tokenizer((s for d in docs for s in d), "wordpiece", 400)
    store = open_store([corpus], tok, tmp_path / "cache")
    assert store.num_docs == len(docs) and store.meta["num_sentences"] == sum(map(len, docs))
    assert store.tokens.dtype == np.uint16
    sent = 0
    for d, doc in enumerate(docs):
        assert store.doc_sents[d] == sent
        for text in doc:
            ids, starts = tok.encode_batch([text])[0]
            a, b = store.sent_offsets[sent], store.sent_offsets[sent + 1]
            assert store.tokens[a:b].tolist() == ids
            assert store.word_start[a:b].astype(bool).tolist() == starts
            sent += 1
    assert store.document(0).tolist() == [t for s in doc_ids(tok, docs[0]) for t in s]
    # Reused while the files are unchanged; rebuilt when they change.
    again = open_store([corpus], tok, tmp_path / "cache")
    assert again.directory == store.directory
    write_corpus(corpus, n_docs=5, seed=1)
    assert open_store([corpus], tok, tmp_path / "cache").num_docs == 5


def doc_ids(tok, doc):
    return [ids for ids, _ in tok.encode_batch(doc)]
