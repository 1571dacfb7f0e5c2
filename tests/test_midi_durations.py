"""The duration vocabulary for MIDI: its bins, the round trip on every bundled piece, its
repairs, its grammar, and train/sample/score through the CLI with `--vocabulary durations`."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from seqformer.core.decoding.sampling import apply_constraint, sample_next
from seqformer.domains import InputError, get_domain
from seqformer.domains.midi import (
    DRUMS,
    DURATION,
    DURATION_STEPS,
    DURATION_TOKENS,
    PROGRAM,
    SEP,
    SHIFT,
    VELOCITY,
    VOCAB_SIZE,
    DurationGrammar,
    GrammarLimits,
    duration_bin,
    limits_from,
    load_midi,
    stats,
)
from seqformer.domains.midi.durations import decode, encode
from seqformer.domains.midi.grammar import LENGTH_SHARE, VOICE_WEIGHT

from cli_helpers import MIDI_SAMPLE, REPO
from cli_helpers import TINY_MODEL as TINY
from cli_helpers import run_cli as run
from midi_tokens import dur, on, shift

BUNDLED_FILES = MIDI_SAMPLE
BACH = REPO / "data" / "midi" / "bach"


def test_vocabulary_layout_and_bins():
    domain = get_domain("midi", vocabulary="durations")
    assert domain.vocab_size == VOCAB_SIZE == 519 and domain.tokens == DURATION_TOKENS
    assert domain.vocabulary()["config"] == {"vocabulary": "durations"}
    assert DURATION_TOKENS[on(60)] == "note_60" and DURATION_TOKENS[DURATION] == "dur_10ms"
    assert DURATION_TOKENS[DURATION + 127] == "dur_20000ms"
    # everything past the durations is the event vocabulary's
    assert DURATION_TOKENS[SHIFT:] == get_domain("midi").tokens[SHIFT:]
    steps = np.asarray(DURATION_STEPS)
    assert len(steps) == 128 and (np.diff(steps) > 0).all()
    assert list(steps[:28]) == list(range(1, 29))  # every 10 ms step up to 280 ms
    ratios = steps[1:] / steps[:-1]
    assert np.allclose(ratios[steps[:-1] >= 100], 1.0434, atol=0.006)  # then log-spaced


def test_duration_bin_is_the_nearest_in_log_terms():
    logs = np.log(DURATION_STEPS)
    for steps in [1, 2, 28, 29, 30, 31, 100, 137, 999, 1999, 2000]:
        assert duration_bin(steps) == int(np.argmin(np.abs(logs - math.log(steps)))), steps
    assert duration_bin(0) == 0 and duration_bin(50_000) == 127  # clamped at both ends
    def error(s): return abs(DURATION_STEPS[duration_bin(s)] / s - 1)  # noqa: E704
    assert max(map(error, range(1, 2001))) < 0.035
    assert max(map(error, range(100, 2001))) < 0.024


def quantized_notes(pm: pretty_midi.PrettyMIDI, from_file: bool) -> Counter:
    """(program, drum, pitch, onset step, velocity bin, duration steps) of every note; a
    file's duration is quantized as encode does, a decoded one is read as it stands."""
    out = Counter()
    for inst in pm.instruments:
        for n in inst.notes:
            on = math.floor(n.start * 100 + 1e-6)
            if from_file:
                off = max(math.floor(n.end * 100 + 1e-6), on + 1)
                steps = DURATION_STEPS[duration_bin(off - on)]
            else:
                steps = round((n.end - n.start) * 100)
            out[(0 if inst.is_drum else inst.program, inst.is_drum, n.pitch, on,
                 n.velocity // 4, steps)] += 1
    return out


@pytest.mark.parametrize("path", BUNDLED_FILES, ids=lambda p: p.stem)
def test_round_trip_bundled(path: Path):
    pm = load_midi(path)
    tokens = encode(pm)
    assert tokens.dtype == np.int64 and tokens.min() >= 2 and tokens.max() < VOCAB_SIZE
    decoded, repairs = decode(tokens)
    assert not any(repairs.values()), repairs
    # every note keeps instrument, pitch, onset step and velocity bin; its duration is its bin's
    assert quantized_notes(pm, True) == quantized_notes(decoded, False)
    assert np.array_equal(encode(decoded), tokens)  # tokens -> MIDI -> tokens is exact
    # a note is two tokens, never more (no note-off): shorter than the event vocabulary
    assert len(tokens) < len(get_domain("midi").encode(pm))


def test_decode_repairs():
    named = [PROGRAM, VELOCITY + 16]
    _, repairs = decode([SEP] + named + [on(60), shift(3), on(62), dur(5)])
    assert repairs["no_duration"] == 1 and sum(repairs.values()) == 1
    pm, repairs = decode([SEP] + named + [dur(5), on(60), dur(5)])
    assert repairs["unmatched_duration"] == 1 and sum(repairs.values()) == 1
    assert len(pm.instruments[0].notes) == 1
    _, repairs = decode([on(60), dur(2)])
    assert repairs["no_instrument"] == repairs["no_velocity"] == 1


def test_separator_starts_the_next_piece_after_the_last_note_ends():
    pm, repairs = decode([SEP, PROGRAM, VELOCITY, on(60), dur(40), SEP, PROGRAM, VELOCITY,
                          on(62), dur(1)])
    assert repairs["separator"] == 1
    starts = sorted((n.start, n.pitch) for n in pm.instruments[0].notes)
    assert starts == [(0.0, 60), (0.4, 62)]  # 40 steps is a bin of its own


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=-3, max_value=VOCAB_SIZE + 3), max_size=200))
def test_any_token_stream_decodes(tokens):
    pm, repairs = decode(tokens)
    assert all(n.end > n.start for inst in pm.instruments for n in inst.notes)
    assert all(v >= 0 for v in repairs.values())


