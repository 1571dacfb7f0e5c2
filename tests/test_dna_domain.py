"""DNA domain: FASTA <-> tokens, options, reverse complement, bad input, atomic writes."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqformer.domains import InputError, Record, get_domain
from seqformer.domains.dna import DNADomain

REPO = Path(__file__).resolve().parents[1]
LAMBDA = REPO / "data" / "dna" / "lambda_phage.fa.gz"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dna"


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def starts(path: Path) -> str:
    """Regex for an error message that begins with the file's path."""
    return "^" + re.escape(str(path)) + ": "


def fasta_text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data).decode()


# ---- vocabulary and options -------------------------------------------------------------

def test_vocabulary_is_fixed_whatever_the_options():
    expected = ["<pad>", "<sep>", "A", "C", "G", "T", "N", "a", "c", "g", "t", "n"]
    for softmask in ("upper", "keep"):
        for iupac in ("n", "error"):
            dna = get_domain("dna", softmask=softmask, iupac=iupac)
            assert isinstance(dna, DNADomain)
            assert list(dna.tokens) == expected and dna.vocab_size == 12
            assert (dna.pad_id, dna.sep_id) == (0, 1)
            assert dna.config() == {"softmask": softmask, "iupac": iupac}
            assert dna.vocabulary()["config"] == dna.config()


@pytest.mark.parametrize("options", [{"softmask": "lower"}, {"iupac": "x"}])
def test_bad_options(options):
    with pytest.raises(InputError, match="must be"):
        DNADomain(**options)


def test_softmask_upper_and_keep():
    assert DNADomain().decode(DNADomain().encode("ACgtNn")) == "ACGTNN"
    keep = DNADomain(softmask="keep")
    assert keep.encode("ACgtNn").tolist() == [2, 3, 9, 10, 6, 11]
    assert keep.decode(keep.encode("ACgtNn")) == "ACgtNn"


def test_iupac_codes():
    codes = "RYSWKMBDHV"
    assert DNADomain().decode(DNADomain().encode(codes + codes.lower())) == "N" * 20
    keep = DNADomain(softmask="keep")
    assert keep.decode(keep.encode(codes + codes.lower())) == "N" * 10 + "n" * 10
    with pytest.raises(InputError, match="'R' at position 3"):
        DNADomain(iupac="error").encode("ACRT")


def test_encode_rejects_rna_and_ignores_whitespace():
    with pytest.raises(InputError, match=r"'U' at position 4 \(RNA"):
        DNADomain().encode("ACG U")
    assert DNADomain().encode("AC\nG T").tolist() == [2, 3, 4, 5]
    assert DNADomain().encode("").dtype == np.uint8


def test_decode_drops_pad_and_sep():
    assert DNADomain().decode(np.array([1, 2, 0, 6, 5, 0])) == "ANT"
    assert DNADomain().decode([]) == ""
    with pytest.raises(ValueError, match="token ids"):
        DNADomain().decode(np.array([12]))


def test_reverse_complement():
    dna = DNADomain(softmask="keep")
    assert dna.decode(dna.reverse_complement(dna.encode("AACGTNacgtn"))) == "nacgtNACGTT"
    tokens = np.array([1, 2, 3, 0], np.int64)
    rc = dna.reverse_complement(tokens)
    assert rc.tolist() == [0, 4, 5, 1] and rc.dtype == np.int64  # pad/sep kept, dtype kept
    batch = np.random.default_rng(0).integers(0, 12, size=(3, 50))
    assert (dna.reverse_complement(dna.reverse_complement(batch)) == batch).all()
    assert (dna.reverse_complement(batch)[1] == dna.reverse_complement(batch[1])).all()


# ---- reading and writing ------------------------------------------------------------------

def test_lambda_round_trip(tmp_path):
    dna = get_domain("dna")
    (rec,) = dna.read(LAMBDA)
    assert rec.id == "gi|9626243|ref|NC_001416.1|"
    assert rec.tokens.dtype == np.uint8 and rec.tokens.ndim == 1 and len(rec.tokens) == 48502
    assert rec.meta == {"path": str(LAMBDA), "description": rec.id
                        + " Enterobacteria phage lambda, complete genome"}
    original = "".join(fasta_text(LAMBDA).splitlines()[1:])
    assert dna.decode(rec.tokens) == original

    out = tmp_path / "lambda.fa"
    dna.write([rec], out)
    lines = out.read_text().splitlines()
    assert lines[0] == ">" + rec.id
    assert {len(line) for line in lines[1:-1]} == {60} and 0 < len(lines[-1]) <= 60
    (back,) = dna.read(out)
    assert back.id == rec.id and np.array_equal(back.tokens, rec.tokens)


