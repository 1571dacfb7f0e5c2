"""apps/variant_effect: the strict VCF parser, the windows, strand symmetry and the CLI, on
a tiny model trained for two steps."""

import gzip
import sys

import numpy as np
import pytest

from seqformer.domains import get_domain
from seqformer.errors import InputError
from seqformer.pipeline.inference import token_log_likelihoods
from seqformer.pipeline.run_dir import load_run

from cli_helpers import REPO

sys.path.insert(0, str(REPO / "apps" / "variant_effect"))
import variant_effect as ve  # noqa: E402

LAMBDA = REPO / "data" / "dna" / "lambda_phage.fa.gz"
EXAMPLE_VCF = REPO / "apps" / "variant_effect" / "lambda_example.vcf"
DNA = get_domain("dna")
HEADER = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
# chr1: ACGTTGCAAC GGTACCATGA (20 bases)
REFERENCE = {"chr1": DNA.encode("ACGTTGCAACGGTACCATGA"), "chr2": DNA.encode("TTTT")}


@pytest.fixture(scope="module")
def trained(tiny_dna_run):
    return tiny_dna_run


@pytest.fixture(scope="module")
def model(trained):
    model, domain, cfg = load_run(trained, "dna")
    return model


@pytest.fixture(scope="module")
def lambda_start():
    """The first 1,500 bases of lambda: a real sequence, small enough to score quickly."""
    return "".join(gzip.open(LAMBDA, "rt").read().split("\n")[1:])[:1500]


def write_vcf(tmp_path, body: str):
    path = tmp_path / "v.vcf"
    path.write_text(HEADER + body)
    return path


# ---- parser ---------------------------------------------------------------------------


def test_parser_reads_snvs_indels_and_splits_multiallelic(tmp_path):
    path = write_vcf(tmp_path, "chr1\t2\trs1\tC\tT\t.\t.\t.\n"
                               "\n"
                               "chr1\t5\t.\tt\tA,tgg\t50\tPASS\tDP=3\n"   # lower case is fine
                               "chr1\t11\tdel\tGGTA\tG\n"                  # 5 columns suffice
                               "chr2\t4\t.\tT\tTC,C\n")
    got = [(v.chrom, v.pos, v.id, v.ref, v.alt, v.kind, v.line)
           for v in ve.parse_vcf(path, REFERENCE, DNA)]
    assert got == [("chr1", 2, "rs1", "C", "T", "SNV", 3),
                   ("chr1", 5, ".", "T", "A", "SNV", 5),
                   ("chr1", 5, ".", "T", "TGG", "INS", 5),
                   ("chr1", 11, "del", "GGTA", "G", "DEL", 6),
                   ("chr2", 4, ".", "T", "TC", "INS", 7),
                   ("chr2", 4, ".", "T", "C", "SNV", 7)]


@pytest.mark.parametrize("line, message", [
    ("chr1\t2\t.\tC", "expected at least 5 tab-separated columns"),
    ("chr1 2 . C T", "columns must be separated by tabs"),
    ("chrX\t2\t.\tC\tT", "unknown CHROM 'chrX'; the reference has: chr1, chr2"),
    ("chr1\ttwo\t.\tC\tT", "POS 'two' is not a positive integer"),
    ("chr1\t-3\t.\tC\tT", "POS '-3' is not a positive integer"),
    ("chr1\t0\t.\tC\tT", "POS 0 (REF C) is out of range: chr1 has 20 bases"),
    ("chr1\t21\t.\tA\tT", "POS 21 (REF A) is out of range"),
    ("chr1\t19\t.\tGAC\tG", "POS 19 (REF GAC) is out of range"),  # REF runs off the end
    ("chr1\t2\t.\tG\tT", "REF G does not match the reference, which has C at chr1:2"),
    ("chr1\t2\t.\tCGTA\tC", "REF CGTA does not match the reference, which has CGTT"),
    ("chr1\t2\t.\tC\t<DEL>", "ALT <DEL>: symbolic alleles are not supported"),
    ("chr1\t2\t.\tC\tC[chr1:5[", "breakend alleles are not supported"),
    ("chr1\t2\t.\tC\tT,*", "ALT '*' (an overlapping deletion) is not supported"),
    ("chr1\t2\t.\tC\t.", "ALT is empty ('.')"),
    ("chr1\t2\t.\tC\tT,,G", "ALT is empty"),
    ("chr1\t2\t.\tC\tCRT", "ALT 'CRT': only the bases A, C, G, T, N are supported"),
    ("chr1\t2\t.\tC\tc", "ALT C equals REF: not a variant"),
    ("#CHROM POS ID REF ALT", "header line must start with the tab-separated columns"),
])
def test_parser_rejects_bad_lines_naming_file_and_line(tmp_path, line, message):
    # two good lines first, so the bad one is line 5 of the file
    path = write_vcf(tmp_path, "chr1\t1\t.\tA\tG\nchr1\t3\t.\tG\tA\n" + line + "\n")
    with pytest.raises(InputError) as e:
        ve.parse_vcf(path, REFERENCE, DNA)
    assert str(e.value).startswith(f"{path}: line 5: ")
    assert message in str(e.value)


