"""The MIDI note grammar as a sampling constraint: its masks, its limits from data, and
sampling under it leaves nothing for the decoder to repair."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seqformer.core.decoding.sampling import apply_constraint, sample_next
from seqformer.domains import get_domain
from seqformer.domains.midi import (
    DRUMS,
    DURATION,
    NOTE_OFF,
    NOTE_ON,
    PROGRAM,
    SEP,
    SHIFT,
    VELOCITY,
    VOCAB_SIZE,
    DurationGrammar,
    GrammarLimits,
    MIDIGrammar,
    limits_from,
)
from seqformer.domains.midi.grammar import (
    KEY_NOTES,
    KEY_WEIGHT,
    PACE_SLACK,
    REGISTER_NOTES,
    fitted_to,
    pace_from,
)
from seqformer.domains.midi.vocab import velocity_bin

from cli_helpers import MIDI_SAMPLE, REPO
from cli_helpers import TINY_MODEL as TINY
from cli_helpers import run_cli as run
from midi_tokens import off, on, shift
from reference_music import polyphony_percentile, sounding_counts, tokens_between_shifts

BACH = REPO / "data" / "midi" / "bach"


def test_limits_from_hand_made_sequences():
    # two notes together (polyphony 2), lasting 3 and 5 steps; a stray note-off is ignored
    seq = np.array([SEP, on(60), on(64), shift(3), off(60), off(70), shift(2), off(64)])
    limits = limits_from([seq] * 10)
    assert limits.max_polyphony == 2 and limits.max_steps == 5  # 99.5th pct of {3, 5}
    assert limits.pitch_ranges == [[PROGRAM, 60, 64]]  # no program token: program 0


def test_masks_follow_the_note_grammar():
    bare = MIDIGrammar(GrammarLimits(2, 10), [np.array([SEP])]).allowed()[0]
    assert not bare[NOTE_ON:NOTE_OFF].any()  # instrument and velocity first
    named = [SEP, PROGRAM, VELOCITY + 16]
    g = MIDIGrammar(GrammarLimits(max_polyphony=2, max_steps=10), [np.array(named + [on(60)])])
    assert not g.allowed()[0][off(60)]  # not in the step it started (zero length)
    g = MIDIGrammar(GrammarLimits(max_polyphony=2, max_steps=10),
                    [np.array(named + [on(60), shift(1)])])
    ok = g.allowed()[0]
    assert ok[off(60)] and not ok[off(61)]  # a note-off only for a sounding note
    assert not ok[on(60)] and ok[on(61)]  # no second note-on of a sounding pitch
    assert ok[shift(9)] and not ok[shift(10)]  # time may not pass the note's limit
    assert ok[VELOCITY] and ok[PROGRAM + 5] and ok[DRUMS] and not ok[SEP]
    g.update(torch.tensor([shift(3)]), torch.tensor([0.25]))
    g.update(torch.tensor([on(62)]), torch.tensor([0.0]))
    ok = g.allowed()[0]
    assert not ok[NOTE_ON:NOTE_OFF].any()  # polyphony cap reached
    assert ok[off(60)] and not ok[off(62)]  # 62 has only just started
    assert g.removed == [[0.25, 0.0]]
    g.update(torch.tensor([shift(6)]), torch.tensor([0.0]))  # note 60 is now 10 steps old
    ok = g.allowed()[0]
    assert ok.sum() == 1 and ok[off(60)]  # held to the limit: only its release
    g.update(torch.tensor([off(60)]), torch.tensor([0.0]))
    g.update(torch.tensor([PROGRAM + 40]), torch.tensor([0.0]))  # another instrument
    ok = g.allowed()[0]
    assert not ok[off(62)] and ok[on(62)]  # note 62 belongs to program 0, not program 40
    g.update(torch.tensor([PROGRAM]), torch.tensor([0.0]))
    assert g.allowed()[0][off(62)]
    g.update(torch.tensor([PROGRAM + 40]), torch.tensor([0.0]))
    assert ok[shift(4)] and not ok[shift(5)]  # note 62 is 6 of its 10 steps old
    assert g.closing() == [PROGRAM, off(62)]  # switch back, then release


def test_a_note_held_too_long_in_another_instrument_is_switched_to_and_released():
    g = MIDIGrammar(GrammarLimits(4, 3), [np.array([SEP, VELOCITY, PROGRAM + 1, on(50),
                                                    PROGRAM + 2, shift(3)])])
    ok = g.allowed()[0]
    assert ok.sum() == 1 and ok[PROGRAM + 1]


def test_a_note_off_on_the_wrong_instrument_becomes_the_switch_to_its_instrument():
    # program 0 sounds 60 (from step 0) and 64; program 40 sounds 64 (from step 1) and 67
    # (this step); the current instrument is 40
    prompt = [SEP, PROGRAM, VELOCITY + 16, on(60), on(64), shift(1), PROGRAM + 40, on(64),
              shift(1), on(67)]
    g = MIDIGrammar(GrammarLimits(8, 100), [np.array(prompt)])
    plain = MIDIGrammar(GrammarLimits(8, 100), [np.array(prompt)], redirect=False)
    assert plain.redirects() is None
    targets = g.redirects()[0]
    assert targets[off(60)] == PROGRAM  # sounding on program 0 only
    assert targets[off(64)] == -1  # program 40 sounds it too: its own note-off is allowed
    assert targets[off(67)] == -1  # program 40's own (started this step)
    # a pitch sounding nowhere: the nearest the current instrument may release, within an
    # octave (67 started in this step)
    assert targets[off(70)] == targets[off(76)] == targets[off(52)] == off(64)
    assert targets[off(77)] == targets[off(51)] == -1
    assert set(np.nonzero(targets >= 0)[0]) == {off(60)} | {off(p) for p in range(52, 77)
                                                          if p not in (60, 64, 67)}
    logits = torch.full((1, VOCAB_SIZE), -40.0)  # (what else moves is negligible)
    logits[0, off(60)], logits[0, PROGRAM], logits[0, shift(1)] = 2.0, 0.0, 0.0
    p = logits.softmax(-1)[0]
    for constraint, moved in ((g, True), (plain, False)):
        out, removed = apply_constraint(logits, constraint)
        q = out.softmax(-1)[0]
        assert torch.isinf(out[0, off(60)])
        expected = p[PROGRAM] + (p[off(60)] if moved else 0.0)
        assert q[PROGRAM] / q[shift(1)] == pytest.approx(float(expected / p[shift(1)]), rel=1e-5)
        refused = p[~torch.as_tensor(constraint.allowed()[0])].sum()
        assert float(removed[0]) == pytest.approx(float(refused - (p[off(60)] if moved else 0)),
                                                  abs=1e-6)
    g.update(torch.tensor([PROGRAM]), torch.tensor([0.0]))
    assert g.allowed()[0][off(60)]  # after the switch, its note-off
    assert g.redirects()[0][off(67)] == -1  # 67 started in this step
    g.update(torch.tensor([shift(1)]), torch.tensor([0.0]))
    assert g.redirects()[0][off(67)] == PROGRAM + 40  # and back for the other's
    # two instruments sound the pitch elsewhere: the one that has sounded it longest
    prompt = [SEP, VELOCITY, PROGRAM + 2, on(50), shift(1), PROGRAM + 1, on(50), shift(1),
              PROGRAM + 3]
    g = MIDIGrammar(GrammarLimits(8, 100), [np.array(prompt)])
    assert g.redirects()[0][off(50)] == PROGRAM + 2
    # no switch right after a switch: nothing moves where the target is refused
    plain = MIDIGrammar(GrammarLimits(8, 100), [np.array(prompt)], redirect=False)
    assert not g.allowed()[0][PROGRAM + 2]
    logits[0, off(50)] = 3.0
    for got, want in zip(apply_constraint(logits, g), apply_constraint(logits, plain)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("seed, lost", [(0, 0), (1, 0), (0, 1)])
def test_redirected_sampling_releases_more_notes_and_needs_no_repair(seed, lost):
    """A 'model' that wants a note-off for any sounding pitch, whatever the instrument (or,
    having lost track, for the pitch `lost` semitones above), sampled under the grammar
    with and without redirects: both decode with no repair; redirected, fewer of its
    wishes are refused and more notes end by its own note-off rather than the grammar's
    forced release."""
    limits = GrammarLimits(max_polyphony=6, max_steps=60)
    results = {}
    for redirect in (True, False):
        g = MIDIGrammar(limits, [np.array([SEP])], redirect=redirect)
        gen = torch.Generator().manual_seed(seed)
        tokens, forced = [SEP], 0
        for _ in range(2000):
            logits = torch.randn(1, VOCAB_SIZE, generator=gen)
            logits[0, PROGRAM + 3:DRUMS + 1] = -9.0  # three instruments
            for _, pitch in g.walks[0].sounding:
                logits[0, off(min(pitch + lost, 127))] = 4.0
            forced += int(g.allowed()[0].sum() == 1)
            out, removed = apply_constraint(logits, g)
            t = sample_next(out, generator=gen)
            g.update(t, removed)
            tokens.append(int(t))
        closing = g.closing()
        _, repairs = get_domain("midi").decode(np.array(tokens + closing))
        assert repairs["unmatched_note_off"] == repairs["unclosed_note"] == 0
        body = np.array(tokens)
        results[redirect] = (np.mean(g.removed), int(((body >= NOTE_OFF) & (body < SHIFT)).sum())
                             - forced)
    (refused, own_offs), (plain_refused, plain_own_offs) = results[True], results[False]
    assert refused < plain_refused and own_offs > plain_own_offs


def test_limits_are_typical_polyphony_and_the_most_tokens_in_a_moment():
    # one note alone for 100 steps, then a 3-note chord for 2: 3 notes sound 2% of the time
    seq = np.array([SEP, PROGRAM, VELOCITY, on(60), shift(100), on(64), on(67), shift(2),
                    off(60), off(64), off(67)])
    limits = limits_from([seq])
    assert limits.max_polyphony == 1 and limits.max_step_tokens == 3  # program, velocity, on


@pytest.mark.parametrize("vocabulary", ["events", "durations"])
def test_limits_of_the_bundled_chorales_match_their_notes(vocabulary):
    """The polyphony cap is the 95th percentile of what sounds, counted step by step on the
    decoded notes; the most tokens in one moment is the most the pieces have."""
    domain = get_domain("midi", vocabulary=vocabulary)
    records = list(domain.read(BACH))
    limits = GrammarLimits(**domain.sampling_limits(r.tokens for r in records))
    pieces = [domain.decode(r.tokens)[0] for r in records]
    assert limits.max_polyphony == polyphony_percentile(pieces, 95)
    assert 4 <= limits.max_polyphony <= 5  # four voices, now and then one divided
    assert limits.mean_polyphony == pytest.approx(sounding_counts(pieces).mean(), abs=1e-3)
    assert limits.max_step_tokens == max(tokens_between_shifts(r.tokens).max()
                                         for r in records)
    # each instrument's range is its decoded notes' lowest and highest pitch
    spans: dict[int, list[int]] = {}
    for piece in pieces:
        for inst in piece.instruments:
            token = DRUMS if inst.is_drum else PROGRAM + inst.program
            pitches = [n.pitch for n in inst.notes] + spans.get(token, [])
            spans[token] = [min(pitches), max(pitches)]
    assert limits.pitch_ranges == [[token, *span] for token, span in sorted(spans.items())]
    # the register: the median span of REGISTER_NOTES notes in onset order
    windows = []
    for piece in pieces:
        pitches = np.array([n.pitch for n in sorted(
            (n for inst in piece.instruments if not inst.is_drum for n in inst.notes),
            key=lambda n: (n.start, n.pitch))])
        run = np.lib.stride_tricks.sliding_window_view(pitches, REGISTER_NOTES)
        windows.append(run.max(1) - run.min(1))
    assert limits.register_span == int(np.median(np.concatenate(windows)))
    assert 24 <= limits.register_span <= 36  # bass to soprano, about two and a half octaves


@pytest.mark.parametrize("vocabulary", ["events", "durations"])
def test_an_instrument_starts_notes_only_within_its_training_range(vocabulary):
    domain = get_domain("midi", vocabulary=vocabulary)
    limits = GrammarLimits(max_polyphony=4, max_steps=100,
                           pitch_ranges=[[PROGRAM + 32, 28, 55], [PROGRAM + 73, 60, 96]])
    # JSON (sampling.json) and back: the same limits
    assert GrammarLimits(**json.loads(json.dumps(limits.to_dict()))) == limits
    named = [SEP, VELOCITY + 16, PROGRAM + 32]
    ok = domain.constraint(limits.to_dict(), [np.array(named)]).allowed()[0]
    assert ok[on(28)] and ok[on(55)] and not ok[on(27)] and not ok[on(56)]
    ok = domain.constraint(limits.to_dict(), [np.array(named + [PROGRAM + 73])]).allowed()[0]
    assert not ok[on(59)] and ok[on(60)] and ok[on(96)] and not ok[on(97)]
    # an instrument the training music never played is not limited, nor is any instrument
    # under limits stored before ranges were
    ok = domain.constraint(limits.to_dict(), [np.array(named + [PROGRAM + 5])]).allowed()[0]
    assert ok[on(0)] and ok[on(127)]
    old = {k: v for k, v in limits.to_dict().items() if k != "pitch_ranges"}
    assert domain.constraint(old, [np.array(named)]).allowed()[0][on(0)]
    # a sample switches only to instruments the training music or the prompt names
    ok = domain.constraint(limits.to_dict(), [np.array(named + [VELOCITY])]).allowed()[0]
    assert ok[PROGRAM + 73] and not ok[PROGRAM + 5] and not ok[DRUMS]
    prompt = named + [PROGRAM + 5, VELOCITY + 3, PROGRAM + 32, VELOCITY + 16]
    ok = domain.constraint(limits.to_dict(), [np.array(prompt)]).allowed()[0]
    assert ok[PROGRAM + 5] and ok[PROGRAM + 73] and not ok[PROGRAM + 6] and not ok[DRUMS]
    assert domain.constraint(old, [np.array(named + [VELOCITY])]).allowed()[0][PROGRAM + 5]
    # what the prompt plays on an instrument widens its range (a held-out piece may take
    # it lower or higher than the training music did)
    def note(p):  # noqa: ANN001, ANN202 (durations: a pitch, then its duration)
        return [on(p), shift(1), off(p)] if vocabulary == "events" else [on(p), off(0)]
    played = named + note(24) + note(60) + [shift(8)]  # both notes over
    ok = domain.constraint(limits.to_dict(), [np.array(played)]).allowed()[0]
    assert ok[on(24)] and ok[on(60)] and not ok[on(23)] and not ok[on(61)]


def test_texture_rules_mask_tokens_that_change_nothing_and_keep_time_moving():
    limits = GrammarLimits(max_polyphony=8, max_steps=100, max_step_tokens=4)
    g = MIDIGrammar(limits, [np.array([SEP, PROGRAM + 3])])
    ok = g.allowed()[0]
    assert not ok[PROGRAM:DRUMS + 1].any() and ok[VELOCITY]  # no instrument after one
    g.update(torch.tensor([VELOCITY + 5]), torch.tensor([0.0]))
    ok = g.allowed()[0]
    assert not ok[VELOCITY:PROGRAM].any()  # no velocity right after a velocity
    assert not ok[PROGRAM + 3] and ok[PROGRAM + 4] and ok[DRUMS]  # none naming the current
    g.update(torch.tensor([on(60)]), torch.tensor([0.0]))
    g.update(torch.tensor([on(64)]), torch.tensor([0.0]))  # 4 tokens in this moment
    ok = g.allowed()[0]
    assert ok[SHIFT:VELOCITY].all() and ok.sum() == VELOCITY - SHIFT  # only time may come
    g.update(torch.tensor([shift(1)]), torch.tensor([0.0]))
    assert g.allowed()[0][off(60)] and g.allowed()[0][VELOCITY]  # a new moment
    # limits stored before max_step_tokens existed: no cap on a moment
    old = MIDIGrammar(GrammarLimits(8, 100), [np.array([SEP, PROGRAM + 3, VELOCITY]
                                                       + [on(p) for p in range(40, 47)])])
    assert old.allowed()[0][on(50)]


def test_every_bundled_piece_keeps_the_texture_rules():
    """The texture rules only forbid what real music never does: each token of each piece
    of the bundled sample passes them where it stands (the polyphony cap is meant to bind,
    and unisons break the older no-second-note-on rule: neither is asked here)."""
    domain = get_domain("midi")
    records = [r for path in MIDI_SAMPLE for r in domain.read(path)]
    limits = limits_from([r.tokens for r in records])
    for rec in records:
        g = MIDIGrammar(limits, [np.array([SEP])])
        for token in np.asarray(rec.tokens).tolist():
            assert g.walks[0].texture(np.ones(VOCAB_SIZE, bool), limits)[token], (rec.id, token)
            g.update(torch.tensor([token]), torch.tensor([0.0]))


@pytest.mark.parametrize("step_tokens", [None, 5])
@pytest.mark.parametrize("seed", range(3))
def test_random_sampling_under_the_grammar_needs_no_repair(seed, step_tokens):
    """Any choice among the allowed tokens, for 3,000 steps: the decoder finds no unmatched
    note-off and, after `closing`, no unclosed note; polyphony and note length stay within
    the limits, and so do the tokens of one moment."""
    limits = GrammarLimits(max_polyphony=4, max_steps=50, max_step_tokens=step_tokens)
    g = MIDIGrammar(limits, [np.array([SEP])])
    rng = np.random.default_rng(seed)
    tokens = [SEP]
    for _ in range(3000):
        ok = g.allowed()[0]
        weights = np.where(ok, rng.random(len(ok)), 0.0)
        weights[NOTE_ON:NOTE_OFF] *= 3.0  # lean towards notes, to test the caps
        t = int(np.argmax(weights))
        g.update(torch.tensor([t]), torch.tensor([0.0]))
        tokens.append(t)
    closing = g.closing()
    tokens += closing
    domain = get_domain("midi")
    pm, repairs = domain.decode(np.array(tokens))
    assert repairs["unmatched_note_off"] == repairs["unclosed_note"] == 0
    assert repairs["zero_length"] == repairs["no_instrument"] == repairs["no_velocity"] == 0
    notes = [n for inst in pm.instruments for n in inst.notes]
    assert notes and max(n.end - n.start for n in notes) <= limits.max_steps * 0.01 + 1e-6
    edges = sorted([(n.start, 1) for n in notes] + [(n.end, -1) for n in notes])
    assert max(np.cumsum([e for _, e in edges])) <= limits.max_polyphony
    if step_tokens is not None:
        body = np.array(tokens[1:len(tokens) - len(closing)])
        assert tokens_between_shifts(body).max() <= step_tokens


def test_train_stores_limits_and_sample_keeps_the_grammar(tmp_path):
    out = tmp_path / "bach"
    code, text = run("train", "midi", "--midi", BACH, "--out", out, "--max-steps", 2,
                     "--batch-size", 2, "--vocabulary", "events", *TINY)
    assert code == 0, text
    import json

    limits = json.loads((out / "sampling.json").read_text())
    tokens = [r.tokens for r in get_domain("midi").read(BACH)]
    # the 11 training chorales; a language model keeps no per-instrument polyphony limit
    # and has no source to pace
    assert limits["instrument_polyphony"] is None and limits["pace"] is None
    expected = limits_from(tokens[:-1]).to_dict()
    assert limits == {**expected, "instrument_polyphony": None}
    assert 4 <= limits["max_polyphony"] <= 5  # four voices, now and then one divided
    mid = tmp_path / "s.mid"
    code, text = run("sample", "midi", "--model", out, "--length", 400, "--out", mid,
                     "--seed", 0)
    assert code == 0, text
    assert "grammar: masked" in text and "no repairs needed" in text
    code, plain = run("sample", "midi", "--model", out, "--length", 400, "--out",
                      tmp_path / "plain.mid", "--seed", 0, "--no-redirect")
    assert code == 0 and "no repairs needed" in plain
    # the key and register steers are on by default: off, the same seed gives another
    # piece; a negative weight is one message
    assert isinstance(limits["register_span"], int)
    for steer in ("key", "register"):
        off_mid = tmp_path / f"{steer}-off.mid"
        code, text = run("sample", "midi", "--model", out, "--length", 400, "--out",
                         off_mid, "--seed", 0, f"--{steer}", 0)
        assert code == 0 and "no repairs needed" in text
        assert off_mid.read_bytes() != mid.read_bytes()
        code, text = run("sample", "midi", "--model", out, "--length", 5, "--out",
                         tmp_path / f"{steer}.mid", f"--{steer}", -1)
        assert code == 2 and f"{steer} must be >= 0" in text and "Traceback" not in text, text
    code, text = run("sample", "midi", "--model", out, "--length", 400, "--out",
                     tmp_path / "free.mid", "--seed", 0, "--no-grammar")
    assert code == 0 and "grammar" not in text and "unmatched_note_off" in text


@pytest.mark.parametrize("notes", [100, 99])
def test_a_long_prompt_sets_its_continuations_texture(notes):
    """A prompt of PROMPT_NOTES notes or more (here one at a time, 20 steps each) narrows the
    polyphony (the most and the mean) and note length its continuation may have to its own;
    a shorter one leaves the training music's (here 4 notes at once, 2.5 on average, 100
    steps)."""
    from seqformer.domains.midi.grammar import PROMPT_NOTES

    assert PROMPT_NOTES == 100
    prompt = [SEP, PROGRAM, VELOCITY]
    for k in range(notes):
        prompt += [on(60 + k % 12), shift(20), off(60 + k % 12)]
    prompt += [on(60), shift(1)]
    limits = GrammarLimits(max_polyphony=4, max_steps=100, mean_polyphony=2.5)
    grammar = MIDIGrammar(limits, [np.array(prompt)])
    ok = grammar.allowed()[0]
    own = notes >= 100
    assert grammar.row_limits[0].mean_polyphony == (1.0 if own else 2.5)
    assert ok[on(64)] != own  # a second note while 60 sounds: the prompt never had one
    assert ok[shift(19)] and ok[shift(20)] != own  # 60 may last 20 steps, or 100
    assert ok[shift(99)] != own
    # a prompt denser than the training music does not widen the limits
    narrow = GrammarLimits(max_polyphony=1, max_steps=10, mean_polyphony=0.5)
    assert MIDIGrammar(narrow, [np.array(prompt)]).row_limits[0] == narrow


def _one_by_one(vocabulary: str, *pitches: int) -> list[int]:
    """Notes of `pitches` one after another, each ended before the next."""
    out = []
    for p in pitches:
        out += ([on(p), shift(1), off(p)] if vocabulary == "events"
                else [on(p), DURATION, shift(1)])
    return out


@pytest.mark.parametrize("vocabulary", ["events", "durations"])
def test_the_key_steer_weighs_notes_outside_the_recent_scale(vocabulary):
    """Once KEY_NOTES notes have started, a note-on whose pitch class is outside the major
    scale (or relative minor) the recent notes fit best is weighted exp(-key); nothing
    before, on drums, or with key 0; a modulation moves the scale."""
    domain = get_domain("midi", vocabulary=vocabulary)
    limits = GrammarLimits(max_polyphony=8, max_steps=500).to_dict()

    def steer(tokens, **weights):  # noqa: ANN001, ANN003, ANN202 - the key steer alone
        return domain.constraint(limits, [np.array(tokens)], texture=0.0, voice=0.0, **weights)

    named = [SEP, PROGRAM, VELOCITY + 16]
    c_major = named + _one_by_one(vocabulary, 60, 62, 64, 67, 69)  # C D E G A
    weights = steer(c_major).log_weights()[0]
    outside = [p for p in range(128) if p % 12 in (1, 3, 6, 8, 10)]
    assert np.allclose(weights[[on(p) for p in outside]], -KEY_WEIGHT)
    assert not weights[[on(p) for p in range(128) if p not in outside]].any()
    assert not weights[:NOTE_ON].any() and not weights[NOTE_ON + 128:].any()
    assert steer(c_major, key=0.0).log_weights() is None
    few = named + _one_by_one(vocabulary, *[60, 62, 64, 67, 69][:KEY_NOTES - 1])
    assert steer(few).log_weights() is None
    assert steer(c_major + [DRUMS]).log_weights() is None
    # twenty notes of E major later, E major's G# and D# are in, C major's F and C are out
    e_major = c_major + _one_by_one(vocabulary, *[64, 66, 68, 69, 71, 73, 75] * 3)
    weights = steer(e_major).log_weights()[0]
    assert weights[on(68)] == weights[on(75)] == 0.0
    assert weights[on(65)] == weights[on(60)] == -KEY_WEIGHT


def _random_piece(limits: GrammarLimits, seed: int, steps: int, favoured: slice,
                  lean: float, **steers: float) -> np.ndarray:
    """The note-on pitches of `steps` tokens sampled from random logits under the event
    grammar with `steers`, leaning `lean` towards the note-ons of `favoured` pitches and
    towards ending what sounds; the piece decodes with no repair (asserted), and has more
    than 200 notes."""
    tokens = [SEP, PROGRAM, VELOCITY + 16]
    g = MIDIGrammar(limits, [np.array(tokens)], **steers)
    leaning = torch.zeros(VOCAB_SIZE)
    leaning[NOTE_ON + favoured.start:NOTE_ON + favoured.stop] = lean
    body = np.array(_sample_random(g, tokens, seed, leaning, 6.0,
                                   lambda _: len(tokens) < 3 + steps))
    pitches = body[(body >= NOTE_ON) & (body < NOTE_OFF)] - NOTE_ON
    assert len(pitches) > 200
    return pitches


def _sample_random(g: MIDIGrammar, tokens: list[int], seed: int, lean: torch.Tensor,
                   release: float, go_on) -> list[int]:  # noqa: ANN001
    """Tokens sampled from random logits plus `lean` (V,), and `release` on the note-offs
    of what sounds, under the event grammar `g` (whose prompt is `tokens`), appended to
    `tokens` while `go_on(g)`; the piece decodes with no repair (asserted)."""
    gen = torch.Generator().manual_seed(seed)
    while go_on(g):
        logits = torch.randn(1, VOCAB_SIZE, generator=gen) + lean
        for _, pitch in g.walks[0].sounding:
            logits[0, off(pitch)] += release
        out, removed = apply_constraint(logits, g)
        t = sample_next(out, generator=gen)
        g.update(t, removed)
        tokens.append(int(t))
    _, repairs = get_domain("midi").decode(np.array(tokens + g.closing()))
    assert not any(repairs.values()), repairs
    return tokens


@pytest.mark.parametrize("vocabulary", ["events", "durations"])
def test_the_register_steer_weighs_notes_that_widen_the_recent_span(vocabulary):
    """A note-on that would take the last REGISTER_NOTES pitched notes (any instrument,
    drums not counted) past the training music's span is weighted by exp(-register) per
    semitone past it; past their own span where that is already wider; nothing with
    register 0, on drums, or with limits stored before the span was."""
    domain = get_domain("midi", vocabulary=vocabulary)
    limits = GrammarLimits(max_polyphony=8, max_steps=500, register_span=12).to_dict()

    def weights(tokens, register=0.5, limits=limits):
        steer = domain.constraint(limits, [np.array(tokens)], texture=0.0, voice=0.0, key=0.0,
                                  register=register)
        out = steer.log_weights()
        return None if out is None else out[0]

    named = [SEP, PROGRAM, VELOCITY + 16]
    c_to_g = named + _one_by_one(vocabulary, 60, 64, 67)  # span 7: 55 .. 72 keep it within 12
    w = weights(c_to_g)
    below, above = np.arange(0, 55), np.arange(73, 128)
    assert np.allclose(w[on(below)], -0.5 * (55 - below))
    assert np.allclose(w[on(above)], -0.5 * (above - 72))
    assert not w[on(np.arange(55, 73))].any()
    assert not w[:NOTE_ON].any() and not w[NOTE_ON + 128:].any()
    assert weights(c_to_g, register=0.0) is None
    assert weights(named) is None  # no note yet
    assert weights(c_to_g + [DRUMS]) is None
    old = GrammarLimits(max_polyphony=8, max_steps=500).to_dict()
    assert weights(c_to_g, limits=old) is None
    # another instrument shares the piece's register; drum notes do not enter it
    assert np.allclose(weights(c_to_g + [PROGRAM + 1]), w)
    assert np.allclose(weights(c_to_g + [DRUMS] + _one_by_one(vocabulary, 30) + [PROGRAM]), w)
    # wider than 12 already (48 .. 67): anything between is free, past it costs
    wide = weights(c_to_g + _one_by_one(vocabulary, 48))
    assert not wide[on(np.arange(48, 68))].any()
    assert wide[on(47)] == wide[on(68)] == -0.5
    # REGISTER_NOTES later notes around 80 push 48 .. 67 out of the window
    moved = weights(c_to_g + _one_by_one(vocabulary, 48, *[78, 82] * (REGISTER_NOTES // 2)))
    assert not moved[on(np.arange(70, 91))].any()
    assert moved[on(69)] == moved[on(91)] == -0.5


def test_register_span_is_the_typical_span_of_recent_notes():
    """limits_from's register_span: the REGISTER_QUANTILE-th percentile of the span of
    REGISTER_NOTES consecutive pitched notes, drums not counted; a shorter piece is one
    window; a long prompt narrows it to its own."""
    named = [SEP, PROGRAM, VELOCITY + 16]

    def piece(pitches):
        return np.array(named + [t for p in pitches for t in (on(p), shift(1), off(p))])

    narrow = piece([60, 65] * REGISTER_NOTES)  # every window spans 5
    wide = piece([40, 70] * (REGISTER_NOTES // 2))  # one window, 30
    drums = np.array(named + [DRUMS, on(20), shift(1), off(20)])
    assert limits_from([narrow]).register_span == 5
    assert limits_from([wide]).register_span == 30
    assert limits_from([narrow, np.concatenate([narrow, drums])]).register_span == 5
    # the percentile over all windows: many narrow windows and one wide
    assert limits_from([narrow, wide]).register_span == 5
    assert limits_from([np.array(named)]).register_span is None
    wide_limits = limits_from([wide])
    prompt = piece([60, 62, 64, 65, 67] * 20)  # 100 notes spanning 7
    assert fitted_to(wide_limits, prompt).register_span == 7
    assert fitted_to(wide_limits, prompt[:40]).register_span == 30  # too short to say


@pytest.mark.parametrize("seed", range(2))
def test_sampling_under_the_register_steer_keeps_a_narrower_span(seed):
    """Random logits that put 3% of the notes anywhere and the rest in two octaves, sampled
    under the grammar with the register steer and without: the steered piece keeps near the
    two octaves, the plain one spans most of the 128 pitches; both decode with no repair."""
    limits = GrammarLimits(max_polyphony=4, max_steps=60, register_span=24)
    spans = {}
    for register in (1.0, 0.0):
        # 97% of the notes in two octaves
        pitches = _random_piece(limits, seed, 2000, slice(48, 72), 5.0, key=0.0,
                                register=register)
        spans[register] = int(pitches.max() - pitches.min())
    assert spans[1.0] < 36 and spans[0.0] > 90, spans


@pytest.mark.parametrize("seed", range(2))
def test_sampling_under_the_key_steer_keeps_to_one_scale(seed):
    """Random logits sampled under the grammar with the key steer and without: the notes of
    the steered piece keep to one major or minor scale more often (a random pitch lands in
    one scale 7 times in 12), and both decode with no repair."""
    limits = GrammarLimits(max_polyphony=4, max_steps=60)
    in_scale = {}
    for key in (KEY_WEIGHT, 0.0):
        pitches = _random_piece(limits, seed, 3000, slice(0, 128), 3.0, key=key)
        pitch_classes = np.bincount(pitches % 12, minlength=12)
        majors = [np.roll(np.isin(np.arange(12), [0, 2, 4, 5, 7, 9, 11]), r) for r in range(12)]
        in_scale[key] = max(pitch_classes[m].sum() for m in majors) / pitch_classes.sum()
    assert in_scale[KEY_WEIGHT] > 0.8 and in_scale[0.0] < 0.7, in_scale


def _notes_of(vocabulary: str, program: int, *pitches: int) -> list[int]:
    """A program token, a velocity and `pitches` one by one (an empty program: no token)."""
    named = ([PROGRAM + program] if program else []) + [VELOCITY + 16]
    return named + _one_by_one(vocabulary, *pitches)


@pytest.mark.parametrize("source_vocabulary", ["events", "durations"])
def test_pace_is_each_instruments_median_notes_per_source_note(source_vocabulary):
    """pace_from: per instrument of the targets, the median over the pairs whose target
    plays it of its notes over the source's pitched notes (drums not counted); a pair with
    a silent source says nothing."""
    def source(*pitches, drums=0):
        return np.array([SEP] + _notes_of(source_vocabulary, 0, *pitches)
                        + ([DRUMS] + _one_by_one(source_vocabulary, *[36] * drums)
                           if drums else []))

    def target(alto, bass):
        return np.array([SEP] + _notes_of("events", 41, *[60] * alto)
                        + (_notes_of("events", 42, *[48] * bass) if bass else []))

    pairs = [(source(72, 74, 76, 77, drums=5), target(4, 8)),   # 1.0 and 2.0 per note
             (source(72, 74), target(3, 0)),                     # 1.5; no bass
             (source(72, 74, 76, 77), target(2, 4)),             # 0.5 and 1.0
             (np.array([SEP, PROGRAM, VELOCITY]), target(9, 9))]  # a silent source
    assert pace_from(pairs, source_vocabulary) == [[PROGRAM + 41, 1.0], [PROGRAM + 42, 1.5]]
    assert pace_from(pairs[3:], source_vocabulary) is None
    # the domain stores it only for a MIDI source
    midi = get_domain("midi")
    targets, sources = [t for _, t in pairs], [s for s, _ in pairs]
    source_domain = get_domain("midi", vocabulary=source_vocabulary)
    stored = midi.sampling_limits(targets, sources=sources, source_domain=source_domain)
    assert stored["pace"] == [[PROGRAM + 41, 1.0], [PROGRAM + 42, 1.5]]
    assert midi.sampling_limits(targets)["pace"] is None
    assert midi.sampling_limits(targets, sources=sources,
                                source_domain=get_domain("dna"))["pace"] is None


@pytest.mark.parametrize("vocabulary", ["events", "durations"])
def test_the_pace_steer_weighs_notes_ahead_and_shifts_behind(vocabulary):
    """With a pace of r notes per source note and n source notes begun by the target's
    time: the current instrument's note-ons (and, with events, its note-offs: it holds
    rather than rests) weigh exp(-pace) per note past r n + PACE_SLACK (the next note
    counted), and time shifts exp(-pace) per note the instrument furthest behind is past
    PACE_SLACK below it, counting only instruments the target has played. Nothing with
    pace 0, without a source, or with limits stored before the pace was."""
    domain = get_domain("midi", vocabulary=vocabulary)
    # alto (41) 1 note per source note, bass (42) 2; the source's notes begin at 0, 10, 20
    limits = GrammarLimits(max_polyphony=8, max_steps=500,
                           pace=[[PROGRAM + 41, 1.0], [PROGRAM + 42, 2.0]]).to_dict()
    onsets = [np.array([0, 10, 20])]

    def weights(tokens, pace=0.5, limits=limits, onsets=onsets):
        steer = domain.constraint(limits, [np.array([SEP] + tokens)], texture=0.0, voice=0.0,
                                  key=0.0, register=0.0, pace=pace, source_onsets=onsets)
        out = steer.log_weights()
        return None if out is None else out[0]

    shifts, note_ons = slice(SHIFT, VELOCITY), slice(NOTE_ON, NOTE_ON + 128)
    assert PACE_SLACK == 1.0  # the hand-computed values below
    # time 3, 1 source note: the alto's 3 notes are 2 ahead, its next note 3: 2 past slack
    alto = _notes_of(vocabulary, 41, 60, 62, 64)
    w = weights(alto)
    assert np.allclose(w[note_ons], -0.5 * 2) and not w[shifts].any()
    ends = w[NOTE_ON + 128:SHIFT]  # note-offs (events), durations
    assert np.allclose(ends, -0.5 * 2) if vocabulary == "events" else not ends.any()
    assert not w[:NOTE_ON].any() and not w[VELOCITY:].any()
    # the bass, not yet played, is neither ahead nor behind
    assert weights(alto + [PROGRAM + 42, VELOCITY + 16]) is None
    # time 24, 3 source notes: the alto, 3 notes, is on pace; the bass, 1 note, is 5
    # behind (4 past slack): shifts weigh -0.5 * 4 whatever the current instrument
    late = alto + _notes_of(vocabulary, 42, 48) + [shift(20)]
    w = weights(late)
    assert np.allclose(w[shifts], -0.5 * 4) and not w[note_ons].any()
    assert np.allclose(weights(late + [PROGRAM + 41])[shifts], -0.5 * 4)
    # an instrument without a pace is not steered
    other = _notes_of(vocabulary, 43, *[60] * 6)
    assert weights(other) is None
    assert weights(alto, pace=0.0) is None
    assert weights(alto, onsets=None) is None
    assert weights(alto, limits=GrammarLimits(max_polyphony=8, max_steps=500).to_dict()) is None


@pytest.mark.parametrize("seed", range(2))
def test_sampling_under_the_pace_steer_keeps_each_instrument_near_its_pace(seed):
    """Random logits that favour note-ons on two programs, sampled under the event grammar
    with a pace of 1 and 0.5 notes per source note against a source of 60 notes and
    without it: the paced target ends within 5 notes of 60 and 30 at the source's end, the
    plain one more than four times as far off; both decode with no repair."""
    onsets = np.arange(60) * 20  # a note every 20 steps, the last at 1,180
    # time keeps moving (max_step_tokens, as every stored limit has): else, with shifts
    # weighed down, a sampler can write instrument and velocity tokens forever
    limits = GrammarLimits(max_polyphony=4, max_steps=60, max_step_tokens=8,
                           pitch_ranges=[[PROGRAM + 1, 0, 127], [PROGRAM + 2, 0, 127]],
                           pace=[[PROGRAM + 1, 1.0], [PROGRAM + 2, 0.5]])
    leaning = torch.zeros(VOCAB_SIZE)
    leaning[NOTE_ON:NOTE_OFF] = leaning[PROGRAM + 1:PROGRAM + 3] = 3.0
    leaning[SHIFT:SHIFT + 5] = 3.0  # time moves in short steps
    counts = {}
    for pace in (1.0, 0.0):
        g = MIDIGrammar(limits, [np.array([SEP, PROGRAM + 1, VELOCITY + 16])], key=0.0,
                        register=0.0, pace=pace, source_onsets=[onsets])
        _sample_random(g, [SEP, PROGRAM + 1, VELOCITY + 16], seed, leaning, 4.0,
                       lambda grammar: grammar.walks[0].now < 1200)
        counts[pace] = [g.walks[0].started.get(PROGRAM + k, 0) for k in (1, 2)]
    off_pace = {pace: abs(n1 - 60) + abs(n2 - 30) for pace, (n1, n2) in counts.items()}
    assert abs(counts[1.0][0] - 60) <= 5 and abs(counts[1.0][1] - 30) <= 5, counts
    assert off_pace[0.0] > 4 * off_pace[1.0], counts


@pytest.mark.parametrize("vocabulary", ["events", "durations"])
def test_an_instrument_sounds_no_more_notes_at_once_than_it_does_in_training(vocabulary):
    """limits_from's instrument_polyphony: the most notes each instrument sounds at once
    (a chord of three once in a piece of two-note chords counts); the grammar then refuses
    a note-on of an instrument already sounding that many (a chorale's voice: one), while
    another instrument, or one the training music never played, may still start notes."""
    domain = get_domain("midi", vocabulary=vocabulary)
    named = [SEP, PROGRAM + 1, VELOCITY + 16]
    if vocabulary == "events":  # program 1: two-note chords; program 2: one note at a time
        chords = [on(60), on(64), shift(4), off(60), off(64)] * 40
        chords += [on(60), on(64), on(67), shift(1), off(60), off(64), off(67)]
        line = [PROGRAM + 2] + [on(50), shift(4), off(50)] * 10
    else:
        chords = [on(60), DURATION + 3, on(64), DURATION + 3, shift(4)] * 40
        chords += [on(60), DURATION, on(64), DURATION, on(67), DURATION, shift(1)]
        line = [PROGRAM + 2] + [on(50), DURATION + 3, shift(4)] * 10
    limits = limits_from([np.array(named + chords + line)], vocabulary)
    assert limits.max_polyphony == 2  # the typical texture: the chord of three is rare
    assert limits.instrument_polyphony == [[PROGRAM + 1, 3], [PROGRAM + 2, 1]]
    assert limits.polyphony_of(PROGRAM + 1) == 3 and limits.polyphony_of(PROGRAM + 3) == 2

    def allowed(tokens):
        return domain.constraint(limits.to_dict(), [np.array(named + tokens)]).allowed()[0]

    # the line's note, and a step on (it still sounds)
    first = [PROGRAM + 2, on(50)] + ([] if vocabulary == "events" else [DURATION + 3])
    first += [shift(1)]
    assert allowed([PROGRAM + 2])[on(50)]  # the line's range: 50 alone
    assert not allowed(first)[NOTE_ON:NOTE_ON + 128].any()  # the line holds one note
    assert allowed(first + [PROGRAM + 1])[on(62)]  # the chords' instrument may start one
    assert allowed(first + [PROGRAM + 3])[on(52)]  # unknown to the training music: any


@pytest.mark.parametrize("grammar_type", [MIDIGrammar, DurationGrammar])
def test_a_note_before_the_piece_names_its_instrument_and_velocity_names_them_first(
        grammar_type):
    """Before any instrument and velocity token, a note-on (refused) moves to the first
    instrument the training music plays that pitch on, then to velocity 64's bin; with
    neither ranges nor redirects, as the decoder assumes or not at all."""
    ranges = [[PROGRAM + 40, 55, 100], [PROGRAM + 42, 36, 76], [DRUMS, 35, 81]]
    g = grammar_type(GrammarLimits(4, 100, pitch_ranges=ranges), [np.array([SEP])])
    targets = g.redirects()[0]
    assert targets[on(60)] == PROGRAM + 40 and targets[on(40)] == PROGRAM + 42
    assert targets[on(20)] == PROGRAM + 40  # a pitch no instrument plays: the first one
    assert set(np.flatnonzero(targets >= 0)) == set(range(on(0), on(127) + 1))
    g.update(torch.tensor([PROGRAM + 42]), torch.tensor([0.0]))
    assert (g.redirects()[0][on(0):on(127) + 1] == VELOCITY + velocity_bin(64)).all()
    g.update(torch.tensor([VELOCITY + 20]), torch.tensor([0.0]))
    assert g.allowed()[0][on(60)] and g.redirects() is None
    bare = grammar_type(GrammarLimits(4, 100), [np.array([SEP])])
    assert (bare.redirects()[0][on(0):on(127) + 1] == PROGRAM).all()
    assert grammar_type(GrammarLimits(4, 100), [np.array([SEP])], redirect=False
                        ).redirects() is None


@pytest.mark.parametrize("redirect", [True, False])
def test_a_model_that_opens_with_a_note_begins_the_piece(redirect):
    """Random logits that favour note-ons, then time shifts, over everything else (a young
    duration model's first tokens after <sep>): with the redirect the piece has begun
    within a few tokens and decodes with no repair; without it the mask hands the notes'
    probability to the shifts, and nothing begins."""
    domain = get_domain("midi", vocabulary="durations")
    limits = GrammarLimits(4, 100, pitch_ranges=[[PROGRAM, 36, 84]])
    g = DurationGrammar(limits, [np.array([SEP])], redirect=redirect)
    gen = torch.Generator().manual_seed(0)
    lean = torch.zeros(VOCAB_SIZE)
    lean[NOTE_ON:NOTE_ON + 128] = 4.0
    lean[SHIFT:VELOCITY] = 3.0
    tokens = []
    for _ in range(60):
        out, removed = apply_constraint(torch.randn(1, VOCAB_SIZE, generator=gen) + lean, g)
        t = sample_next(out, generator=gen)
        g.update(t, removed)
        tokens.append(int(t))
    ons = [i for i, t in enumerate(tokens) if NOTE_ON <= t < NOTE_ON + 128]
    if redirect:
        assert ons and ons[0] <= 3, tokens[:10]
        pm, repairs = domain.decode(np.array([SEP] + tokens + g.closing()))
        assert not any(repairs.values()) and len(pm.instruments[0].notes) >= 5
    else:
        assert not ons
