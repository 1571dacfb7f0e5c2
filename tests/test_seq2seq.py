"""`train/sample/score seq2seq` end to end on real pairs (the codon-design sample: E. coli
proteins and their genes), the pairing rules, and scores against a full-logits reference."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from seqformer.domains import Record, get_domain
from seqformer.domains.midi.grammar import PACE_WEIGHT
from seqformer.pipeline.seq2seq import (
    PairBatches,
    framed,
    load_seq2seq,
    pair_ids,
    translate,
)

from cli_helpers import REPO, load_app_module, run_cli

DATA = REPO / "apps" / "codon_design" / "data"
PROTEIN, CDS = DATA / "sample_train_protein.fa", DATA / "sample_train_cds.fa"
HELD_PROTEIN, HELD_CDS = DATA / "sample_heldout_protein.fa", DATA / "sample_heldout_cds.fa"


def train_args(out: Path, source: Path = PROTEIN, target: Path = CDS) -> list:
    return ["train", "seq2seq", "--source", source, "--target", target,
            "--source-domain", "protein", "--target-domain", "dna", "--config",
            "seq2seq-tiny", "--out", out]


@pytest.fixture(scope="module")
def codon_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s2s") / "codon"
    code, text = run_cli(*train_args(out))
    assert code == 0, text
    assert "bits per target base" in text, text  # the target is DNA, read per base
    return out


def test_pairs_are_matched_by_id_and_the_rest_listed() -> None:
    pairs, unpaired = pair_ids(["a", "b", "c"], ["c", "x", "a"])
    assert pairs == [(0, 2), (2, 0)]
    assert unpaired == ["b (source only)", "x (target only)"]


def test_train_writes_a_seq2seq_model_directory(codon_run: Path) -> None:
    cfg = yaml.safe_load((codon_run / "config.yaml").read_text())
    assert cfg["task"] == "seq2seq" and cfg["domain"] == "dna"
    assert cfg["seq2seq"]["source_domain"] == "protein"
    assert cfg["seq2seq"]["encoder"]["vocab_size"] == get_domain("protein").vocab_size
    assert cfg["seq2seq"]["encoder"]["causal"] is False and cfg["model"]["causal"] is True
    for name in ("model.safetensors", "loss.png", "checkpoints/last.ckpt"):
        assert (codon_run / name).is_file(), name
    code, text = run_cli("info", codon_run)
    assert code == 0 and "protein -> dna" in text


def test_score_is_the_models_likelihood_from_full_logits(codon_run: Path, tmp_path) -> None:
    tsv = tmp_path / "scores.tsv"
    code, text = run_cli("score", "seq2seq", "--model", codon_run, "--source", HELD_PROTEIN,
                         "--target", HELD_CDS, "--out", tsv)
    assert code == 0, text
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    assert rows[0] == ["id", "source_length", "target_length", "total_ll_nats",
                       "bits_per_token"]
    model, protein, dna, _ = load_seq2seq(codon_run)
    sources = {r.id: r.tokens for r in protein.read(HELD_PROTEIN)}
    targets = {r.id: r.tokens for r in dna.read(HELD_CDS)}
    assert len(rows) - 1 == len(sources) == 10
    for rid, s_len, t_len, total, _ in rows[1:]:
        src = torch.as_tensor(sources[rid], dtype=torch.long)[None]
        tgt = torch.as_tensor(framed(targets[rid], dna.sep_id))[None]
        with torch.no_grad():  # the reference: every position's full logits
            logp = torch.log_softmax(model(src, tgt[:, :-1]).double(), -1)
        want = logp[0].gather(-1, tgt[0, 1:, None]).sum().item()
        assert int(s_len) == len(sources[rid]) and int(t_len) == len(targets[rid])
        assert float(total) == pytest.approx(want, abs=1e-3)


def test_sample_writes_one_target_per_source(codon_run: Path, tmp_path) -> None:
    out = tmp_path / "designed.fa"
    args = ["sample", "seq2seq", "--model", codon_run, "--source", HELD_PROTEIN, "--out", out,
            "--seed", "3", "--max-length", "60"]
    code, text = run_cli(*args)
    assert code == 0, text
    designed = list(get_domain("dna").read(out))
    sources = [r.id for r in get_domain("protein").read(HELD_PROTEIN)]
    assert [r.id for r in designed] == sources
    bases = {get_domain("dna").tokens.index(b) for b in "ACGTN"}
    for rec in designed:
        assert 1 <= len(rec.tokens) <= 60 and set(rec.tokens.tolist()) <= bases
    code, text = run_cli(*args)  # an existing output is kept unless --force
    assert code == 2 and "already exists" in text
    code, again = run_cli(*args, "--force")
    assert code == 0
    assert [r.tokens.tolist() for r in get_domain("dna").read(out)] == \
        [r.tokens.tolist() for r in designed]  # the same seed, the same targets


def test_greedy_translate_of_a_batch_equals_each_source_alone(codon_run: Path) -> None:
    model, protein, dna, _ = load_seq2seq(codon_run)
    sources = [r.tokens for r in protein.read(HELD_PROTEIN)][:5]
    together = translate(model, sources, dna.sep_id, 80, temperature=0, batch_size=5)
    alone = [translate(model, [s], dna.sep_id, 80, temperature=0)[0] for s in sources]
    for a, b in zip(together, alone):
        assert a.tolist() == b.tolist()


def test_resume_goes_on_to_more_steps(codon_run: Path, tmp_path) -> None:
    run = tmp_path / "resumed"
    shutil.copytree(codon_run, run)
    code, text = run_cli(*train_args(run), "--resume", "--max-steps", "14")
    assert code == 0, text
    assert "trained 14 steps" in text


def test_unpaired_records_are_listed_and_none_paired_is_one_error(tmp_path) -> None:
    dna = get_domain("dna")
    records = list(dna.read(CDS))
    partial = tmp_path / "partial.fa"
    dna.write(records[:30], partial)
    code, text = run_cli(*train_args(tmp_path / "partial", target=partial))
    assert code == 0, text
    assert "10 records unpaired, skipped" in text and "(source only)" in text
    renamed = tmp_path / "renamed.fa"
    dna.write([Record("other_" + r.id, r.tokens) for r in records], renamed)
    run = tmp_path / "none"
    code, text = run_cli(*train_args(run, target=renamed))
    assert code == 2 and "no pairs to train on" in text and "Traceback" not in text
    assert not run.exists()  # no half-made run directory is left


def test_bad_inputs_give_one_clear_error(codon_run: Path, tiny_dna_run: Path,
                                         tmp_path) -> None:
    # DNA where the protein source belongs
    code, text = run_cli(*train_args(tmp_path / "swapped", source=CDS, target=CDS))
    assert code == 2 and "looks like a DNA FASTA" in text and str(CDS) in text
    # a language model is not a seq2seq model, and the other way round
    code, text = run_cli("sample", "seq2seq", "--model", tiny_dna_run, "--source",
                         HELD_PROTEIN, "--out", tmp_path / "x.fa")
    assert code == 2 and "is a language model, not a sequence-to-sequence model" in text
    code, text = run_cli("sample", "dna", "--model", codon_run, "--length", "5", "--out",
                         tmp_path / "y.fa")
    assert code == 2 and "is a sequence-to-sequence model, not a language model" in text
    # a source longer than the model takes
    long = tmp_path / "long.fa"
    protein = get_domain("protein")
    protein.write([Record("long", np.full(600, 2))], long)
    code, text = run_cli("sample", "seq2seq", "--model", codon_run, "--source", long, "--out",
                         tmp_path / "z.fa")
    assert code == 2 and "'long' has 600 tokens" in text and not (tmp_path / "z.fa").exists()


def test_training_batches_resume_where_they_stopped(codon_run: Path) -> None:
    from seqformer.pipeline.seq2seq import tokenize_pairs

    cfg = yaml.safe_load((codon_run / "config.yaml").read_text())
    pairs = tokenize_pairs(cfg, [PROTEIN], [CDS], codon_run)
    full = PairBatches(pairs, list(range(len(pairs))), 4, 40, 0, 0, 1)
    later = PairBatches(pairs, list(range(len(pairs))), 4, 40, 0, 0, 1, start=12)
    assert [b.tolist() for b in later.plan] == [b.tolist() for b in full.plan[3:]]
    src, src_len, tgt, tgt_len = full[0]
    assert (tgt[:, 0] == 1).all() and src.shape[0] == 4
    # similar lengths share a batch: less padding than batches of random pairs
    waste = sum(int((b[2] == 0).sum()) for b in (full[i] for i in range(len(full))))
    assert waste < 0.5 * sum(int(b[3].sum()) for b in (full[i] for i in range(len(full))))


CHORALES = REPO / "apps" / "harmonize" / "data" / "sample"


@pytest.mark.parametrize("decoder_only", [False, True])
def test_midi_pairs_by_file_name_sample_to_a_directory_and_score(tmp_path,
                                                                  decoder_only: bool) -> None:
    out = tmp_path / "harmonize"
    extra = (["seq2seq.decoder_only=true", "model.max_seq_len=2048"] if decoder_only
             else [])
    code, text = run_cli("train", "seq2seq", "--source", CHORALES / "train" / "soprano",
                         "--target", CHORALES / "train" / "atb", "--source-domain", "midi",
                         "--target-domain", "midi", "--config", "seq2seq-tiny", "--out", out,
                         "train.max_steps=4", *extra)
    assert code == 0, text
    assert "trained 4 steps on" in text
    model, _, _, _ = load_seq2seq(out)
    assert type(model).__name__ == ("PrefixLM" if decoder_only else "ReformerEncDec")
    pieces = tmp_path / "pieces"
    code, text = run_cli("sample", "seq2seq", "--model", out, "--source",
                         CHORALES / "heldout" / "soprano", "--out", pieces, "--seed", "0",
                         "--max-length", "40")
    assert code == 0, text
    names = sorted(p.stem for p in (CHORALES / "heldout" / "soprano").glob("*.mid"))
    assert sorted(p.stem for p in pieces.glob("*.mid")) == names
    tsv = tmp_path / "s.tsv"
    code, text = run_cli("score", "seq2seq", "--model", out, "--source",
                         CHORALES / "heldout" / "soprano", "--target",
                         CHORALES / "heldout" / "atb", "--out", tsv)
    assert code == 0, text
    rows = tsv.read_text().splitlines()[1:]
    assert sorted(r.split("\t")[0] for r in rows) == names
    assert all(float(r.split("\t")[4]) > 0 for r in rows)
    check_the_note_grammar(out, tmp_path)


def check_the_note_grammar(run: Path, tmp_path: Path) -> None:
    """Under the grammar (limits stored by training) every note sampled is closed and no
    note-off lacks its note; without it, this barely trained model leaves both."""
    from seqformer.domains.midi import decode
    from seqformer.pipeline.run_dir import read_sampling_limits
    from seqformer.pipeline.seq2seq import target_grammar

    limits = read_sampling_limits(run)
    assert limits["max_polyphony"] == 3  # alto, tenor, bass
    # each voice sings one note at a time, about as many notes as the soprano (each one
    # its own program: prepare.py --programs distinct)
    voices = [inst for inst, _, _ in limits["pitch_ranges"]]
    assert limits["instrument_polyphony"] == [[inst, 1] for inst in voices]
    assert [inst for inst, _ in limits["pace"]] == voices
    assert all(0.9 < ratio < 1.5 for _, ratio in limits["pace"]), limits["pace"]
    model, midi, _, _ = load_seq2seq(run)
    sources = [r.tokens for r in midi.read(CHORALES / "heldout" / "soprano")]
    rules = target_grammar(midi, lambda: read_sampling_limits(run))
    repairs = {}
    for name, rule in (("grammar", rules), ("free", None)):
        made = translate(model, sources, midi.sep_id, 80, 1.0, seed=0, constraint=rule,
                         allowed=midi.generatable())
        counts = [decode(t)[1] for t in made]
        repairs[name] = sum(c["unmatched_note_off"] + c["unclosed_note"] for c in counts)
        notes = sum(len(n.notes) for t in made for n in decode(t)[0].instruments)
        assert notes > 0, name
    assert repairs["grammar"] == 0 and repairs["free"] > 0, repairs
    code, text = run_cli("sample", "seq2seq", "--model", run, "--source",
                         CHORALES / "heldout" / "soprano", "--out", tmp_path / "beams",
                         "--grammar", "--num-beams", "2")
    assert code != 0 and "--no-grammar" in text and "Traceback" not in text
    # by default the grammar is on (nothing to repair), except with beams
    code, text = run_cli("sample", "seq2seq", "--model", run, "--source",
                         CHORALES / "heldout" / "soprano", "--out", tmp_path / "bad",
                         "--pace", "-1")
    assert code != 0 and "pace must be >= 0" in text and "Traceback" not in text
    for extra, flag in (([], "no note repaired"), (["--free-end"], "no note repaired"),
                        (["--pace", "0"], "no note repaired"),
                        (["--no-grammar"], "the MIDI decoder dropped"),
                        (["--num-beams", "2"], "targets")):
        code, text = run_cli("sample", "seq2seq", "--model", run, "--source",
                             CHORALES / "heldout" / "soprano", "--out",
                             tmp_path / f"out{len(extra)}{extra[:1]}", "--seed", "0",
                             "--max-length", "80", *extra)
        assert code == 0 and flag in " ".join(text.split()), text


def test_a_midi_target_may_close_at_any_step_and_its_notes_are_released() -> None:
    from seqformer.domains.midi import NOTE_OFF, NOTE_ON, PROGRAM, SHIFT, VELOCITY
    from seqformer.pipeline.seq2seq import UntilClosed

    midi = get_domain("midi")
    sep = midi.sep_id
    rule = UntilClosed(midi.constraint(None, [np.array([sep])] * 3), sep)
    no_mass = torch.zeros(3)
    for a in (PROGRAM, VELOCITY):
        rule.update(torch.tensor([a, a, a]), no_mass)
    rule.update(torch.tensor([NOTE_ON + 60, NOTE_ON + 62, NOTE_ON + 60]), no_mass)
    assert rule.allowed()[:, sep].all()  # with notes sounding too
    assert not rule.allowed()[:, NOTE_OFF + 60].any()  # the grammar still holds
    rule.update(torch.tensor([SHIFT, SHIFT, SHIFT]), no_mass)
    rule.update(torch.tensor([NOTE_OFF + 60, NOTE_ON + 64, NOTE_ON + 67]), no_mass)
    # row 0 closes with nothing sounding, row 2 with two notes, row 1 is cut off
    rule.update(torch.tensor([sep, SHIFT, sep]), no_mass)
    rule.update(torch.tensor([NOTE_ON + 50, SHIFT, NOTE_ON + 50]), no_mass)  # after the end
    assert rule.closing(0) == []
    assert sorted(rule.closing(1)) == [NOTE_OFF + 62, NOTE_OFF + 64]
    # 67 began in the last step: time moves on before it ends
    assert rule.closing(2) == [SHIFT, NOTE_OFF + 60, NOTE_OFF + 67]


def test_a_midi_target_given_its_sources_time_closes_exactly_at_its_end() -> None:
    from seqformer.domains.midi import NOTE_OFF, NOTE_ON, PROGRAM, SHIFT, VELOCITY
    from seqformer.pipeline.seq2seq import target_grammar

    midi = get_domain("midi")
    sep = midi.sep_id
    sources = [np.array([PROGRAM, VELOCITY, NOTE_ON + 72, SHIFT + steps - 1, NOTE_OFF + 72])
               for steps in (10, 5)]  # a 10-step and a 5-step melody
    rule = target_grammar(midi, lambda: None, midi)(sources)
    assert rule.ends == [10, 5]
    no_mass = torch.zeros(2)
    for a in (PROGRAM, VELOCITY, NOTE_ON + 60):
        rule.update(torch.tensor([a, a]), no_mass)
    assert not rule.allowed()[:, sep].any()  # not before the source's end
    rule.update(torch.tensor([SHIFT + 4, SHIFT + 4]), no_mass)  # 5 steps on
    allowed = rule.allowed()
    assert not allowed[0, sep] and allowed[0, NOTE_OFF + 60]
    assert allowed[1].tolist() == [t == sep for t in range(midi.vocab_size)]  # only the end
    rule.update(torch.tensor([NOTE_OFF + 60, sep]), no_mass)
    assert rule.closing(1) == [NOTE_OFF + 60]  # released before the end
    # without a timed source domain (or for a domain without a grammar) no ends are kept
    # a source with no time still leaves its target one step, so it never closes empty
    assert target_grammar(midi, lambda: None, midi)([np.array([PROGRAM])]).ends == [1]
    assert target_grammar(midi, lambda: None)(sources).ends is None
    assert target_grammar(midi, lambda: None, get_domain("dna"))(sources).ends is None


def test_a_midi_targets_pace_follows_its_sources_notes() -> None:
    """target_grammar hands the grammar each source's pitched note-on times (drums not
    counted), with or without ending at the source's end; the pace steer then weighs the
    target's note-ons once it is ahead of its pace, through the seq2seq wrappers."""
    from seqformer.domains.midi import DRUMS, NOTE_OFF, NOTE_ON, PROGRAM, SHIFT, VELOCITY
    from seqformer.pipeline.seq2seq import Within, target_grammar

    midi = get_domain("midi")
    melody = [PROGRAM, VELOCITY]
    for pitch in (72, 74, 76):  # notes at steps 0, 10, 20
        melody += [NOTE_ON + pitch, SHIFT + 9, NOTE_OFF + pitch]
    sources = [np.array(melody + [DRUMS, NOTE_ON + 36, SHIFT, NOTE_OFF + 36])]
    limits = {"max_polyphony": 3, "max_steps": 100, "pace": [[PROGRAM + 41, 1.0]]}
    for end in (True, False):
        rule = target_grammar(midi, lambda: limits, midi, end, key=0.0, register=0.0)(sources)
        assert rule.grammar.source_onsets[0].tolist() == [0, 10, 20]
        assert (rule.ends is not None) == end
    within = Within(midi.generatable(), midi.sep_id, midi.vocab_size, 1, inner=rule)
    # the alto (program 41) writes 3 notes in the first step of a 3-note melody
    for t in (PROGRAM + 41, VELOCITY, NOTE_ON + 60, SHIFT, NOTE_OFF + 60, NOTE_ON + 62,
              SHIFT, NOTE_OFF + 62, NOTE_ON + 64):
        within.update(torch.tensor([t]), torch.zeros(1))
    # 3 notes by step 2, one source note heard: its next note is 2 past the slack
    assert within.log_weights()[0, NOTE_ON + 65] == pytest.approx(-2 * PACE_WEIGHT)
    off = target_grammar(midi, lambda: limits, midi, pace=0.0, key=0.0, register=0.0)(sources)
    assert off.log_weights() is None


