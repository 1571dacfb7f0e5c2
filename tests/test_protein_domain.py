"""Protein domain: FASTA <-> tokens, ambiguity codes, the DNA-looking guard, bad input,
gzip, atomic writes."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqformer.domains import InputError, Record, get_domain
from seqformer.domains.protein import ProteinDomain

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "protein" / "sample.fa"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dna"
PROTEIN = ProteinDomain()


def starts(path: Path) -> str:
    """Regex for an error message that begins with the file's path."""
    return "^" + re.escape(str(path)) + ": "


def write(tmp_path: Path, content: bytes, name: str = "in.fa") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


# ---- vocabulary and sequences <-> tokens ---------------------------------------------------

def test_vocabulary():
    domain = get_domain("protein")
    assert isinstance(domain, ProteinDomain)
    assert list(domain.tokens) == ["<pad>", "<sep>", *"ACDEFGHIKLMNPQRSTVWY", "X", "*"]
    assert domain.vocab_size == 24 and (domain.pad_id, domain.sep_id) == (0, 1)
    assert domain.generatable() == list(range(2, 24))  # all but pad and sep
    assert domain.vocabulary() == {"domain": "protein", "tokens": list(domain.tokens),
                                   "pad_id": 0, "sep_id": 1, "config": {}}


def test_encode_decode():
    tokens = PROTEIN.encode("ACDEFGHIKLMNPQRSTVWYX*")
    assert tokens.dtype == np.uint8 and tokens.tolist() == list(range(2, 24))
    assert PROTEIN.decode(tokens) == "ACDEFGHIKLMNPQRSTVWYX*"
    assert PROTEIN.decode(PROTEIN.encode("mk vl\nee*")) == "MKVLEE*"  # case, whitespace
    assert PROTEIN.decode(np.array([1, 12, 0, 10, 1, 0])) == "MK"  # pad and sep dropped
    assert PROTEIN.encode("").dtype == np.uint8 and PROTEIN.decode([]) == ""
    with pytest.raises(ValueError, match="token ids"):
        PROTEIN.decode(np.array([24]))


def test_ambiguous_letters_read_as_x(tmp_path):
    assert PROTEIN.decode(PROTEIN.encode("MBZJUOK bzjuo")) == "MXXXXXKXXXXX"
    path = write(tmp_path, b">amb\nMKB\nzJuO\n")
    (rec,) = PROTEIN.read(path)
    assert PROTEIN.decode(rec.tokens) == "MKXXXXX"


@pytest.mark.parametrize("seq, message", [
    ("MK-V", r"unknown character '-' at position 3 \(an alignment gap"),
    ("MK1", "unknown character '1' at position 3"),
    ("MKé", r"unknown character 'é' at position 3"),
])
def test_encode_rejects_unknown_characters(seq, message):
    with pytest.raises(InputError, match=message):
        PROTEIN.encode(seq)


# ---- reading and writing ------------------------------------------------------------------

def test_sample_file_round_trip(tmp_path):
    records = list(PROTEIN.read(SAMPLE))
    assert len(records) == 20
    assert all(re.fullmatch(r"lambda_orf_\d+_[+-]", r.id) for r in records)
    for rec in records:
        seq = PROTEIN.decode(rec.tokens)
        assert rec.tokens.dtype == np.uint8 and len(seq) >= 100
        assert seq[0] == "M" and set(seq) <= set("ACDEFGHIKLMNPQRSTVWY")
    assert records[0].meta["path"] == str(SAMPLE)
    assert records[0].meta["description"].startswith(records[0].id + " phage lambda")

    out = tmp_path / "copy.fa"
    PROTEIN.write(records, out)
    lines = out.read_text().splitlines()
    assert lines[0] == ">" + records[0].id
    assert max(len(line) for line in lines if not line.startswith(">")) == 60
    back = list(PROTEIN.read(out))
    assert [r.id for r in back] == [r.id for r in records]
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(back, records))


