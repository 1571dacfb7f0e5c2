"""Fitting the duration vocabulary's texture and voice steers to a trained model
(domains/midi/calibration.py, `train.calibrate_sampling`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from seqformer.domains import get_domain
from seqformer.domains.midi import calibration
from seqformer.domains.midi.calibration import STEER_GAINS, TEXTURE_TOLERANCE, calibrated
from seqformer.domains.midi.grammar import (
    DurationGrammar,
    GrammarLimits,
    limits_from,
    piece_polyphony,
)
from seqformer.domains.midi.vocab import (
    DURATION_STEPS,
    PROGRAM,
    SEP,
    VELOCITY,
)
from seqformer.pipeline.inference import sample_batch
from seqformer.pipeline.run_dir import load_run

from cli_helpers import REPO
from cli_helpers import TINY_MODEL as TINY
from cli_helpers import run_cli as run
from midi_tokens import dur, on, shift

BACH = REPO / "data" / "midi" / "bach"


def chord(pitches: list[int], steps: int) -> list[int]:
    """A piece of one chord held `steps` (a duration the vocabulary holds exactly)."""
    assert steps in DURATION_STEPS
    out = [SEP, PROGRAM, VELOCITY]
    for p in pitches:
        out += [on(p), dur(steps)]
    return out + [shift(min(steps, 100))] * -(-steps // 100)


def test_piece_polyphony_is_the_mean_of_each_pieces_not_of_all_their_time():
    """Two notes together for 0.98 s, and one note for 2.95 s: each piece's mean is 2 and
    1, so the pieces' is 1.5, where the pooled sounding time (the texture steer's mean)
    gives (2 * 98 + 295) / (98 + 295) = 1.25: a long thin piece weighs more there."""
    pair, long = chord([60, 64], 98), chord([60], 295)
    assert piece_polyphony(np.array(pair), "durations") == pytest.approx(2.0)
    assert piece_polyphony(np.array(long), "durations") == pytest.approx(1.0)
    limits = limits_from([np.array(pair), np.array(long)], "durations")
    assert limits.piece_polyphony == pytest.approx(1.5)
    assert limits.mean_polyphony == pytest.approx((2 * 98 + 295) / (98 + 295), abs=1e-3)
    assert piece_polyphony(np.array([SEP, PROGRAM, VELOCITY]), "durations") is None


def test_the_steer_gain_multiplies_the_texture_and_voice_weights():
    """Along a real chorale, the grammar with gain g weighs every token as the one with
    texture and voice g times as strong; the key and register steers are not scaled."""
    tokens = next(iter(get_domain("midi", vocabulary="durations").read(BACH))).tokens[:400]
    base = GrammarLimits(max_polyphony=5, max_steps=400, mean_polyphony=3.3)
    gained = DurationGrammar(GrammarLimits(**{**base.to_dict(), "steer_gain": 1.5}),
                             [np.array([SEP])], texture=2.0, voice=1.0)
    strong = DurationGrammar(base, [np.array([SEP])], texture=3.0, voice=1.5)
    plain = DurationGrammar(base, [np.array([SEP])], texture=2.0, voice=1.0)
    steered = 0
    for t in tokens[1:].tolist():
        a, b, c = gained.log_weights(), strong.log_weights(), plain.log_weights()
        assert (a is None) == (b is None)
        if a is not None:
            assert np.allclose(a, b, atol=1e-5)
            steered += c is not None and not np.allclose(a, c)
        for g in (gained, strong, plain):
            g.update(torch.tensor([t]), torch.zeros(1))
    assert steered > 20  # the gain did change the weights where the steers spoke


def test_the_ladder_keeps_the_first_gain_whose_samples_reach_the_training_pieces():
    """A stand-in model whose samples sound more notes at once the stronger the steers:
    the ladder stops at the first gain within TEXTURE_TOLERANCE of the training pieces'
    polyphony, goes to the last gain when none is, and does nothing for limits stored
    before the pieces' polyphony was."""
    notes_at = dict(zip(STEER_GAINS, (2, 3, 4, 5)))
    asked = []

    def sample(limits, n, length):  # noqa: ANN001, ANN202
        asked.append((limits.steer_gain, n, length))
        return [np.array(chord(list(range(60, 60 + notes_at[limits.steer_gain])), 98))] * n

    limits = GrammarLimits(max_polyphony=6, max_steps=400, mean_polyphony=3.0,
                           piece_polyphony=4.0 * (1 - TEXTURE_TOLERANCE / 2))
    fitted, tried = calibrated(limits, sample)
    assert tried == [(1.0, 2.0), (1.25, 3.0), (1.5, 4.0)] and fitted.steer_gain == 1.5
    assert fitted == GrammarLimits(**{**limits.to_dict(), "steer_gain": 1.5})
    assert asked[0][1:] == (calibration.CALIBRATION_SAMPLES, calibration.CALIBRATION_TOKENS)
    fitted, tried = calibrated(GrammarLimits(**{**limits.to_dict(), "piece_polyphony": 9.0}),
                               sample)
    assert [g for g, _ in tried] == list(STEER_GAINS) and fitted.steer_gain == STEER_GAINS[-1]
    fitted, tried = calibrated(GrammarLimits(**{**limits.to_dict(), "piece_polyphony": 2.0}),
                               sample)
    assert tried == [(1.0, 2.0)] and fitted.steer_gain == 1.0
    asked.clear()
    old = GrammarLimits(max_polyphony=6, max_steps=400, mean_polyphony=3.0)
    assert calibrated(old, sample) == (old, []) and not asked