def test_parser_rejects_a_vcf_without_variants(tmp_path):
    with pytest.raises(InputError, match="no variants found"):
        ve.parse_vcf(write_vcf(tmp_path, ""), REFERENCE, DNA)
    with pytest.raises(InputError, match="no such file"):
        ve.parse_vcf(tmp_path / "missing.vcf", REFERENCE, DNA)


def test_example_vcf_matches_the_bundled_genome():
    reference = ve.read_reference(LAMBDA, DNA)
    variants = ve.parse_vcf(EXAMPLE_VCF, reference, DNA)
    kinds = [v.kind for v in variants]
    assert len(variants) == 17 and {"SNV", "MNV", "INS", "DEL"} == set(kinds)


# ---- windows --------------------------------------------------------------------------


@pytest.mark.parametrize("width", [41, 40])
@pytest.mark.parametrize("ref, alt", [("C", "T"), ("C", "CAGT"), ("CGTAGGA", "C"),
                                      ("CG", "AT"), ("CGT", "C")])
def test_windows_have_equal_length_and_are_centred(ref, alt, width):
    rng = np.random.default_rng(0)
    seq = rng.integers(2, 6, 300).astype(np.uint8)  # random A/C/G/T tokens
    start = 150
    seq[start:start + len(ref)] = DNA.encode(ref)
    v = ve.Variant("chr1", start + 1, ".", ref, alt, 1)
    w = ve.variant_windows(seq, v, DNA, width)
    assert all(len(w[k]) == width for k in ("ref_fwd", "ref_rev", "alt_fwd", "alt_rev"))
    assert w["shifted"] is False
    alt_seq = np.concatenate([seq[:start], DNA.encode(alt), seq[start + len(ref):]])
    for allele, edited, fwd, rev in ((ref, seq, w["ref_fwd"], w["ref_rev"]),
                                     (alt, alt_seq, w["alt_fwd"], w["alt_rev"])):
        spare = width - len(allele)
        # forward: the allele in the middle, the spare base (if any) downstream
        left = spare // 2
        assert DNA.decode(fwd[left:left + len(allele)]) == allele
        assert np.array_equal(fwd, edited[start - left:start - left + width])
        assert left <= spare - left <= left + 1
        # reverse strand: the same on the reverse complement, so the spare base sits
        # upstream in forward coordinates
        back = DNA.reverse_complement(rev)
        left_rev = spare - spare // 2
        assert np.array_equal(back, edited[start - left_rev:start - left_rev + width])
        assert DNA.decode(back[left_rev:left_rev + len(allele)]) == allele