def test_a_midi_targets_grammar_redirects_a_note_off_to_its_voice_through_the_wrappers(
        ) -> None:
    """The voice switch the note grammar offers for a note-off on the wrong voice (and its
    plain counterpart, `redirect=False`) reaches the sampler through UntilClosed and
    Within, the wrappers seq2seq decoding puts around a target's grammar."""
    from seqformer.domains.midi import NOTE_OFF, NOTE_ON, PROGRAM, SHIFT, VELOCITY
    from seqformer.pipeline.seq2seq import Within, target_grammar

    midi = get_domain("midi")
    sources = [np.array([PROGRAM, VELOCITY, NOTE_ON + 72, SHIFT + 9, NOTE_OFF + 72])]
    for redirect in (True, False):
        rule = target_grammar(midi, lambda: None, midi, redirect=redirect)(sources)
        within = Within(midi.generatable(), midi.sep_id, midi.vocab_size, 1, inner=rule)
        # the tenor (program 42) starts 55, then the alto (program 41) takes over
        for t in (PROGRAM + 42, VELOCITY, NOTE_ON + 55, SHIFT, PROGRAM + 41):
            within.update(torch.tensor([t]), torch.zeros(1))
        targets = within.redirects()
        if redirect:
            assert targets[0, NOTE_OFF + 55] == PROGRAM + 42
            assert (targets >= 0).sum() == 1
        else:
            assert targets is None


