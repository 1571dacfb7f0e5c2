"""apps/codon_design: the synonymous-codon sampling constraint, the codon metrics and
baselines, and the data preparation (Prodigal on a slice of the E. coli genome)."""

import gzip
import json
import math
import sys

import pytest
import torch
from Bio.Seq import Seq

from seqformer.core.decoding.sampling import apply_constraint, sample_next
from seqformer.domains import get_domain

from cli_helpers import REPO

APP = REPO / "apps" / "codon_design"
sys.path.insert(0, str(APP))
import baseline  # noqa: E402
import codons  # noqa: E402
import prepare  # noqa: E402
from constraint import SynonymousCodons  # noqa: E402

SAMPLE = APP / "data"
GENOME = REPO.parent / "shared" / "data" / "dna" / "ecoli_k12_mg1655.fna.gz"
TOKENS = list(get_domain("dna").tokens)
ID = {t: i for i, t in enumerate(TOKENS)}


def translate(cds: str) -> str:
    return str(Seq(cds).translate(table=11, cds=True))


@pytest.fixture(scope="module")
def sample_train():
    return prepare.load_pairs(SAMPLE, "sample_train")


@pytest.fixture(scope="module")
def usage(sample_train):
    return codons.CodonUsage.from_cds(sample_train[1].values())


@pytest.fixture(scope="module")
def real_proteins(sample_train):
    """Real proteins of different lengths (the bundled sample's shortest genes are 29+
    residues), plus hand-made ones: a single M, and one holding all 20 amino acids."""
    proteins = list(sample_train[0].values())
    picked = sorted(proteins, key=len)[::5]
    assert len({len(p) for p in picked}) > 3
    return picked + ["M", "MW", "M" + codons.AMINO_ACIDS + "LSRW"]


# ---- the constraint -------------------------------------------------------------------


def run_constrained(proteins, seed, temperature, bias=None, extra=3, domain="dna"):
    """Sample from random logits under the constraint: the per-row token lists."""
    constraint = SynonymousCodons(proteins, domain=domain)
    vocab = get_domain(domain).vocab_size
    gen = torch.Generator().manual_seed(seed)
    for _ in range(constraint.max_steps + extra):
        mask = constraint.allowed()
        assert mask.shape == (len(proteins), vocab) and mask.dtype == torch.bool
        assert mask.any(dim=-1).all()  # never all-False, also after the end
        logits = torch.randn(len(proteins), vocab, generator=gen)
        if bias is not None:
            logits = logits + bias
        logits, removed = apply_constraint(logits, constraint)
        tokens = sample_next(logits, temperature=temperature, generator=gen)
        constraint.update(tokens, removed)
    assert constraint.done
    return constraint


def check_rows(constraint, proteins, extra=3, domain="dna"):
    tokens = get_domain(domain).tokens
    for b, protein in enumerate(proteins):
        row = constraint.tokens[b]
        n = (len(protein) + 1) * (1 if domain == "cds" else 3)  # steps to the stop's end
        assert constraint.steps[b] == n + 1
        cds = "".join(tokens[i] for i in row[:n])
        assert set(cds) <= set("ACGT") and len(cds) == 3 * (len(protein) + 1)
        assert row[n] == tokens.index("<sep>")
        assert row[n + 1:] == [tokens.index("<pad>")] * (constraint.max_steps + extra - n - 1)
        assert translate(cds) == protein  # a complete gene encoding exactly the protein
        assert cds[:3] in ("ATG", "GTG", "TTG") and cds[-3:] in ("TAA", "TAG", "TGA")
        assert constraint.cds()[b] == cds