def test_train_midi_fits_the_steers_to_the_model_it_trained(tmp_path, monkeypatch):
    """The duration vocabulary's run ends by sampling the exported model under each gain
    in turn and stores the first whose samples are thick enough; the event vocabulary has
    no such steer and is left alone."""
    monkeypatch.setattr(calibration, "CALIBRATION_SAMPLES", 4)
    monkeypatch.setattr(calibration, "CALIBRATION_TOKENS", 300)
    out = tmp_path / "bach"
    code, text = run("train", "midi", "--midi", BACH, "--out", out, "--max-steps", 2,
                     "--batch-size", 2, "--vocabulary", "durations", *TINY,
                     "train.calibrate_sampling=true")
    assert code == 0, text
    assert "sampling: the model's samples sound" in text, text
    limits = json.loads((out / "sampling.json").read_text())
    domain = get_domain("midi", vocabulary="durations")
    tokens = [r.tokens for r in domain.read(BACH)][:-1]  # the 11 training chorales
    assert limits["piece_polyphony"] == limits_from(tokens, "durations").piece_polyphony
    gain = limits["steer_gain"]
    assert gain in STEER_GAINS
    # what the model's samples sound at each gain up to the kept one, drawn again
    model, _, _ = load_run(out)
    prompt = np.array([domain.sep_id])
    floor = (1 - TEXTURE_TOLERANCE) * limits["piece_polyphony"]
    for g in STEER_GAINS[:STEER_GAINS.index(gain) + 1]:
        trial = {**limits, "steer_gain": g}
        rows, _ = sample_batch(model, prompt, 300, 4, seed=0, allowed=domain.generatable(),
                               constraint=domain.constraint(trial, [prompt] * 4))
        means = [m for m in (piece_polyphony(r, "durations") for r in rows) if m is not None]
        mean = float(np.mean(means))
        assert f"{round(mean, 3):.2f}" in text, (g, mean, text)
        if g < gain:
            assert mean < floor
        elif gain < STEER_GAINS[-1]:
            assert mean >= floor
    events = tmp_path / "events"
    code, text = run("train", "midi", "--midi", BACH, "--out", events, "--max-steps", 1,
                     "--batch-size", 2, "--vocabulary", "events", *TINY,
                     "train.calibrate_sampling=true")
    assert code == 0 and "sampling:" not in text, text
    assert json.loads((events / "sampling.json").read_text())["steer_gain"] == 1.0