def test_within_keeps_targets_to_the_domain_and_never_closes_them_empty() -> None:
    from seqformer.pipeline.seq2seq import Within

    class OnlyThree:
        def allowed(self) -> torch.Tensor:
            return torch.tensor([[False, True, False, True, False]] * 2)

        def update(self, tokens, removed) -> None:  # noqa: ANN001
            self.seen = tokens

    inner = OnlyThree()
    rule = Within([2, 3], sep_id=1, vocab_size=5, batch=2, inner=inner)
    assert rule.allowed().tolist() == [[False, False, False, True, False]] * 2  # no sep first
    rule.update(torch.tensor([3, 3]), None)
    assert rule.allowed().tolist() == [[False, True, False, True, False]] * 2
    rule.update(torch.tensor([1, 3]), None)  # row 0 closed: left to the inner constraint
    assert rule.allowed()[0].tolist() == [False, True, False, True, False]
    assert inner.seen.tolist() == [1, 3]
    alone = Within([2, 3], sep_id=1, vocab_size=5, batch=1)
    alone.update(torch.tensor([1]), None)
    assert alone.allowed().all()  # after its end a row may take anything (it is cut off)


@pytest.fixture(scope="module")
def codon_token_run(tmp_path_factory) -> Path:
    """The same pairs with the target read one token per codon (the CDS domain)."""
    out = tmp_path_factory.mktemp("s2s") / "cds"
    args = train_args(out)
    args[args.index("dna")] = "cds"
    code, text = run_cli(*args, "train.max_steps=4")
    assert code == 0, text
    assert "bits per target codon" in text, text
    return out