@pytest.mark.parametrize("domain", ["dna", "cds"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_logits_always_give_the_protein(real_proteins, seed, domain):
    constraint = run_constrained(real_proteins, seed, temperature=1.0, domain=domain)
    check_rows(constraint, real_proteins, domain=domain)
    # the masks removed some of the random distribution's mass at every step of every row
    assert (constraint.removed_steps == torch.tensor(constraint.steps)).all()
    assert (constraint.removed > 0).all()


def test_sampling_explores_synonyms(real_proteins):
    """Different seeds give different CDSs for the same protein."""
    a = run_constrained(real_proteins, 10, 1.0).cds()
    b = run_constrained(real_proteins, 11, 1.0).cds()
    assert sum(x != y for x, y in zip(a, b)) >= len(real_proteins) - 2


@pytest.mark.parametrize("domain", ["dna", "cds"])
def test_greedy(real_proteins, domain):
    for seed in (0, 1):
        check_rows(run_constrained(real_proteins, seed, temperature=0.0, domain=domain),
                   real_proteins, domain=domain)


def test_logits_that_want_to_stop_early_are_overridden(real_proteins):
    bias = torch.zeros(len(TOKENS))
    bias[ID["<sep>"]] = 50.0
    bias[ID["<pad>"]] = 40.0
    bias[ID["N"]] = 30.0
    check_rows(run_constrained(real_proteins, 0, 0.0, bias=bias), real_proteins)
    check_rows(run_constrained(real_proteins, 1, 1.0, bias=bias), real_proteins)


def test_reorder_copies_rows_for_beam_search(real_proteins):
    """Rows expanded into beams and shuffled mid-gene go on as their new protein's rows."""
    proteins = real_proteins[:2]
    constraint = SynonymousCodons(proteins)
    constraint.reorder(torch.tensor([0, 0, 1, 1]))
    gen = torch.Generator().manual_seed(0)
    for step in range(constraint.max_steps + 2):
        if step == 20:
            constraint.reorder(torch.tensor([1, 0, 3, 3]))
        logits, removed = apply_constraint(torch.randn(4, len(TOKENS), generator=gen),
                                           constraint)
        constraint.update(sample_next(logits, 1.0, generator=gen), removed)
    check_rows(constraint, [proteins[0]] * 2 + [proteins[1]] * 2, extra=2)
    assert constraint.cds()[2][:20] == constraint.cds()[3][:20]  # both from row 3
    assert constraint.tokens[2] is not constraint.tokens[3]  # copies, not one shared list


def allowed_bases(constraint, row=0):
    mask = constraint.allowed()[row]
    return {TOKENS[i] for i in range(len(TOKENS)) if mask[i]}


def feed(constraint, text):
    for ch in text:
        constraint.update(torch.tensor([ID[ch]]))


def test_masks_step_by_step():
    c = SynonymousCodons(["MW"])
    assert c.max_steps == 3 * 3 + 1
    assert allowed_bases(c) == {"A", "G", "T"}  # ATG GTG TTG
    feed(c, "G")
    assert allowed_bases(c) == {"T"}
    feed(c, "T")
    assert allowed_bases(c) == {"G"}
    feed(c, "G")
    for base in "TGG":  # W: TGG only
        assert allowed_bases(c) == {base}
        feed(c, base)
    assert allowed_bases(c) == {"T"}  # TAA TAG TGA
    feed(c, "T")
    assert allowed_bases(c) == {"A", "G"}
    feed(c, "G")
    assert allowed_bases(c) == {"A"}
    feed(c, "A")
    assert allowed_bases(c) == {"<sep>"}
    c.update(torch.tensor([ID["<sep>"]]))
    assert c.done and allowed_bases(c) == {"<pad>"}
    c.update(torch.tensor([ID["<pad>"]]))
    assert allowed_bases(c) == {"<pad>"}
    assert c.cds() == ["GTGTGGTGA"]


@pytest.mark.parametrize("aa", list(codons.AMINO_ACIDS))
def test_every_synonym_is_reachable_and_nothing_else(aa):
    family = set(codons.SYNONYMS[aa])
    for codon in sorted(set(codons.CODON_TO_AA) | set(codons.STOP_CODONS)):
        c = SynonymousCodons(["M" + aa])
        feed(c, "ATG")
        ok = True
        for base in codon:
            if base not in allowed_bases(c):
                ok = False
                break
            feed(c, base)
        assert ok == (codon in family), codon


def test_per_codon_masks_are_each_residues_synonyms():
    """Over the CDS domain (one token per codon) each step allows exactly the residue's
    codons: the start codons first, the stops after the last residue."""
    tokens = get_domain("cds").tokens
    protein = "M" + codons.AMINO_ACIDS + "W"
    c = SynonymousCodons([protein], domain="cds")
    assert c.max_steps == len(protein) + 2
    families = [("ATG", "GTG", "TTG")] + [codons.SYNONYMS[aa] for aa in protein[1:]]
    for family in [*families, codons.STOP_CODONS]:
        mask = c.allowed()[0]
        assert {tokens[i] for i in range(len(tokens)) if mask[i]} == set(family)
        c.update(torch.tensor([tokens.index(family[-1])]))
    assert {tokens[i] for i in range(len(tokens)) if c.allowed()[0][i]} == {"<sep>"}
    c.update(torch.tensor([tokens.index("<sep>")]))
    assert c.done and translate(c.cds()[0]) == protein


def test_a_rejected_token_raises_and_records_nothing():
    c = SynonymousCodons(["MK", "MA"])
    with pytest.raises(ValueError, match="row 0, step 0: token"):
        c.update(torch.tensor([ID["C"], ID["A"]]))
    assert c.step == [0, 0] and c.tokens == [[], []]
    with pytest.raises(ValueError, match="1 tokens for a batch of 2"):
        c.update(torch.tensor([ID["A"]]))


def test_bad_proteins_are_refused():
    with pytest.raises(ValueError, match="no '\\*'"):
        SynonymousCodons(["MKV*"])
    with pytest.raises(ValueError, match="must be M"):
        SynonymousCodons(["KV"])
    with pytest.raises(ValueError, match="empty"):
        SynonymousCodons(["MK", ""])
    with pytest.raises(ValueError, match="'X'"):
        SynonymousCodons(["MXK"])
    with pytest.raises(TypeError):
        SynonymousCodons("MKV")
    # without start codons the first residue is an ordinary one (a fragment)
    c = SynonymousCodons(["KV"], start_codons=None)
    assert allowed_bases(c) == {"A"}  # AAA AAG


def test_ids_come_from_the_domain():
    c = SynonymousCodons(["M"])
    assert c.vocab_size == len(TOKENS)
    assert c.letter_ids == {b: TOKENS.index(b) for b in "ACGT"}
    assert (c.pad, c.sep) == (TOKENS.index("<pad>"), TOKENS.index("<sep>"))


# ---- metrics and baselines -------------------------------------------------------------


def test_codon_identity_hand_examples():
    native = "ATG" "GCT" "AAA" "TAA"
    assert codons.codon_identity(native, native) == 1.0
    assert codons.codon_identity("ATG" "GCC" "AAA" "TAA", native) == pytest.approx(2 / 3)
    # the stop codon counts only when asked
    assert codons.codon_identity("ATG" "GCT" "AAA" "TAG", native) == 1.0
    assert codons.codon_identity("ATG" "GCT" "AAA" "TAG", native,
                                 include_stop=True) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="codons against"):
        codons.codon_identity("ATGTAA", native)


def test_cai_hand_examples():
    usage = codons.CodonUsage.from_cds(["ATG" + "GCT" * 3 + "GCC" + "TGG" + "TAA"])
    assert usage.sense["GCT"] == 3 and usage.start["ATG"] == 1 and usage.stop["TAA"] == 1
    w = usage.weights()
    assert w["GCT"] == 1.0 and w["GCC"] == pytest.approx(1 / 3)
    assert w["GCA"] == pytest.approx(0.5 / 3)  # unseen: 0.5 counts (Sharp & Li)
    assert codons.cai("ATG" "GCT" "GCC" "TAA", w) == pytest.approx(math.sqrt(1 / 3))
    # ATG, TGG and the stop are left out; so is the start codon whatever it is
    assert codons.cai("GTG" "ATG" "TGG" "GCC" "TAA", w) == pytest.approx(1 / 3)
    assert math.isnan(codons.cai("ATG" "TGG" "TAA", w))


def test_top_codon_design_has_cai_one_and_translates(usage, sample_train):
    w = usage.weights()
    for protein in sample_train[0].values():
        design = codons.most_frequent_codon_design(protein, usage)
        assert translate(design) == protein
        assert codons.cai(design, w) == pytest.approx(1.0)


def test_gc_content():
    assert codons.gc_content("GGCC") == 1.0
    assert codons.gc_content("ATGC") == 0.5
    assert codons.gc_content("atat") == 0.0


def test_evaluate(usage, sample_train):
    proteins, natives = sample_train
    same = codons.evaluate(natives, natives, usage)
    assert same["codon_identity"] == 1.0 and same["codon_identity_pooled"] == 1.0
    assert same["cai_design"] == same["cai_native"]
    assert same["gc_design"] == same["gc_native"] and same["translates"] == 1.0
    assert same["n"] == same["n_same_length"] == len(natives)
    designs = {k: codons.most_frequent_codon_design(p, usage) for k, p in proteins.items()}
    got = codons.evaluate(designs, natives, usage)
    assert 0.3 < got["codon_identity"] < 0.8
    assert got["cai_design"] == pytest.approx(1.0) and got["cai_native"] < 1.0
    assert got["translates"] == 1.0
    broken = dict(designs)
    key = next(iter(broken))
    broken[key] = broken[key][:-3] + "TAC"  # no stop codon
    assert codons.evaluate(broken, natives, usage)["translates"] == pytest.approx(
        1 - 1 / len(natives))
    with pytest.raises(KeyError):
        codons.evaluate({"nope": "ATGTAA"}, natives, usage)


def test_neighbour_design_follows_the_context_and_backs_off():
    # K before G is always AAG here, K elsewhere mostly AAA
    proteins = ["MKG"] * 5 + ["MKA"] * 9
    cds = ["ATGAAGGGCTAA"] * 5 + ["ATGAAAGCGTAA"] * 9
    usage = codons.CodonUsage.from_cds(cds)
    neighbours = codons.NeighbourUsage.from_pairs(proteins, cds)
    assert usage.top_codon("K") == "AAA"
    design = codons.neighbour_codon_design("MKGKA", usage, neighbours)
    assert codons.codons(design) == ["ATG", "AAG", "GGC", "AAA", "GCG", "TAA"]
    # (G, K, A) was never seen: K's overall most frequent codon; a rarer context backs off
    assert codons.neighbour_codon_design("MKG", usage, neighbours) == "ATGAAGGGCTAA"
    rare = codons.NeighbourUsage.from_pairs(proteins[:4], cds[:4])
    assert codons.neighbour_codon_design("MKG", usage, rare)[3:6] == "AAA"
    assert translate(design) == "MKGKA"


def test_log_prior_is_the_smoothed_neighbour_frequencies():
    proteins = ["MKG"] * 5 + ["MKA"] * 9
    cds = ["ATGAAGGGCTAA"] * 5 + ["ATGAAAGCGTAA"] * 9
    neighbours = codons.NeighbourUsage.from_pairs(proteins, cds)
    # (M, K, G) seen 5 times, always AAG: add-one over K's two codons
    assert neighbours.log_prior("MKG", 1) == pytest.approx(
        {"AAG": math.log(6 / 7), "AAA": math.log(1 / 7)})
    # (M, K, C) never seen: K's counts over all contexts, 9 AAA and 5 AAG
    assert neighbours.log_prior("MKC", 1) == pytest.approx(
        {"AAA": math.log(10 / 16), "AAG": math.log(6 / 16)})
    assert set(neighbours.log_prior("MKGL", 3)) == set(codons.SYNONYMS["L"])


def test_a_prior_weighs_the_synonyms_and_keeps_the_protein(real_proteins):
    """log_weights, added to the logits by apply_constraint: a prior far stronger than the
    random logits picks each residue's codon (here the alphabetically last synonym), and
    every design still encodes exactly its protein. A per-base domain has no codon to
    weigh."""
    def last_synonym(protein, i):
        synonyms = codons.SYNONYMS[protein[i]]
        return {c: 0.0 if c == synonyms[-1] else -50.0 for c in synonyms}

    constraint = SynonymousCodons(real_proteins, domain="cds", prior=last_synonym)
    gen = torch.Generator().manual_seed(0)
    vocab = get_domain("cds").vocab_size
    for _ in range(constraint.max_steps):
        logits, removed = apply_constraint(torch.randn(len(real_proteins), vocab,
                                                       generator=gen), constraint)
        constraint.update(sample_next(logits, temperature=1.0, generator=gen), removed)
    for protein, cds in zip(real_proteins, constraint.cds()):
        assert translate(cds) == protein
        assert codons.codons(cds)[1:-1] == [codons.SYNONYMS[aa][-1] for aa in protein[1:]]
    assert SynonymousCodons(real_proteins, domain="cds").log_weights() is None
    with pytest.raises(ValueError, match="writes bases"):
        SynonymousCodons(real_proteins, prior=last_synonym)


def test_wider_windows_back_off_to_narrower_ones():
    # with 2 residues each side, K in "GKG" is AAG; "AKA" was never seen two-wide and
    # backs off to the one-wide window, then to K's overall codon
    proteins = ["MGGKGG"] * 5 + ["MAGKGA"] * 6 + ["MAKA"] * 3
    cds = (["ATGGGCGGCAAGGGCGGCTAA"] * 5 + ["ATGGCGGGCAAAGGCGCGTAA"] * 6
           + ["ATGGCGAAAGCGTAA"] * 3)
    usage = codons.CodonUsage.from_cds(cds)
    wide = codons.NeighbourUsage.from_pairs(proteins, cds, width=2)
    assert wide.contexts("MKG") == ["^MKG$", "MKG$$"]
    assert codons.codons(codons.neighbour_codon_design("MGGKGG", usage, wide))[3] == "AAG"
    assert codons.codons(codons.neighbour_codon_design("MAGKGA", usage, wide))[3] == "AAA"
    # "GKG" one-wide: 5 AAG against 6 AAA, so AAA; "AKA" seen 3 times (< 5): K overall
    narrow = codons.NeighbourUsage.from_pairs(proteins, cds, width=1)
    assert codons.codons(codons.neighbour_codon_design("MGGKGG", usage, narrow))[3] == "AAA"
    assert codons.codons(codons.neighbour_codon_design("MAKA", usage, narrow))[2] == "AAA"
    # split by a label per gene: each label's own counts
    split = codons.NeighbourUsage.from_pairs(proteins, cds, classes=[0] * 5 + [1] * 9)
    assert codons.codons(codons.neighbour_codon_design("MGGKGG", usage, split, label=0))[3] \
        == "AAG"


def test_identity_by_gc_band():
    natives = {"low": "ATGAAATTTTAA", "mid": "ATGGCGAAAGGCTAA", "high": "ATGGCGGGCTAA"}
    assert [codons.gc_band(codons.gc_content(n)) for n in natives.values()] == [
        "<45%", "45-50%", ">=55%"]
    designs = {"low": "ATGAAGTTTTAA", "mid": "ATGGCGAAAGGCTAA", "high": "ATGGCAGGGTAA"}
    bands = codons.identity_by_gc_band(designs, natives)
    assert list(bands) == ["<45%", "45-50%", "50-55%", ">=55%"]
    assert bands["<45%"] == {"n": 1, "codon_identity": pytest.approx(2 / 3)}
    assert bands["45-50%"] == {"n": 1, "codon_identity": 1.0}
    assert bands["50-55%"]["n"] == 0 and math.isnan(bands["50-55%"]["codon_identity"])
    assert bands[">=55%"] == {"n": 1, "codon_identity": pytest.approx(1 / 3)}
    got = codons.evaluate(designs, natives, codons.CodonUsage.from_cds(natives.values()))
    assert [got[c] for c in codons.band_columns()][:2] == [pytest.approx(2 / 3), 1.0]
    assert got["genes_gc>=55%"] == 1


def test_baseline_script_on_the_sample(capsys):
    assert baseline.main(["--data", str(SAMPLE), "--split", "sample_heldout",
                          "--train-split", "sample_train"]) == 0
    out = capsys.readouterr().out
    assert "most_frequent" in out and "uniform" in out and ">=55%" in out


def test_ceiling_script_on_the_sample(capsys):
    import ceiling

    got = ceiling.ceiling(SAMPLE, widths=(0, 1), oracle_bands=(2,), heldout="sample_heldout",
                          train_split="sample_train")
    ref = baseline.baselines(SAMPLE, "sample_heldout", train_split="sample_train")
    assert got["width 0"]["codon_identity"] == ref["most_frequent"]["codon_identity"]
    assert got["width 1"]["codon_identity"] == ref["neighbours"]["codon_identity"]
    assert 0 < got["oracle GC3/2"]["codon_identity"] < 1
    assert 0 < got["paralog >= 0.9"]["codon_identity"] < 1


def test_paralog_design_copies_the_close_training_gene_where_residues_agree():
    import ceiling

    near = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVV"
    far = "MSDNGPQNQRNAPRITFGGPSDSTGSNQNGERSGARSKQRRPQGLPNNTASWFTALTQHGKEDLKFPRG"

    def cds(protein, pick):  # each residue's first or last synonym
        return "".join(codons.SYNONYMS[a][pick] for a in protein) + "TAA"

    train = [(p, cds(p, -1)) for p in (far, near)]
    index = ceiling.kmer_index([p for p, _ in train])
    mutant = near[:30] + "W" + near[31:]  # 1 residue of 70 changed
    base = cds(mutant, 0)
    design = ceiling.paralog_design(mutant, base, train, index, min_identity=0.9)
    got, kept = codons.codons(design), codons.codons(base)
    assert codons.translates_to(design, mutant)
    assert got[0] == kept[0] and got[30] == kept[30] and got[-1] == kept[-1]
    assert got[1:30] + got[31:-1] == codons.codons(train[1][1])[1:30] + codons.codons(
        train[1][1])[31:-1]
    assert sum(a != b for a, b in zip(got, kept)) > 40  # most residues have other synonyms
    # below the identity asked for, or with no shared k-mer, the design is left alone
    assert ceiling.paralog_design(mutant, base, train, index, min_identity=0.999) == base
    lone = cds("MWWWCCCW", 0)
    assert ceiling.paralog_design("MWWWCCCW", lone, train, index) == lone


# ---- data ------------------------------------------------------------------------------


def check_pairs(data_dir, split):
    proteins, cds = prepare.load_pairs(data_dir, split)
    assert proteins and list(proteins) == list(cds)
    for gid, protein in proteins.items():
        assert "*" not in protein
        assert translate(cds[gid]) == protein
        assert cds[gid][-3:] in ("TAA", "TAG", "TGA")
    return proteins, cds


def test_bundled_sample_data():
    total = 0
    for split, n in (("sample_train", 40), ("sample_heldout", 10)):
        proteins, _ = check_pairs(SAMPLE, split)
        assert len(proteins) == n
        total += sum(prepare.find_file(SAMPLE, f"{split}_{k}").stat().st_size
                     for k in ("protein", "cds"))
    assert total < 100_000
    train, held = prepare.load_pairs(SAMPLE, "sample_train")[0], prepare.load_pairs(
        SAMPLE, "sample_heldout")[0]
    assert not set(train) & set(held)


def test_write_pairs_gzips_and_replaces_the_stale_form(tmp_path):
    gene = prepare.Gene("g_1_9_+", 1, 9, 1, "ATGAAATAA", "MK")
    sizes = prepare.write_pairs(tmp_path, {"train": [gene]}, compress=False)
    assert set(sizes) == {"train_protein.fa", "train_cds.fa"}
    first = (tmp_path / "train_cds.fa").read_text()
    prepare.write_pairs(tmp_path, {"train": [gene]}, compress=True)
    assert not (tmp_path / "train_cds.fa").exists()
    with gzip.open(tmp_path / "train_cds.fa.gz", "rt") as fh:
        assert fh.read() == first
    again = (tmp_path / "train_cds.fa.gz").read_bytes()
    prepare.write_pairs(tmp_path, {"train": [gene]}, compress=True)
    assert (tmp_path / "train_cds.fa.gz").read_bytes() == again  # reproducible bytes
    assert prepare.load_pairs(tmp_path, "train") == ({"g_1_9_+": "MK"},
                                                     {"g_1_9_+": "ATGAAATAA"})


def test_check_cds_reasons():
    assert prepare.check_cds("ATGAAATAA", "MK") is None
    assert prepare.check_cds("GTGAAATAA", "MK") is None  # GTG start reads as M
    assert "multiple of 3" in prepare.check_cds("ATGAAATA")
    assert "start codon" in prepare.check_cds("CTGAAATAA")
    assert "stop" in prepare.check_cds("ATGTAAAAATAA")
    assert "stop" in prepare.check_cds("ATGAAAAAA")
    assert "differs" in prepare.check_cds("ATGAAATAA", "MR")


def test_split_keeps_identical_proteins_together():
    genes = [prepare.Gene(f"g{i}", i, i + 8, 1, "ATGAAATAA", "M" + "K" * (i % 7))
             for i in range(200)]
    train, held = prepare.split_genes(genes, 0.1, seed=3)
    assert len(train) + len(held) == 200 and len(held) >= 20
    assert not {g.protein for g in train} & {g.protein for g in held}
    assert prepare.split_genes(genes, 0.1, seed=3) == (train, held)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    pytest.importorskip("pyrodigal")
    if not GENOME.exists():
        pytest.skip(f"{GENOME} is absent")
    out = tmp_path_factory.mktemp("codon")
    assert prepare.main(["--genome", str(GENOME), "--out", str(out),
                         "--max-bases", "200000"]) == 0
    return out


def test_prepare_on_200kbp_of_ecoli(prepared):
    out = prepared
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bases"] == 200_000
    assert summary["kept"] == summary["train"] + summary["heldout"] > 100
    assert summary["complete"] == summary["kept"] + summary["dropped_long"]
    assert summary["heldout"] == round(0.1 * summary["kept"])
    # under 1 MB in all: plain FASTA
    assert (out / "train_cds.fa").exists() and not (out / "train_cds.fa.gz").exists()
    genome = prepare.read_genome(GENOME, 200_000)[0][1]
    ids = {}
    for split in ("train", "heldout", "sample_train", "sample_heldout"):
        proteins, cds = check_pairs(out, split)
        ids[split] = set(proteins)
        for gid, seq in cds.items():
            prefix, begin, end, strand = gid.split("_")
            assert prefix == "ecoli" and strand in "+-"
            assert len(protein := proteins[gid]) <= 700 and protein[0] == "M"
            region = genome[int(begin) - 1:int(end)]
            assert seq == (region if strand == "+" else str(Seq(region).reverse_complement()))
    assert len(ids["train"]) == summary["train"] and len(ids["heldout"]) == summary["heldout"]
    assert not ids["train"] & ids["heldout"]
    assert ids["sample_train"] <= ids["train"] and ids["sample_heldout"] <= ids["heldout"]
    assert (len(ids["sample_train"]), len(ids["sample_heldout"])) == (40, 10)


def test_prepare_is_reproducible(prepared, tmp_path):
    assert prepare.main(["--genome", str(GENOME), "--out", str(tmp_path),
                         "--max-bases", "200000"]) == 0
    for name in ("train_cds.fa", "heldout_protein.fa", "summary.json"):
        assert (tmp_path / name).read_bytes() == (prepared / name).read_bytes()


def test_long_genes_cropped_into_training_only(prepared, tmp_path):
    """`--long crop`: the genes over 700 codons join the training split as their first 700
    codons (from the start codon, so position 0 is still a start), the held-out split is
    byte for byte the one `--long drop` writes, and every other training gene is the same."""
    assert prepare.main(["--genome", str(GENOME), "--out", str(tmp_path),
                         "--max-bases", "200000", "--long", "crop"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["cropped_long"] == summary["dropped_long"] > 0  # thrA: 820 residues
    for name in ("heldout_protein.fa", "heldout_cds.fa"):
        assert (tmp_path / name).read_bytes() == (prepared / name).read_bytes()
    whole_p, whole_c = prepare.load_pairs(prepared, "train")
    proteins, cds = prepare.load_pairs(tmp_path, "train")
    crops = [gid for gid in proteins if gid not in whole_p]
    assert len(crops) == summary["cropped_long"]
    assert {gid: proteins[gid] for gid in whole_p} == whole_p
    assert {gid: cds[gid] for gid in whole_c} == whole_c
    genome = prepare.read_genome(GENOME, 200_000)[0][1]
    for gid in crops:
        _, begin, end, strand, first = gid.split("_")
        assert first == "first700" and len(proteins[gid]) == 700 and len(cds[gid]) == 2100
        region = genome[int(begin) - 1:int(end)]
        gene = region if strand == "+" else str(Seq(region).reverse_complement())
        assert len(gene) > 3 * 701 and cds[gid] == gene[:2100]
        assert cds[gid][:3] in prepare.START_CODONS
        assert translate(gene)[:700] == proteins[gid]
    ranks = [int(gid.split("_")[1]) for gid in proteins]
    assert ranks == sorted(ranks)  # genome order, one record