def test_gzip_round_trip_and_gzip_input(tmp_path):
    rng = np.random.default_rng(0)
    records = [Record(f"p{i}", rng.integers(2, 24, size=n).astype(np.uint8))
               for i, n in enumerate([1, 59, 60, 61, 500])]
    out = tmp_path / "many.fa.gz"
    PROTEIN.write(records, out)
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    back = list(PROTEIN.read(out))
    assert [r.id for r in back] == [r.id for r in records]
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(back, records))
    # gzip is found by its magic bytes, not by the name; a gzipped copy of the sample reads
    packed = write(tmp_path, gzip.compress(SAMPLE.read_bytes()), "sample.txt")
    assert [r.id for r in PROTEIN.read(packed)] == [r.id for r in PROTEIN.read(SAMPLE)]
    # the same records give the same bytes
    again = tmp_path / "again.fa.gz"
    PROTEIN.write(records, again)
    assert again.read_bytes() == out.read_bytes()


def test_headers_whitespace_and_case(tmp_path):
    path = write(tmp_path, b">sp|P1|X first protein\nmkv LEE\r\n\n*\n>second\tdesc\nACGT\n")
    records = list(PROTEIN.read(path))
    assert [r.id for r in records] == ["sp|P1|X", "second"]
    assert [PROTEIN.decode(r.tokens) for r in records] == ["MKVLEE*", "ACGT"]
    assert records[0].meta["description"] == "sp|P1|X first protein"


def test_read_many_checks_ids_across_files(tmp_path):
    a = write(tmp_path, b">x\nMK\n", "a.fa")
    b = write(tmp_path, b">y\nMV\n", "b.fa")
    c = write(tmp_path, b">x\nMW\n", "c.fa")
    assert [r.id for r in PROTEIN.read_many([a, b])] == ["x", "y"]
    with pytest.raises(InputError, match=starts(c) + rf"duplicate record id 'x' \(first seen "
                       rf"in {re.escape(str(a))}\)"):
        list(PROTEIN.read_many([a, c]))
    with pytest.raises(InputError, match="no such file"):
        PROTEIN.read_many([a, tmp_path / "missing.fa"])  # raised before iterating


def test_read_pieces_gives_whole_records():
    pieces = list(PROTEIN.read_pieces(SAMPLE))
    assert len(pieces) == 20 and all(p.first and p.last for p in pieces)


# ---- the DNA-looking guard ----------------------------------------------------------------

def test_dna_looking_record_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    bases = "".join(rng.choice(list("ACGT"), size=100))
    path = write(tmp_path, f">pep\nMKVLEE\n>cds some gene\n{bases[:60]}\n{bases[60:]}\n".encode())
    with pytest.raises(InputError, match=starts(path) + r"looks like a DNA FASTA \(record 'cds': "
                       r"100 of its 100 letters .*use the dna domain"):
        list(PROTEIN.read(path))
    # lowercase, U (RNA) and a few Ns count too; the guard wins over an alignment gap
    rna = bases.lower().replace("t", "u")[:50] + "NN-" + bases[50:]
    path = write(tmp_path, f">rna\n{rna}\n".encode(), "rna.fa")
    with pytest.raises(InputError, match="looks like a DNA FASTA"):
        list(PROTEIN.read(path))
    # the shared lambda genome is DNA
    lam = REPO / "data" / "dna" / "lambda_phage.fa.gz"
    with pytest.raises(InputError, match=starts(lam) + "looks like a DNA FASTA"):
        list(PROTEIN.read(lam))


@pytest.mark.parametrize("seq", [
    "ACGT",  # a short honest peptide
    "ACGTACGTAC",  # 10 letters
    "GATTACAGATTACAGATTACAGATTACAG",  # 29 letters: below the length floor
    "G" * 60,  # a poly-Gly run: only one of A, C, G, T
    "GGGGAGGGGAGGGGAGGGGAGGGGAGGGGA",  # a Gly/Ala linker: two of them
    "NNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNNN",  # poly-Asn
])
def test_peptides_are_not_called_dna(tmp_path, seq):
    path = write(tmp_path, f">pep\n{seq}\n".encode())
    (rec,) = PROTEIN.read(path)
    assert PROTEIN.decode(rec.tokens) == seq


# ---- bad input: every case names the file -------------------------------------------------

TRUNCATED_GZIP = gzip.compress(b"".join(b">r%d\nMKV\n" % i for i in range(200)))[:40]