def codon_app() -> tuple:
    """apps/codon_design's design, codons and prepare modules (apps/ is not a package)."""
    app = REPO / "apps" / "codon_design"
    sys.path.insert(0, str(app))
    try:
        design = load_app_module(app / "design.py", "codon_design_app")
        import codons
        import prepare
    finally:
        sys.path.remove(str(app))
    return design, codons, prepare


@pytest.mark.parametrize("run", ["codon_run", "codon_token_run"])
def test_codon_designs_from_a_trained_model_translate_back_to_their_proteins(
        run: str, request: pytest.FixtureRequest) -> None:
    """apps/codon_design/design.py end to end: the model decodes under SynonymousCodons,
    over bases or over codons."""
    model_dir = request.getfixturevalue(run)
    app = REPO / "apps" / "codon_design"
    design, codons, prepare = codon_app()
    translates_to, read_fasta = codons.translates_to, prepare.read_fasta
    proteins = read_fasta(HELD_PROTEIN)
    designs = design.design(model_dir, proteins, temperature=1.0, seed=0)
    assert list(designs) == list(proteins)
    for rid, cds in designs.items():
        assert translates_to(cds, proteins[rid]), rid
    assert designs != {k: v for k, v in read_fasta(HELD_CDS).items()}  # sampled, not copied
    beamed = design.design(model_dir, proteins, beams=3)
    for rid, cds in beamed.items():
        assert translates_to(cds, proteins[rid]), rid
    bits = design.native_bits(model_dir, proteins, read_fasta(HELD_CDS))
    assert 0 < bits < 8  # per base, over bases or codons alike
    # the neighbours prior, through translate's own constraint: heavily weighted, it
    # designs what the neighbours baseline designs; a model over bases is refused
    usage, neighbours = design.training_usage(app / "data", "sample_train")
    if run == "codon_run":
        with pytest.raises(ValueError, match="writes bases"):
            design.design(model_dir, proteins, neighbours=neighbours)
        return
    weighed = design.design(model_dir, proteins, neighbours=neighbours, prior_weight=100.0)
    plain = {k: codons.neighbour_codon_design(p, usage, neighbours)
             for k, p in proteins.items()}
    for rid, cds in weighed.items():
        assert translates_to(cds, proteins[rid]), rid
    assert codons.evaluate(weighed, plain, usage)["codon_identity"] > 0.95