def test_windows_slide_inwards_at_chromosome_ends():
    seq = DNA.encode("ACGTTGCAACGGTACCATGA" * 3)
    for pos, ref, alt in ((2, "C", "CTT"), (59, "G", "T"), (58, "TGA", "T")):
        w = ve.variant_windows(seq, ve.Variant("c", pos, ".", ref, alt, 1), DNA, 21)
        assert w["shifted"] is True
        assert all(len(w[k]) == 21 for k in ("ref_fwd", "ref_rev", "alt_fwd", "alt_rev"))
    v = ve.Variant("c", 3, ".", "G", "GAAAAAAAAAAAAAAAAAAAAAAAA", 9)
    with pytest.raises(InputError, match="line 9: an allele of 25 bases does not fit"):
        ve.variant_width(v, len(seq), 21)


# ---- scoring --------------------------------------------------------------------------


def test_batched_window_scores_equal_token_log_likelihoods(model):
    rng = np.random.default_rng(1)
    windows = [rng.integers(2, 6, n).astype(np.uint8) for n in (50, 50, 50, 31, 50)]
    batched = ve.window_log_likelihoods(model, windows, DNA.sep_id, batch_size=2)
    single = [token_log_likelihoods(model, w, DNA.sep_id, window=64).sum() for w in windows]
    assert np.allclose(batched, single, atol=1e-4)


def test_alt_equal_to_ref_scores_exactly_zero(model, lambda_start):
    # the VCF parser refuses ALT == REF (test above); through the API it scores exactly 0,
    # since both alleles give the same windows and identical windows are scored once
    reference = {"lam": DNA.encode(lambda_start)}
    same = ve.Variant("lam", 700, ".", lambda_start[699], lambda_start[699], 1)
    snv = ve.Variant("lam", 700, ".", lambda_start[699], "A" if lambda_start[699] != "A"
                     else "C", 2)
    scores = ve.score_variants(model, DNA, reference, [same, snv], window=101)
    assert scores[0].fwd == scores[0].rev == scores[0].delta == 0.0
    assert abs(scores[1].delta) > 1e-6


def reverse_complement_variant(v, length: int):
    rc = lambda s: DNA.decode(DNA.reverse_complement(DNA.encode(s)))  # noqa: E731
    return ve.Variant(v.chrom, length - v.start - len(v.ref) + 1, v.id, rc(v.ref), rc(v.alt),
                      v.line)


@pytest.mark.parametrize("window", [101, 100])
def test_reverse_complemented_genome_and_variant_give_the_same_score(model, lambda_start,
                                                                     window):
    seq = lambda_start
    n = len(seq)
    forward = {"lam": DNA.encode(seq)}
    backward = {"lam": DNA.reverse_complement(forward["lam"])}
    variants = [ve.Variant("lam", 700, ".", seq[699], "G" if seq[699] != "G" else "T", 1),
                ve.Variant("lam", 800, ".", seq[799], seq[799] + "T", 2),       # odd insertion
                ve.Variant("lam", 900, ".", seq[899:902], seq[899], 3),         # 2-bp deletion
                ve.Variant("lam", 950, ".", seq[949:951], "AC" if seq[949:951] != "AC"
                           else "GT", 4),
                ve.Variant("lam", 20, ".", seq[19], seq[19] + "GGC", 5)]       # near the end
    a = ve.score_variants(model, DNA, forward, variants, window)
    b = ve.score_variants(model, DNA, backward,
                          [reverse_complement_variant(v, n) for v in variants], window)
    assert np.allclose([s.delta for s in a], [s.delta for s in b], atol=1e-4)
    # the strands swap roles
    assert np.allclose([s.fwd for s in a], [s.rev for s in b], atol=1e-4)
    # and they do differ, so averaging them is not a no-op
    assert max(abs(s.fwd - s.rev) for s in a) > 1e-4
    assert a[-1].shifted and b[-1].shifted and not a[0].shifted


# ---- command line ---------------------------------------------------------------------