def test_unknown_vocabulary_is_a_clean_error():
    with pytest.raises(InputError, match="unknown MIDI vocabulary 'beats'"):
        get_domain("midi", vocabulary="beats")


# ---------------------------------------------------------------------------- grammar


def test_limits_from_duration_tokens():
    # notes of 3 and 5 steps at once (polyphony 2), then one alone; a stray duration ignored
    seq = np.array([SEP, PROGRAM, VELOCITY, on(60), dur(3), on(64), dur(5), dur(7),
                    shift(10), on(67), dur(2)])
    limits = limits_from([seq] * 10, "durations")
    assert limits.max_polyphony == 2 and limits.max_steps == 5


def test_masks_follow_the_duration_grammar():
    limits = GrammarLimits(max_polyphony=2, max_steps=40)
    bare = DurationGrammar(limits, [np.array([SEP])]).allowed()[0]
    assert not bare[on(0):DURATION].any() and not bare[DURATION:SHIFT].any()
    g = DurationGrammar(limits, [np.array([SEP, PROGRAM, VELOCITY + 16, on(60)])])
    ok = g.allowed()[0]
    # after a pitch, only its duration, up to the limit
    assert ok[dur(1)] and ok[dur(40)] and not ok[dur(41)]
    assert ok.sum() == duration_bin(40) + 1
    g.update(torch.tensor([dur(20)]), torch.tensor([0.5]))
    ok = g.allowed()[0]
    assert not ok[DURATION:SHIFT].any()  # no duration without a note
    assert not ok[on(60)] and ok[on(61)]  # 60 sounds on this instrument
    assert ok[shift(100)] and ok[PROGRAM + 3] and not ok[SEP]
    g.update(torch.tensor([on(64)]), torch.tensor([0.0]))
    g.update(torch.tensor([dur(30)]), torch.tensor([0.0]))
    assert not g.allowed()[0][on(0):DURATION].any()  # two notes sound: the cap
    g.update(torch.tensor([shift(20)]), torch.tensor([0.0]))  # note 60 has ended
    ok = g.allowed()[0]
    assert ok[on(60)] and not ok[on(64)]
    g.update(torch.tensor([PROGRAM + 40]), torch.tensor([0.0]))
    assert g.allowed()[0][on(64)]  # 64 sounds on program 0, not on program 40
    assert g.closing() == []
    g.update(torch.tensor([on(70)]), torch.tensor([0.0]))
    assert g.closing() == [DURATION]  # a note waiting for its duration gets the shortest
    assert g.removed == [[0.5, 0.0, 0.0, 0.0, 0.0, 0.0]]