def test_a_model_that_does_not_read_its_codons_designs_each_positions_likeliest_codon(
        tmp_path, codon_token_run: Path) -> None:
    """seq2seq.read_target false over codons: greedy design is, position by position, the
    likeliest allowed codon of the model's distribution there (`marginals`, one forward
    pass)."""
    out = tmp_path / "unread"
    args = train_args(out)
    args[args.index("dna")] = "cds"
    code, text = run_cli(*args, "train.max_steps=4", "seq2seq.read_target=false")
    assert code == 0, text
    design, codon_metrics, prepare = codon_app()
    SYNONYMS = codon_metrics.SYNONYMS
    proteins = prepare.read_fasta(HELD_PROTEIN)
    by_position = design.marginals(out, list(proteins.values()), batch_size=3)
    codons = list(get_domain("cds").tokens)

    def likeliest(row: np.ndarray, family) -> str:  # noqa: ANN001
        return max(family, key=lambda c: row[codons.index(c)])

    designs = design.design(out, proteins, batch_size=4)
    for rid, protein in proteins.items():
        logp = by_position[protein]
        assert logp.shape == (len(protein) + 1, len(codons))
        np.testing.assert_allclose(np.exp(logp).sum(-1), 1, rtol=1e-5)
        expected = (likeliest(logp[0], ("ATG", "GTG", "TTG"))
                    + "".join(likeliest(logp[i], SYNONYMS[a])
                              for i, a in enumerate(protein) if i > 0)
                    + likeliest(logp[-1], ("TAA", "TAG", "TGA")))
        assert designs[rid] == expected, rid
    with pytest.raises(ValueError, match="read_target false"):
        design.marginals(codon_token_run, list(proteins.values()))


