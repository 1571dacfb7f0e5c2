"""GenBank and EMBL input through Biopython, wherever a FASTA is accepted: the same tokens
as Biopython's sequence, gzip told by content, and one clear error for each bad file
(shipped copies of the shared annotated records)."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from Bio import SeqIO

from seqformer.domains import Record, get_domain
from seqformer.domains.annotations import feature_tokens, select
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


# -- one score per feature ------------------------------------------------------------------
def test_feature_tokens_equal_biopythons_extract():
    """The chloroplast's 85 CDS (joins, both strands): each feature's tokens are
    SeqFeature.extract's, and its context is the record's bases 5' of it on its strand."""
    (record,) = DNA.read(CHLOROPLAST)
    bio = biopython_record(CHLOROPLAST)
    cds = select(record.meta["features"], {"CDS"})
    bio_cds = [f for f in bio.features if f.type == "CDS"]
    assert len(cds) == len(bio_cds) == 85
    joined = [f for f in cds if len(f.parts) > 1]
    minus = [f for f in cds if f.strand == -1]
    assert joined and minus and any(f.strand == -1 for f in joined)
    seq = str(bio.seq).upper()
    for ours, theirs in zip(cds, bio_cds):
        context, body = feature_tokens(record.tokens, ours, 50, DNA.reverse_complement)
        assert DNA.decode(body) == str(theirs.extract(bio.seq)).upper(), ours.id
        assert ours.length == len(theirs) == len(body)
        start, end, strand = ours.parts[0]
        want = (seq[max(0, start - 50):start] if strand > 0 else
                DNA.decode(DNA.reverse_complement(DNA.encode(seq[end:end + 50]))))
        assert DNA.decode(context) == want, ours.id


def test_score_features_one_row_per_feature(tiny_dna_run, tmp_path):
    tsv = tmp_path / "cds.tsv"
    code, text = run_cli("score", "dna", "--model", tiny_dna_run, "--fasta", CHLOROPLAST,
                         "--features", "CDS,rRNA", "--out", tsv)
    assert code == 0, text
    rows = [line.split("\t") for line in tsv.read_text().strip().split("\n")]
    assert rows[0] == ["id", "type", "record", "location", "strand", "length",
                       "total_ll_nats", "bits_per_base"]
    (record,) = DNA.read(CHLOROPLAST)
    want = select(record.meta["features"], {"CDS", "rRNA"})
    assert len(rows) - 1 == len(want) and sum(r[1] == "CDS" for r in rows[1:]) == 85
    assert [(r[0], r[1], int(r[5])) for r in rows[1:]] == [(f.id, f.type, f.length)
                                                         for f in want]
    assert all(r[2] == "NC_000932.1" for r in rows[1:])
    # rps12 is trans-spliced: its parts lie on both strands, so it has none
    assert [r[0] for r in rows[1:] if r[4] not in "+-"] == ["ArthCp047"]
    bits = np.array([float(r[7]) for r in rows[1:]])
    assert np.isfinite(bits).all() and (bits > 0).all()


def test_a_feature_score_is_its_tokens_log_likelihood_after_its_context(tiny_dna_run):
    """Against a plain forward: [sep] + context + feature through the model, summed over
    the feature's positions (one window holds it all)."""
    import torch

    from seqformer.pipeline.inference import feature_records, score_features
    from seqformer.pipeline.run_dir import load_run

    model, domain, cfg = load_run(tiny_dna_run, "dna")
    (record,) = DNA.read(PLASMID)
    feature = next(f for f in record.meta["features"] if f.type == "CDS" and f.strand == -1
                   and f.length < 400)
    pairs = feature_records([record], {"CDS"}, 40, 512, DNA.reverse_complement)
    ((got, ll),) = [s for s in score_features(model, pairs, DNA.sep_id, 512)
                    if s[0].id == feature.id]
    context, body = feature_tokens(record.tokens, feature, 40, DNA.reverse_complement)
    tokens = torch.tensor(np.concatenate([[DNA.sep_id], context, body]))[None].long()
    with torch.no_grad():
        want = -model.loss(tokens, reduction="none")[0, len(context):].sum().item()
    assert got.id == feature.id and ll == pytest.approx(want, rel=1e-5)


def test_features_need_annotated_input_and_100_n_is_finite(tiny_dna_run, tmp_path):
    from Bio.Seq import Seq
    from Bio.SeqFeature import FeatureLocation, SeqFeature
    from Bio.SeqRecord import SeqRecord

    fasta = tmp_path / "x.fa"
    fasta.write_text(">x\nACGTACGTAC\n")
    code, text = run_cli("score", "dna", "--model", tiny_dna_run, "--fasta", fasta,
                         "--features", "CDS")
    assert code == 2 and "needs annotated input" in text
    code, text = run_cli("score", "dna", "--model", tiny_dna_run, "--fasta", PLASMID,
                         "--features", "tRNA")
    assert code == 2 and "none in the input" in text and "CDS" in text
    rec = SeqRecord(Seq("N" * 100), id="allN", name="allN",
                    annotations={"molecule_type": "DNA"},
                    features=[SeqFeature(FeatureLocation(10, 70, strand=-1), type="CDS",
                                         qualifiers={"locus_tag": ["n1"]})])
    gb = tmp_path / "n.gb"
    SeqIO.write(rec, gb, "genbank")
    tsv = tmp_path / "n.tsv"
    code, text = run_cli("score", "dna", "--model", tiny_dna_run, "--fasta", gb,
                         "--features", "CDS", "--out", tsv)
    assert code == 0, text
    row = tsv.read_text().strip().split("\n")[1].split("\t")
    assert row[0] == "n1" and row[4] == "-" and row[5] == "60"
    assert np.isfinite(float(row[6])) and np.isfinite(float(row[7]))