def test_the_texture_steer_lengthens_notes_and_holds_back_shifts_that_thin_the_texture():
    """With the training music's mean polyphony m: while a note awaits its duration and n
    notes sound (it included), fewer than m, decoding takes a duration of d steps with the
    model's probability times d ** (LENGTH_SHARE * texture * (m - n) / m); otherwise, while
    notes sound, a shift of k steps times exp(-texture * max(0, m - a_k)), a_k the mean
    number of notes sounding over those k steps. Nothing in silence, nor with texture 0
    (key and voice steers off here)."""
    limits = GrammarLimits(max_polyphony=4, max_steps=40, mean_polyphony=2.5)

    def steer(tokens, texture=2.0):  # noqa: ANN001, ANN202
        return DurationGrammar(limits, [np.array(tokens)], texture=texture, key=0.0,
                               voice=0.0)

    alone = [SEP, PROGRAM, VELOCITY, on(60)]
    assert steer(alone, texture=0.0).log_weights() is None
    g = steer(alone)
    logits = torch.randn(1, VOCAB_SIZE, generator=torch.Generator().manual_seed(0))
    steered, _ = apply_constraint(logits, g)
    ok = np.flatnonzero(g.allowed()[0])
    steps = np.array([DURATION_STEPS[t - DURATION] for t in ok], dtype=np.float64)
    expected = (np.exp(logits[0, ok].double().numpy())
                * steps ** (LENGTH_SHARE * 2.0 * (2.5 - 1) / 2.5))
    assert np.allclose(steered[0].double().softmax(-1)[ok].numpy(), expected / expected.sum(),
                       rtol=1e-4)
    assert steered[0].softmax(-1)[ok].sum() == pytest.approx(1.0)  # masked as before
    # two notes sound, none awaits a duration: only time shifts are steered, the more the
    # longer they run past the notes' ends
    end = DURATION_STEPS[duration_bin(30)]
    two = [SEP, PROGRAM, VELOCITY, on(60), dur(30), on(64), dur(30)]
    weights = steer(two).log_weights()[0]
    k = np.arange(1, VELOCITY - SHIFT + 1)
    sounding = 2 * np.minimum(k, end) / k
    assert np.allclose(weights[SHIFT:VELOCITY], -2.0 * (2.5 - sounding))
    assert weights[shift(end)] == pytest.approx(-1.0) and weights[shift(100)] < -3.5
    assert not weights[:SHIFT].any() and not weights[VELOCITY:].any()
    # a third note (3 >= 2.5 with it): its duration is not steered, nor a shift over which
    # 2.5 notes or more sound on average (3 * 30 / k, so up to 36 steps); a longer one is
    assert steer(two + [on(67)]).log_weights() is None
    weights = steer(two + [on(67), dur(30)]).log_weights()[0]
    assert end == 30 and not weights[SHIFT:shift(36) + 1].any() and weights[shift(37)] < 0
    # silence: nothing to steer; nor for limits stored before the mean
    assert steer(two + [shift(end)]).log_weights() is None
    old = GrammarLimits(max_polyphony=4, max_steps=40)
    assert DurationGrammar(old, [np.array(alone)], key=0.0, voice=0.0).log_weights() is None


def test_the_voice_steer_holds_back_time_until_the_notes_that_ended_are_replaced():
    """Once time has moved, a shift is weighted by exp(-voice) per note whose end the shift
    reached and that no note begun since replaced, in silence too; nothing before time
    moves, while a note awaits its duration, or with voice 0 (other steers off)."""
    limits = GrammarLimits(max_polyphony=4, max_steps=40, mean_polyphony=2.5)

    def weights(tokens, voice=1.5):  # noqa: ANN001, ANN202
        out = DurationGrammar(limits, [np.array(tokens)], texture=0.0, key=0.0,
                              register=0.0, voice=voice).log_weights()
        return None if out is None else out[0]

    end = DURATION_STEPS[duration_bin(30)]
    three = [SEP, PROGRAM, VELOCITY, on(60), dur(30), on(64), dur(30), on(67),
             dur(300)]
    assert weights(three) is None  # time has not moved
    w = weights(three + [shift(end)])  # 60 and 64 ended there, 67 sounds on
    assert np.allclose(w[SHIFT:VELOCITY], -3.0)
    assert not w[:SHIFT].any() and not w[VELOCITY:].any()
    assert weights(three + [shift(end)], voice=0.0) is None
    assert weights(three + [shift(end), on(62)]) is None  # awaiting its duration
    assert np.allclose(weights(three + [shift(end), on(62), dur(30)])[SHIFT:VELOCITY], -1.5)
    assert weights(three + [shift(end), on(62), dur(30), VELOCITY + 3, on(65),
                            dur(30)]) is None  # both replaced
    assert weights(three + [shift(end - 1)]) is None  # nothing ended yet
    # a shift past the ends counts them too; a later shift, only what it reached
    assert np.allclose(weights(three + [shift(end + 5)])[SHIFT:VELOCITY], -3.0)
    assert weights(three + [shift(end), shift(1)]) is None
    # in silence: every note ended with the shift
    silent = [SEP, PROGRAM, VELOCITY, on(60), dur(30), shift(end)]
    assert np.allclose(weights(silent)[SHIFT:VELOCITY], -1.5)
    # drums are not voices: a drum note ending, or one begun, counts for nothing
    drum = [SEP, DRUMS, VELOCITY, on(36), dur(30), PROGRAM, on(60), dur(30)]
    assert np.allclose(weights(drum + [shift(end)])[SHIFT:VELOCITY], -1.5)
    assert weights(drum + [shift(end), on(62), dur(30)]) is None
    assert weights(drum + [shift(end), DRUMS, on(38), dur(30)]) is not None