def test_a_target_that_is_not_whole_codons_is_one_error(tmp_path) -> None:
    cds = {r.id: r.tokens for r in get_domain("dna").read(CDS)}
    broken = tmp_path / "cds.fa"
    first = next(iter(cds))
    get_domain("dna").write([Record(k, v[:-1] if k == first else v) for k, v in cds.items()],
                            broken)
    args = train_args(tmp_path / "run", target=broken)
    args[args.index("dna")] = "cds"
    code, text = run_cli(*args)
    assert code == 2 and "Traceback" not in text, text
    assert f"record {first!r} has" in text and "not a whole number of codons" in text
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_sample_with_beams_writes_the_likeliest_target(codon_run: Path, tmp_path) -> None:
    out = tmp_path / "beams.fa"
    args = ["sample", "seq2seq", "--model", codon_run, "--source", HELD_PROTEIN,
            "--max-length", "40"]
    code, text = run_cli(*args, "--out", out, "--num-beams", "4")
    assert code == 0, text
    model, protein, dna, _ = load_seq2seq(codon_run)
    sources = [r.tokens for r in protein.read(HELD_PROTEIN)]
    want = translate(model, sources, dna.sep_id, 40, num_beams=4, allowed=dna.generatable())
    assert [r.tokens.tolist() for r in dna.read(out)] == [t.tolist() for t in want]
    code, text = run_cli(*args, "--out", tmp_path / "none.fa", "--num-beams", "0")
    assert code == 2 and "--num-beams 0" in text


