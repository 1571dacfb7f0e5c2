"""GenBank and EMBL input through Biopython, wherever a FASTA is accepted: the same tokens
as Biopython's sequence, gzip told by content, and one clear error for each bad file
(shipped copies of the shared annotated records)."""

from __future__ import annotations

import gzip
import shutil

import pytest
from Bio import SeqIO

from seqformer.domains import get_domain
from seqformer.errors import InputError

from cli_helpers import REPO, TINY_MODEL, run_cli

GENBANK = REPO / "data" / "dna" / "genbank"
PLASMID = GENBANK / "yersinia_plasmid_NC_005816.gb.gz"
CHLOROPLAST = GENBANK / "arabidopsis_chloroplast_NC_000932.gb.gz"
DNA = get_domain("dna")


def biopython_record(path):
    with gzip.open(path, "rt") as handle:
        return next(SeqIO.parse(handle, "genbank"))


@pytest.mark.parametrize("path", [PLASMID, CHLOROPLAST])
def test_genbank_tokens_equal_biopythons_sequence(path):
    records = list(DNA.read(path))
    rec = biopython_record(path)
    assert [r.id for r in records] == [rec.id]
    assert DNA.decode(records[0].tokens) == str(rec.seq).upper()
    assert records[0].meta["format"] == "genbank"


def test_embl_and_gzip_are_told_by_content(tmp_path):
    rec = biopython_record(PLASMID)
    embl = tmp_path / "plasmid.txt"  # no telling extension
    SeqIO.write(rec, embl, "embl")
    assert embl.read_text().startswith("ID ")
    plain = tmp_path / "plasmid.data"
    plain.write_bytes(gzip.open(PLASMID).read())
    packed = tmp_path / "plasmid.embl.bin"
    packed.write_bytes(gzip.compress(embl.read_bytes()))
    want = str(rec.seq).upper()
    for path, fmt in ((embl, "embl"), (plain, "genbank"), (packed, "embl")):
        (got,) = DNA.read(path)
        assert DNA.decode(got.tokens) == want and got.meta["format"] == fmt, path


def test_records_stream_in_pieces(monkeypatch):
    from seqformer.domains import dna

    monkeypatch.setattr(dna, "_PIECE_BYTES", 4096)
    pieces = list(DNA.read_pieces(CHLOROPLAST))
    assert len(pieces) == -(-154478 // 4096) and pieces[0].first and pieces[-1].last
    assert sum(len(p.tokens) for p in pieces) == 154478


@pytest.mark.parametrize("name,message", [
    ("bad_no_origin_no_end.gb", "malformed GenBank file in its first record (Premature end"),
    ("bad_protein_record.gb", "record 'NP_001832.1' is a protein record; expected DNA"),
    ("odd_origin_wrap.gb", "record 'XX_123456.1' has no sequence"),
])
def test_bad_annotated_files_are_one_clear_error(name, message):
    with pytest.raises(InputError, match=f"^{GENBANK / name}: .*") as e:
        list(DNA.read(GENBANK / name))
    assert message in str(e.value)


def test_a_feature_outside_its_record_is_an_error(tmp_path):
    text = gzip.open(PLASMID, "rt").read()
    assert "     gene            87..1109\n" in text
    bad = tmp_path / "bad.gb"
    bad.write_text(text.replace("     gene            87..1109\n",
                                "     gene            87..9999\n", 1))
    with pytest.raises(InputError, match="record 'NC_005816.1': gene feature at .* lies outside "
                                         r"the record \(9,609 bp\)"):
        list(DNA.read(bad))


def test_train_and_score_take_genbank(tmp_path):
    out = tmp_path / "run"
    code, text = run_cli("train", "dna", "--fasta", PLASMID, "--out", out, "--max-steps", 2,
                         "--batch-size", 1, *TINY_MODEL)
    assert code == 0, text
    assert "tokenized NC_005816.1 (9,609 tokens)" in text
    gb = tmp_path / "plasmid.gbk"
    shutil.copy(PLASMID, gb)
    code, text = run_cli("score", "dna", "--model", out, "--fasta", gb, "--out",
                         tmp_path / "s.tsv")
    assert code == 0, text
    assert (tmp_path / "s.tsv").read_text().split("\n")[1].startswith("NC_005816.1\t9609\t")
    code, text = run_cli("score", "dna", "--model", out, "--fasta",
                         GENBANK / "bad_protein_record.gb", "--out", tmp_path / "bad.tsv")
    assert code == 2 and "protein record" in text and not (tmp_path / "bad.tsv").exists()