@pytest.mark.parametrize("seed", range(2))
def test_sampling_under_the_voice_steer_keeps_more_notes_sounding(seed):
    """Random logits that favour short notes and time shifts, sampled under the duration
    grammar with the voice steer and without: the steered piece sounds more notes at once
    on average and leaves fewer ended notes unreplaced; both decode with no repair."""
    limits = GrammarLimits(max_polyphony=4, max_steps=60, mean_polyphony=2.5)
    polyphony, dropped = {}, {}
    for voice in (VOICE_WEIGHT, 0.0):
        g = DurationGrammar(limits, [np.array([SEP])], texture=0.0, key=0.0, register=0.0,
                            voice=voice)
        gen = torch.Generator().manual_seed(seed)
        lean = torch.zeros(VOCAB_SIZE)
        lean[DURATION:DURATION + 4] = 3.0  # the shortest durations
        lean[SHIFT:SHIFT + 20] = 2.0  # and short shifts
        tokens, unreplaced = [SEP], 0
        for _ in range(4000):
            walk = g.walks[0]
            out, removed = apply_constraint(torch.randn(1, VOCAB_SIZE, generator=gen) + lean, g)
            t = sample_next(out, generator=gen)
            if SHIFT <= int(t) < VELOCITY and walk.ended > walk.begun:
                unreplaced += walk.ended - walk.begun
            g.update(t, removed)
            tokens.append(int(t))
        pm, repairs = decode(np.array(tokens + g.closing()))
        assert not any(repairs.values()), repairs
        summary = stats(pm)
        assert summary["notes"] > 300
        polyphony[voice] = summary["mean_polyphony"]
        dropped[voice] = unreplaced / summary["notes"]
    assert polyphony[VOICE_WEIGHT] > 1.2 * polyphony[0.0], polyphony
    assert dropped[VOICE_WEIGHT] < 0.5 * dropped[0.0], dropped


@pytest.mark.parametrize("seed", range(3))
def test_random_sampling_under_the_duration_grammar_needs_no_repair(seed):
    limits = GrammarLimits(max_polyphony=4, max_steps=50)
    g = DurationGrammar(limits, [np.array([SEP])])
    rng = np.random.default_rng(seed)
    tokens = [SEP]
    for _ in range(3000):
        ok = g.allowed()[0]
        weights = np.where(ok, rng.random(len(ok)), 0.0)
        weights[on(0):DURATION] *= 3.0  # lean towards notes, to test the cap
        t = int(np.argmax(weights))
        g.update(torch.tensor([t]), torch.tensor([0.0]))
        tokens.append(t)
    tokens += g.closing()
    pm, repairs = decode(np.array(tokens))
    assert not any(repairs.values()), repairs
    notes = [n for inst in pm.instruments for n in inst.notes]
    assert len(notes) > 100
    assert max(n.end - n.start for n in notes) <= limits.max_steps * 0.01 + 1e-6
    edges = sorted([(n.end, -1) for n in notes] + [(n.start, 1) for n in notes])
    assert max(np.cumsum([e for _, e in edges])) <= limits.max_polyphony


# ---------------------------------------------------------------------------- the CLI