def test_multi_record_gzip_round_trip(tmp_path):
    dna = DNADomain(softmask="keep")
    rng = np.random.default_rng(1)
    records = [Record(f"chr{i}", rng.integers(2, 12, size=n).astype(np.uint8))
               for i, n in enumerate([1, 59, 60, 61, 1000])]
    out = tmp_path / "many.fa.gz"
    dna.write(records, out)
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    back = list(dna.read(out))
    assert [r.id for r in back] == [r.id for r in records]
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(back, records))
    # gzip is found by its magic bytes, not by the name
    renamed = tmp_path / "many.txt"
    renamed.write_bytes(out.read_bytes())
    assert [r.id for r in dna.read(renamed)] == [r.id for r in records]
    # the same records give the same bytes (no time stamp or temp name in the gzip header)
    again = tmp_path / "again.fa.gz"
    dna.write(records, again)
    assert again.read_bytes() == out.read_bytes()


def test_read_softmask_and_iupac_from_file(tmp_path):
    path = tmp_path / "mixed.fa"
    path.write_text(">a first\nACgt\nnRy\n\n>b\r\nAC GT\r\n")
    upper = {r.id: DNADomain().decode(r.tokens) for r in DNADomain().read(path)}
    assert upper == {"a": "ACGTNNN", "b": "ACGT"}
    keep = DNADomain(softmask="keep")
    assert [keep.decode(r.tokens) for r in keep.read(path)] == ["ACgtnNn", "ACGT"]


def test_read_many_checks_ids_across_files(tmp_path):
    a, b, c = tmp_path / "a.fa", tmp_path / "b.fa", tmp_path / "c.fa"
    a.write_text(">x\nACGT\n")
    b.write_text(">y\nGG\n")
    c.write_text(">x\nTT\n")
    dna = DNADomain()
    assert [r.id for r in dna.read_many([a, b])] == ["x", "y"]
    message = starts(c) + rf"duplicate record id 'x' \(first seen in {re.escape(str(a))}\)"
    with pytest.raises(InputError, match=message):
        list(dna.read_many([a, c]))
    with pytest.raises(InputError, match="no such file"):
        dna.read_many([a, tmp_path / "missing.fa"])  # raised before iterating


# ---- bad input: every case names the file -------------------------------------------------

@pytest.mark.parametrize("name, message", [
    ("bad_empty.fna", "record 'empty' has no sequence"),
    ("bad_null.fna", r"empty file \(0 bytes\)"),
    ("bad_dupid.fna", "duplicate record id 'dupid'"),
    ("bad_protein.fna", "looks like a protein FASTA"),
])
def test_shared_bad_files(name, message):
    path = shared(name)
    with pytest.raises(InputError, match=starts(path) + message):
        list(DNADomain().read(path))


TRUNCATED_GZIP = gzip.compress(b"".join(b">r%d\nACGT\n" % i for i in range(200)))[:40]


@pytest.mark.parametrize("content, message", [
    (b"just some text\nACGT\n", r"not a FASTA, GenBank or EMBL file \(the first line"),
    (b">r1\nACGT\n>r2\n\n>r3\nA\n", "record 'r2' has no sequence"),
    (b">r1\nACGT\n>r1 again\nA\n", "duplicate record id 'r1'"),
    (b">\nACGT\n", "record 1 has no id"),
    (b">ok\nACGT\n>r2\nACGTAC\nGTXA\n", "record 'r2': unknown character 'X' at position 9"),
    (b">rna\nACGU\n", r"record 'rna': unknown character 'U' at position 4 \(RNA"),
    (b">r\nAC\xffGT\n", r"record 'r': unknown character '\ufffd' at position 3 \(not valid UTF-8"),
    (b">p\nMKVLEEFQPILSLEQ\n", "looks like a protein FASTA"),
    (TRUNCATED_GZIP, "corrupt or truncated gzip file"),
    (b"\x1f\x8bnot really gzip", "corrupt or truncated gzip file"),
    (gzip.compress(b""), "no FASTA records found"),
])
def test_bad_content(tmp_path, content, message):
    path = tmp_path / "bad.fa"
    path.write_bytes(content)
    with pytest.raises(InputError, match=starts(path) + message):
        list(DNADomain().read(path))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match=starts(tmp_path / "nope.fa") + "no such file"):
        DNADomain().read(tmp_path / "nope.fa")
    with pytest.raises(InputError, match=starts(tmp_path) + "is a directory"):
        DNADomain().read(tmp_path)