def test_embed_features_one_entry_per_feature(tiny_dna_run, tmp_path):
    """The chloroplast's 85 CDS: 85 HDF5 entries in feature order, each as long as its
    feature, with its fields; a feature's embedding is the hidden states of its own bases
    read after its context."""
    import h5py
    import torch

    from seqformer.pipeline.inference import feature_records
    from seqformer.pipeline.run_dir import load_run

    out = tmp_path / "cds.h5"
    code, text = run_cli("embed", "dna", "--model", tiny_dna_run, "--fasta", CHLOROPLAST,
                         "--features", "CDS", "--pool", "mean", "--out", out)
    assert code == 0, text
    (record,) = DNA.read(CHLOROPLAST)
    cds = select(record.meta["features"], {"CDS"})
    with h5py.File(out) as f:
        assert [s.decode() for s in f["ids"]] == [c.id for c in cds]
        assert f["pooled"].shape == (85, 32)
        for n, c in enumerate(cds):
            ds = f[f"embeddings/{n}"]
            assert ds.shape == (c.length, 32)
            assert (ds.attrs["type"], ds.attrs["strand"], ds.attrs["location"]) == (
                c.type, c.strand, c.location)
        short = next(n for n, c in enumerate(cds) if c.length < 150)
        got = f[f"embeddings/{short}"][:]
    model, _, _ = load_run(tiny_dna_run, "dna")
    ((_, rec),) = [p for p in feature_records([record], {"CDS"}, None, 256,
                                              DNA.reverse_complement) if p[0].id == cds[short].id]
    tokens = torch.tensor(np.concatenate([[DNA.sep_id], rec.tokens]))[None].long()
    with torch.no_grad():
        want = model.hidden_states(tokens)[0, 1 + rec.meta["context"]:].numpy()
    assert np.allclose(got, want, atol=2e-2)  # stored as float16


def test_bed_regions_equal_the_same_features(tiny_dna_run, tmp_path):
    """BED6 regions at the plasmid's single-part CDS (strand respected) score as the CDS
    themselves; a region outside its record is a clean error that writes nothing."""
    (record,) = DNA.read(PLASMID)
    cds = [f for f in select(record.meta["features"], {"CDS"}) if len(f.parts) == 1]
    fasta = tmp_path / "plasmid.fa"
    DNA.write([record], fasta)
    bed = tmp_path / "cds.bed"
    bed.write_text("".join(f"{record.id}\t{f.parts[0][0]}\t{f.parts[0][1]}\t{f.id}\t0\t"
                           f"{'+' if f.strand > 0 else '-'}\n" for f in cds))
    by_bed, by_gb = tmp_path / "bed.tsv", tmp_path / "gb.tsv"
    code, text = run_cli("score", "dna", "--model", tiny_dna_run, "--fasta", fasta,
                         "--regions", bed, "--out", by_bed)
    assert code == 0, text
    code, text = run_cli("score", "dna", "--model", tiny_dna_run, "--fasta", PLASMID,
                         "--features", "CDS", "--out", by_gb)
    assert code == 0, text
    bed_rows = [r.split("\t") for r in by_bed.read_text().strip().split("\n")[1:]]
    gb_rows = {r.split("\t")[0]: r.split("\t") for r in by_gb.read_text().strip().split("\n")[1:]}
    assert len(bed_rows) == len(cds)
    for row in bed_rows:
        want = gb_rows[row[0]]
        assert row[1] == "region" and row[4:6] == want[4:6]
        assert float(row[6]) == pytest.approx(float(want[6]), rel=1e-6)
    bed.write_text(f"{record.id}\t9000\t9700\tout\n")
    code, text = run_cli("score", "dna", "--model", tiny_dna_run, "--fasta", fasta,
                         "--regions", bed, "--out", tmp_path / "x.tsv")
    assert code == 2 and "line 1: 9000-9700 is not a region inside" in text
    assert not (tmp_path / "x.tsv").exists()


def test_bigwig_reads_back_as_the_bedgraph(tiny_dna_run, tmp_path, monkeypatch):
    import sys

    import pyBigWig

    (record,) = DNA.read(PLASMID)
    fasta = tmp_path / "two.fa"
    DNA.write([Record("left", record.tokens[:5000]), Record("right", record.tokens[5000:])],
              fasta)
    bw_path, bg_path = tmp_path / "ll.bw", tmp_path / "ll.bedgraph"
    for path in (bw_path, bg_path):
        code, text = run_cli("score", "dna", "--model", tiny_dna_run, "--fasta", fasta,
                             "--per-base", path)
        assert code == 0, text
    rows = [line.split("\t") for line in bg_path.read_text().strip().split("\n")[1:]]
    bw = pyBigWig.open(str(bw_path))
    assert bw.chroms() == {"left": 5000, "right": 4609}
    for chrom, size in bw.chroms().items():
        want = np.array([float(r[3]) for r in rows if r[0] == chrom])
        assert len(want) == size
        assert np.allclose(bw.values(chrom, 0, size, numpy=True), want, atol=1e-5)
    bw.close()
    monkeypatch.setitem(sys.modules, "pyBigWig", None)  # as if not installed
    code, text = run_cli("score", "dna", "--model", tiny_dna_run, "--fasta", fasta,
                         "--per-base", tmp_path / "x.bw")
    assert code == 2 and "seqformer[tracks]" in text and not (tmp_path / "x.bw").exists()