def test_train_sample_score_with_the_duration_vocabulary(tmp_path):
    out = tmp_path / "bach"
    code, text = run("train", "midi", "--midi", BACH, "--out", out, "--max-steps", 2,
                     "--batch-size", 2, "--vocabulary", "durations", *TINY)
    assert code == 0, text
    # a line for each of the first 10 of the 12 chorales, then one for the rest
    lines = [line for line in text.splitlines() if line.startswith("tokenized ")]
    assert len(lines) == 10 and "... and 2 more: 12 records" in text, text
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["options"] == {"vocabulary": "durations"}
    domain = get_domain("midi", vocabulary="durations")
    tokens = [r.tokens for r in domain.read(BACH)]
    limits = json.loads((out / "sampling.json").read_text())
    # a language model keeps no per-instrument polyphony limit
    assert limits == {**limits_from(tokens[:-1], "durations").to_dict(),
                      "instrument_polyphony": None}
    code, text = run("info", out)
    assert code == 0 and "durations" in text, text
    mid = tmp_path / "s.mid"
    code, text = run("sample", "midi", "--model", out, "--length", 300, "--out", mid,
                     "--seed", 0)
    assert code == 0, text
    assert "no repairs needed" in text
    pm = load_midi(mid)
    assert sum(len(i.notes) for i in pm.instruments) > 0
    # the texture steer is on by default: off, the same seed gives another piece
    plain = tmp_path / "plain.mid"
    code, text = run("sample", "midi", "--model", out, "--length", 300, "--out", plain,
                     "--seed", 0, "--texture", 0)
    assert code == 0, text
    assert encode(load_midi(plain)).tolist() != encode(pm).tolist()
    # and so is the voice steer
    code, text = run("sample", "midi", "--model", out, "--length", 300, "--out", plain,
                     "--seed", 0, "--voice", 0, "--force")
    assert code == 0, text
    assert encode(load_midi(plain)).tolist() != encode(pm).tolist()
    for option in ("--texture", "--voice"):
        code, text = run("sample", "midi", "--model", out, "--length", 5, "--out",
                         tmp_path / "t.mid", option, -1)
        assert code == 2 and f"{option[2:]} must be >= 0" in text, text
        assert "Traceback" not in text
    # the compiled step decodes the same tokens (greedy), and a bad device is one error
    eager, compiled = tmp_path / "e.mid", tmp_path / "c.mid"
    for path, extra in ((eager, []), (compiled, ["--compile"])):
        code, text = run("sample", "midi", "--model", out, "--length", 60, "--out", path,
                         "--temperature", 0, "--device", "cpu", *extra)
        assert code == 0, text
    assert encode(load_midi(eager)).tolist() == encode(load_midi(compiled)).tolist()
    code, text = run("sample", "midi", "--model", out, "--length", 5, "--out",
                     tmp_path / "d.mid", "--device", "quantum")
    assert code != 0 and "--device quantum: not a device" in text and "Traceback" not in text
    code, text = run("score", "midi", "--model", out, "--midi", BACH / "bach__bwv1.6.mid",
                     "--out", tmp_path / "s.tsv")
    assert code == 0, text
    rows = (tmp_path / "s.tsv").read_text().splitlines()
    header, row = rows[0].split("\t"), rows[1].split("\t")
    assert int(row[header.index("length")]) == len(domain.encode(load_midi(
        BACH / "bach__bwv1.6.mid")))


def test_train_refuses_an_unknown_vocabulary(tmp_path):
    code, text = run("train", "midi", "--midi", BACH, "--out", tmp_path / "x",
                     "--vocabulary", "beats", *TINY)
    assert code != 0 and "unknown MIDI vocabulary 'beats'" in text
    assert "Traceback" not in text and not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, vocabulary", [
    ((), "durations"),  # the main job, midi-quick: the closer samples at its budgets
    (("--vocabulary", "events"), "events"),
    (("--config", "midi-tiny"), "events"),  # the other presets keep events
])
def test_the_main_job_trains_in_durations_and_the_other_presets_in_events(
        tmp_path, args, vocabulary):
    out = tmp_path / "run"
    code, text = run("train", "midi", "--midi", BACH, "--out", out, "--max-steps", 1,
                     "--batch-size", 1, *args, *TINY)
    assert code == 0, text
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["options"].get("vocabulary", "events") == vocabulary
    stored = get_domain("midi", **config["data"]["options"])
    assert stored.config().get("vocabulary", "events") == vocabulary
