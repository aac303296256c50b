import pytest
import torch

from longctx_plugins import AnchorPackingCollator
from longctx_plugins.ops.masks import doc_ids_from_cu_seqlens


class Tok:
    def __init__(self, bos=1, eos=2, pad=0):
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos, eos, pad


def feats(*lengths, start=10, bos=None):
    out, v = [], start
    for n in lengths:
        ids = list(range(v, v + n))
        out.append({"input_ids": ([bos] if bos is not None else []) + ids})
        v += n
    return out


def test_layout_labels_positions_boundaries():
    coll = AnchorPackingCollator(Tok(), max_length=16)
    b = coll(feats(5, 3, 9, bos=1))  # leading BOS dropped; 5+3 fit with the anchor, 9 goes to row 2
    assert b["input_ids"].shape == (2, 10)
    assert b["input_ids"][0, :9].tolist() == [1] + list(range(10, 18))
    assert b["input_ids"][1].tolist() == [1] + list(range(18, 27))
    lab = b["labels"]
    assert lab[0].tolist() == [-100, -100, 11, 12, 13, 14, -100, 16, 17, -100]
    assert lab[1, :2].tolist() == [-100, -100] and lab[1, 2:].tolist() == list(range(19, 27))
    assert b["attention_mask"][0].tolist() == [1] * 9 + [0]
    assert b["position_ids"][0].tolist() == list(range(10))
    assert b["cu_seq_lens_q"].tolist() == [0, 1, 6, 9, 10, 11, 20]
    assert b["cu_seq_lens_q"].dtype == torch.int32 and b["max_length_q"] == 9
    doc = doc_ids_from_cu_seqlens(b["cu_seq_lens_q"], 2, 10)
    assert doc[0].tolist() == [0, 2, 2, 2, 2, 2, 3, 3, 3, 4] and doc[1, 0] == 0


def test_eos_anchor_when_no_bos_and_explicit_anchor():
    assert AnchorPackingCollator(Tok(bos=None), max_length=8)(feats(3))["input_ids"][0, 0] == 2
    assert AnchorPackingCollator(Tok(), max_length=8, anchor_token_id=7)(feats(3))["input_ids"][0, 0] == 7
    with pytest.raises(ValueError, match="neither a BOS nor an EOS"):
        AnchorPackingCollator(Tok(bos=None, eos=None), max_length=8)


def test_long_documents_split_and_errors():
    b = AnchorPackingCollator(Tok(), max_length=5)(feats(10))
    assert b["input_ids"].shape == (3, 5)  # pieces of 4, 4, 2 each in its own window
    assert b["labels"][0].tolist() == [-100, -100, 11, 12, 13]
    with pytest.raises(ValueError, match="split_long_documents"):
        AnchorPackingCollator(Tok(), max_length=5, split_long_documents=False)(feats(10))
    with pytest.raises(ValueError, match="document 1 is empty"):
        AnchorPackingCollator(Tok(), max_length=5)([{"input_ids": [3]}, {"input_ids": []}])
    assert AnchorPackingCollator(Tok(), max_length=5, skip_empty=True)([{"input_ids": [3]}, {"input_ids": []}])[
        "input_ids"
    ].shape == (1, 2)
    for bad in (1, 0, 2.5, "8"):
        with pytest.raises(ValueError, match="max_length"):
            AnchorPackingCollator(Tok(), max_length=bad)


def test_padding_modes():
    b = AnchorPackingCollator(Tok(), max_length=64, padding="max_length")(feats(3))
    assert b["input_ids"].shape == (1, 64) and b["cu_seq_lens_q"].tolist() == [0, 1, 4, 64]
    b = AnchorPackingCollator(Tok(), max_length=64, pad_to_multiple_of=16)(feats(3, 20))
    assert b["input_ids"].shape == (1, 32)


def test_inconsistent_boundaries_are_rejected():
    with pytest.raises(ValueError, match="end at batch"):
        doc_ids_from_cu_seqlens(torch.tensor([0, 1, 5]), 1, 10)
    with pytest.raises(ValueError, match="row start"):
        doc_ids_from_cu_seqlens(torch.tensor([0, 1, 12, 20]), 2, 10)
