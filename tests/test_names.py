"""Names shortened for the report's tables (onnx_obc/names.py): a transformer's layers keep
what tells them apart (the layer index) where head and tail alone gave every one the same
short name; names that fit, or share nothing, are as short_name gives them."""

from __future__ import annotations

from onnx_obc.names import NAME_WIDTH, common_head, short_name, shortener

BERT = [f"/bert/encoder/layer.{i}/{p}/MatMul" for i in range(6) for p in (
    "attention/self/query", "attention/self/key", "attention/self/value",
    "attention/output/dense", "intermediate/dense", "output/dense")]


def test_a_bert_s_layers_stay_distinct():
    short = shortener(BERT, NAME_WIDTH)
    got = [short(n) for n in BERT]
    assert len(set(got)) == len(BERT) and all(len(s) <= NAME_WIDTH for s in got)
    assert got[3] == "…/layer.0/attention/output/dense/MatMul"
    assert len({short_name(n, NAME_WIDTH) for n in BERT}) == 10  # head and tail alone: 36
    # layers, 10 names ("/bert/encoder/…/self/query/MatMul" for six of them)


def test_names_that_fit_or_share_nothing_are_unchanged():
    assert common_head(BERT) == 3 and common_head(BERT[:1]) == 0
    assert common_head(["a/b", "c/d"]) == 0 and common_head(["a/b", "a"]) == 0
    short = shortener(["conv1", "conv2"], 10)
    assert short("conv1") == "conv1"
    long = [f"StatefulPartitionedCall/model/block_{i}" + "x" * 40 + "/conv" for i in range(2)]
    short = shortener(long, 48)  # the shared head dropped is still too long: head and tail
    assert short(long[0]) == short_name(long[0], 48) == "StatefulPartitionedCall/model/…/conv"
    assert shortener(long + ["StatefulPartitionedCall/model/c"], 48)(long[1]) == short(long[1])
