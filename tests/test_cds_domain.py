"""CDS domain: one token per codon, read through the DNA domain; codons that are not whole
are one clear error; writing gives the bases back."""

from __future__ import annotations

import gzip
import re
from itertools import product
from pathlib import Path

import numpy as np
import pytest

from seqformer.domains import InputError, Record, get_domain

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CDS = REPO / "apps" / "codon_design" / "data" / "sample_train_cds.fa"
CDS = get_domain("cds")
DNA = get_domain("dna")


def test_vocabulary_is_the_64_codons_and_an_unknown_one():
    codons = ["".join(c) for c in product("ACGT", repeat=3)]
    assert list(CDS.tokens) == ["<pad>", "<sep>", *codons, "NNN"]
    assert CDS.vocab_size == 67 and (CDS.pad_id, CDS.sep_id) == (0, 1)
    assert CDS.generatable() == list(range(2, 66))  # a sampler never writes NNN
    assert CDS.vocabulary()["domain"] == "cds" and CDS.unit == "codon"


def test_encode_decode_every_codon():
    codons = "".join(CDS.tokens[2:66])
    tokens = CDS.encode(codons)
    assert tokens.dtype == np.uint8 and tokens.tolist() == list(range(2, 66))
    assert CDS.decode(tokens) == codons
    # soft-masked bases read as upper case; whitespace is ignored; N and IUPAC codes make
    # the whole codon unknown
    assert CDS.decode(CDS.encode("atg aaR\ncNt TAA")) == "ATGNNNNNNTAA"
    assert CDS.decode(np.array([1, 16, 0, 50, 1, 0])) == "ATGTAA"  # pad and sep dropped
    assert CDS.encode("").tolist() == [] and CDS.decode([]) == ""
    with pytest.raises(InputError, match="4 bases is not a whole number of codons"):
        CDS.encode("ATGA")
    with pytest.raises(InputError, match="unknown character 'U'"):
        CDS.encode("AUG")
    with pytest.raises(ValueError, match="token ids"):
        CDS.decode(np.array([67]))


def test_reads_the_genes_the_dna_domain_reads_codon_by_codon():
    dna = {r.id: r.tokens for r in DNA.read(SAMPLE_CDS)}
    got = list(CDS.read(SAMPLE_CDS))
    assert [r.id for r in got] == list(dna) and len(got) == 40
    for rec in got:
        assert len(rec.tokens) * 3 == len(dna[rec.id])
        assert CDS.decode(rec.tokens) == DNA.decode(dna[rec.id])
        assert rec.meta["path"] == str(SAMPLE_CDS)


def test_a_record_that_is_not_whole_codons_names_file_and_record(tmp_path):
    path = tmp_path / "genes.fa.gz"
    path.write_bytes(gzip.compress(b">ok\nATGAAATAA\n>short one\nATGAAAT\nA\n"))
    with pytest.raises(InputError, match="^" + re.escape(str(path)) +
                       r": record 'short' has 8 bases, not a whole number of codons"):
        list(CDS.read(path))
    # the DNA domain's own checks and messages hold, e.g. a protein FASTA
    protein = tmp_path / "protein.fa"
    protein.write_text(">p\nMKVLEEQLPFWRS\n")
    with pytest.raises(InputError, match="looks like a protein FASTA"):
        list(CDS.read(protein))


def test_write_reads_back(tmp_path):
    records = list(CDS.read(SAMPLE_CDS))
    out = tmp_path / "out.fa"
    CDS.write(records, out)
    assert [(r.id, r.tokens.tolist()) for r in CDS.read(out)] == \
        [(r.id, r.tokens.tolist()) for r in records]
    assert DNA.decode(next(DNA.read(out)).tokens) == CDS.decode(records[0].tokens)
    with pytest.raises(InputError, match="is empty"):
        CDS.write([Record("x", np.array([1], np.uint8))], tmp_path / "empty.fa")