def test_aligned_cross_attention_is_one_config_switch(tmp_path) -> None:
    out = tmp_path / "aligned"
    code, text = run_cli(*train_args(out), "train.max_steps=3",
                         "seq2seq.align={ratio: 3, window: 4}")
    assert code == 0, text
    model, _, _, _ = load_seq2seq(out)
    assert model.alignment.ratio == 3 and model.alignment.window == 4
    assert model.decoder.layers[0].cross.offset_bias.shape == (model.dec_cfg.n_heads, 9)
    designed = tmp_path / "designed.fa"
    code, text = run_cli("sample", "seq2seq", "--model", out, "--source", HELD_PROTEIN,
                         "--out", designed, "--max-length", "30")
    assert code == 0, text
    for bad, says in [("seq2seq.align={ratio: 0, window: 4}", "seq2seq.align.ratio"),
                      ("seq2seq.align=3", "seq2seq.align: expected null or"),
                      ("seq2seq.align={ratio: 3}", "seq2seq.align: expected null or")]:
        code, text = run_cli(*train_args(tmp_path / "bad"), bad)
        assert code == 2 and says in text and "Traceback" not in text, (bad, text)


def test_an_unread_target_is_one_config_switch(tmp_path) -> None:
    out = tmp_path / "unread"
    code, text = run_cli(*train_args(out), "train.max_steps=3", "seq2seq.read_target=false",
                         "seq2seq.align={ratio: 3, window: 4}")
    assert code == 0, text
    model, source, target, _ = load_seq2seq(out)
    assert not model.read_target and model.decoder.blank is not None
    designed = tmp_path / "designed.fa"
    code, text = run_cli("sample", "seq2seq", "--model", out, "--source", HELD_PROTEIN,
                         "--out", designed, "--max-length", "30")
    assert code == 0, text
    assert len(list(get_domain("dna").read(designed))) == len(list(source.read(HELD_PROTEIN)))
    code, text = run_cli(*train_args(tmp_path / "bad"), "seq2seq.read_target=3")
    assert code == 2 and "seq2seq.read_target: must be true or false" in text, text
    code, text = run_cli(*train_args(tmp_path / "bad", target=PROTEIN),
                         "--target-domain", "protein", "seq2seq.decoder_only=true",
                         "seq2seq.read_target=false")
    assert code == 2 and "seq2seq.read_target: a decoder-only model" in text, text


@pytest.mark.parametrize("app, source, target", [("codon_design/codon.yaml", "protein", "cds"),
                                                 ("harmonize/harmonize.yaml", "midi", "midi")])
def test_the_apps_presets_build_their_models(app: str, source: str, target: str) -> None:
    from seqformer.pipeline.run_config import resolve
    from seqformer.pipeline.seq2seq import build_model

    cfg = resolve(target, get_domain(target).vocab_size, REPO / "apps" / app, task="seq2seq",
                  source=(source, get_domain(source).vocab_size))
    model = build_model(cfg)
    if app.startswith("codon"):  # the aligned cross-attention, one codon per residue
        assert model.alignment.ratio == 1 and model.tie_positions