@pytest.mark.parametrize("content, message", [
    (b"", r"empty file \(0 bytes\)"),
    (b"\n\n", r"no FASTA records found \(expected lines starting with '>'\)"),
    (gzip.compress(b""), "no FASTA records found"),
    (b"just some text\nMKV\n", r"not a FASTA file \(the first line does not start with '>'\)"),
    (b"LOCUS       X 10 aa\n", "not a FASTA file"),
    (b">r1\nMKV\n>r2\n\n>r3\nM\n", r"record 'r2' has no sequence \(zero length\)"),
    (b">r1\nMKV\n>r3\n", "record 'r3' has no sequence"),
    (b">r1\nMKV\n>r1 again\nM\n", "duplicate record id 'r1'"),
    (b">\nMKV\n", "record 1 has no id"),
    (b">r1\nMKV\n>r2\nMKVLEE\nWK-A\n", r"record 'r2': unknown character '-' at position 9 "
                                        r"\(an alignment gap"),
    (b">r\nMK7V\n", "record 'r': unknown character '7' at position 3"),
    (b">r\nMK\xffV\n", r"record 'r': unknown character '\ufffd' at position 3 \(not valid UTF-8"),
    (TRUNCATED_GZIP, "corrupt or truncated gzip file"),
    (b"\x1f\x8bnot really gzip", "corrupt or truncated gzip file"),
])
def test_bad_content(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(InputError, match=starts(path) + message):
        list(PROTEIN.read(path))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match=starts(tmp_path / "nope.fa") + "no such file"):
        PROTEIN.read(tmp_path / "nope.fa")
    with pytest.raises(InputError, match=starts(tmp_path) + "is a directory"):
        PROTEIN.read(tmp_path)


def test_shared_protein_fasta_reads():
    path = SHARED / "bad_protein.fna"  # "bad" for the DNA domain: a real protein
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    (rec,) = PROTEIN.read(path)
    assert rec.id == "protein" and PROTEIN.decode(rec.tokens).startswith("MIKIGIVDDH")


# ---- atomic writes ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["out.fa", "out.fa.gz"])
def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, name):
    out = tmp_path / name
    out.write_bytes(b"precious")

    def records():
        yield Record("ok", PROTEIN.encode("MKV"))
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        PROTEIN.write(records(), out)
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]

    for bad in ([Record("has space", PROTEIN.encode("M"))], [Record("empty", np.array([1]))],
                [Record("a", PROTEIN.encode("M")), Record("a", PROTEIN.encode("K"))]):
        with pytest.raises(InputError, match=starts(out)):
            PROTEIN.write(bad, out)
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]

    # a new file is not created at all when the write fails
    fresh = tmp_path / ("fresh_" + name)
    with pytest.raises(RuntimeError, match="interrupted"):
        PROTEIN.write(records(), fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]

    PROTEIN.write([Record("new", PROTEIN.encode("MK*"))], out)
    data = out.read_bytes()
    assert (gzip.decompress(data) if name.endswith(".gz") else data) == b">new\nMK*\n"


# ---- properties ---------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="ACDEFGHIKLMNPQRSTVWYX*acdefghiklmnpqrstvwyx", max_size=300))
def test_random_sequences_round_trip(seq):
    assert PROTEIN.decode(PROTEIN.encode(seq)) == seq.upper()


def _fasta_like() -> st.SearchStrategy[bytes]:
    chunk = st.sampled_from([b">", b"\n", b"\r\n", b" ", b"MKV", b"acgt", b"id", b"B", b"*",
                             b"-", b"\xff", b"\x00", b"\t", b">r1\n", b">r2 desc\n"])
    return st.lists(chunk, max_size=40).map(b"".join)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200), _fasta_like()), gz=st.booleans())
def test_random_bytes_give_records_or_input_error(tmp_path, data, gz):
    path = tmp_path / "random.fa"
    path.write_bytes(gzip.compress(data) if gz else data)
    try:
        records = list(PROTEIN.read(path))
    except InputError as e:
        assert str(e).startswith(f"{path}: ")
        return
    assert records and len({r.id for r in records}) == len(records)
    copy = tmp_path / "copy.fa.gz"
    PROTEIN.write(records, copy)
    back = list(PROTEIN.read(copy))
    assert [r.id for r in back] == [r.id for r in records]
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(back, records))