# ---- atomic writes ----------------------------------------------------------------------

def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    out = tmp_path / "out.fa.gz"
    out.write_bytes(b"precious")

    def records():
        yield Record("ok", np.array([2, 3, 4], np.uint8))
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        DNADomain().write(records(), out)
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fa.gz"]

    for bad in (Record("has space", np.array([2], np.uint8)), Record("empty", np.array([1]))):
        with pytest.raises(InputError, match=starts(out)):
            DNADomain().write([bad], out)
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fa.gz"]

    DNADomain().write([Record("new", np.array([2, 3], np.uint8))], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fa.gz"]
    assert gzip.decompress(out.read_bytes()) == b">new\nAC\n"


# ---- properties ---------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ACGTNacgtn", min_size=1, max_size=300))
def test_random_sequences_round_trip(seq):
    keep = DNADomain(softmask="keep")
    assert keep.decode(keep.encode(seq)) == seq
    assert DNADomain().decode(DNADomain().encode(seq)) == seq.upper()
    rc = keep.reverse_complement(keep.encode(seq))
    assert np.array_equal(keep.reverse_complement(rc), keep.encode(seq))


def _fasta_like() -> st.SearchStrategy[bytes]:
    chunk = st.sampled_from([b">", b"\n", b"\r\n", b" ", b"ACGT", b"acgtn", b"id", b"R", b"U",
                             b"E", b"\xff", b"\x00", b"\t", b">r1\n", b">r2 desc\n"])
    return st.lists(chunk, max_size=40).map(b"".join)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200), _fasta_like()),
       how=st.sampled_from(["plain", "gzip", "truncated gzip"]))
def test_random_bytes_give_records_or_input_error(tmp_path, data, how):
    if how != "plain":
        data = gzip.compress(data)
        if how == "truncated gzip":
            data = data[: len(data) // 2]
    path = tmp_path / "random.fa"
    path.write_bytes(data)
    try:
        records = list(DNADomain().read(path))
    except InputError as e:
        assert str(e).startswith(f"{path}: ")
        return
    assert records and len({r.id for r in records}) == len(records)
    for r in records:
        assert r.tokens.dtype == np.uint8 and len(r.tokens) > 0 and r.tokens.max() < 12
    # whatever was read writes back and reads again unchanged
    copy = tmp_path / "copy.fa.gz"
    DNADomain().write(records, copy)
    back = list(DNADomain().read(copy))
    assert [r.id for r in back] == [r.id for r in records]
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(back, records))


# ---- streaming: a long record arrives in pieces --------------------------------------------

def test_long_records_stream_in_pieces_and_positions_count_across_them(tmp_path, monkeypatch):
    import seqformer.domains.dna as dna_module

    monkeypatch.setattr(dna_module, "_PIECE_BYTES", 64)  # a piece every ~64 bytes of lines
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGT"), size=1000))
    path = tmp_path / "long.fa"
    path.write_text(">long\n" + "\n".join(seq[i:i + 60] for i in range(0, 1000, 60))
                    + "\n>short\nACGT\n")
    pieces = list(DNADomain().read_pieces(path))
    assert len(pieces) >= 10 and pieces[0].first and not pieces[0].last
    assert [p.id for p in pieces if p.last] == ["long", "short"]
    records = list(DNADomain().read(path))
    assert DNADomain().decode(records[0].tokens) == seq
    assert np.array_equal(np.concatenate([p.tokens for p in pieces if p.id == "long"]),
                          records[0].tokens)

    bad = seq[:777] + "X" + seq[778:]  # far into the record: many pieces before it
    path.write_text(">long\n" + "\n".join(bad[i:i + 60] for i in range(0, 1000, 60)) + "\n")
    with pytest.raises(InputError, match="unknown character 'X' at position 778"):
        list(DNADomain().read(path))