def test_cli_scores_the_example_vcf(trained, tmp_path, capsys):
    out = tmp_path / "scores.tsv"
    args = ["--model", str(trained), "--fasta", str(LAMBDA), "--vcf", str(EXAMPLE_VCF),
            "--out", str(out), "--batch-size", "4"]
    assert ve.main(args) == 0
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert tuple(rows[0]) == ve.TSV_HEADER and len(rows) == 1 + 17
    table = {(r[1], r[4]): r for r in rows[1:]}
    assert table["39000", "A"][6] == "255" and table["39000", "T"][3] == "G"  # split
    assert table["100", "T"][11] == "1" and table["29000", "A"][11] == "0"  # slid at the end
    for r in rows[1:]:
        nats, bits, fwd, rev = map(float, (r[7], r[8], r[9], r[10]))
        assert np.isclose(nats, (fwd + rev) / 2, atol=1e-5)
        assert np.isclose(bits, nats / np.log(2), atol=1e-5)
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()

    # an existing output is refused without --force, and nothing is touched
    before = out.read_text()
    assert ve.main(args) == 2
    assert "already exists (use --force to overwrite)" in capsys.readouterr().err
    assert out.read_text() == before
    assert ve.main(args + ["--force", "--window", "101"]) == 0
    assert out.read_text().splitlines()[1].split("\t")[6] == "101"


@pytest.mark.parametrize("vcf_line, extra, message", [
    (None, ["--window", "600"], "--window 600: must be in 1..511"),
    ("chr1\t5\t.\tA\tG", [], "bad.vcf: line 2: unknown CHROM 'chr1'"),
    ("gi|9626243|ref|NC_001416.1|\t1\t.\tT\tG", [],
     "bad.vcf: line 2: REF T does not match the reference, which has G"),
])
def test_cli_errors_are_one_clean_line(trained, tmp_path, capsys, vcf_line, extra, message):
    vcf = EXAMPLE_VCF
    if vcf_line is not None:
        vcf = tmp_path / "bad.vcf"
        vcf.write_text("##fileformat=VCFv4.2\n" + vcf_line + "\n")
    code = ve.main(["--model", str(trained), "--fasta", str(LAMBDA), "--vcf", str(vcf),
                    "--out", str(tmp_path / "s.tsv"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.tsv").exists()


def test_genbank_variation_features_are_the_variants(trained, tmp_path, capsys):
    """The Yersinia plasmid's six variation features (/replace: a deletion, three
    insertions, two substitutions) scored without a VCF; REF and ALT log-likelihoods per
    strand beside their difference."""
    plasmid = REPO / "data" / "dna" / "genbank" / "yersinia_plasmid_NC_005816.gb.gz"
    variants = ve.variation_variants(plasmid, DNA)
    assert [(v.pos, v.ref, v.alt, v.kind) for v in variants] == [
        (5909, "TAA", "T", "DEL"), (5933, "A", "AA", "INS"), (5933, "A", "AAA", "INS"),
        (5948, "G", "C", "SNV"), (6525, "A", "C", "SNV"), (8529, "T", "TTT", "INS")]
    assert variants[1].id == "NC_005816.1:5933^5934(+)"
    out = tmp_path / "variation.tsv"
    assert ve.main(["--model", str(trained), "--fasta", str(plasmid), "--out", str(out)]) == 0
    rows = [dict(zip(ve.TSV_HEADER, line.split("\t")))
            for line in out.read_text().splitlines()[1:]]
    assert [int(r["pos"]) for r in rows] == [v.pos for v in variants]
    for r in rows:
        x = {k: float(v) for k, v in r.items() if k.startswith(("ll_", "delta_"))}
        assert np.isclose(x["delta_fwd_nats"], x["ll_alt_fwd"] - x["ll_ref_fwd"], atol=2e-6)
        assert np.isclose(x["delta_rev_nats"], x["ll_alt_rev"] - x["ll_ref_rev"], atol=2e-6)
        assert np.isclose(x["ll_ref_nats"], (x["ll_ref_fwd"] + x["ll_ref_rev"]) / 2, atol=2e-6)
        assert np.isclose(x["delta_nats"], x["ll_alt_nats"] - x["ll_ref_nats"], atol=2e-6)
        assert x["ll_ref_fwd"] < 0 and x["ll_alt_rev"] < 0
    capsys.readouterr()
    assert ve.main(["--model", str(trained), "--fasta", str(LAMBDA), "--out",
                    str(tmp_path / "x.tsv")]) == 2
    assert "not an annotated file" in capsys.readouterr().err
