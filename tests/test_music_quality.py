"""Music quality features against hand-built pieces, and the overlapping area of two
distributions against cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pretty_midi
import pytest

from seqformer.domains import get_domain

from cli_helpers import REPO, load_app_module

# benchmarks/ is no package: its modules load by path
_features = load_app_module(REPO / "benchmarks" / "music_quality_features.py",
                            "music_quality_features")
FEATURES, compare = _features.FEATURES, _features.compare
overlap_area, piece_features = _features.overlap_area, _features.piece_features
reference_block, mix_weights = _features.reference_block, _features.mix_weights


def piece(notes: list[tuple[int, float, float]], drums: bool = False) -> pretty_midi.PrettyMIDI:
    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(0)
    inst.notes = [pretty_midi.Note(80, p, s, e) for p, s, e in notes]
    pm.instruments.append(inst)
    if drums:
        kit = pretty_midi.Instrument(0, is_drum=True)
        kit.notes = [pretty_midi.Note(100, 36, t, t + 0.05) for t in np.arange(0, 4, 0.25)]
        pm.instruments.append(kit)
    return pm


def test_features_of_a_c_major_scale_and_a_chord():
    # C major scale, 8 notes of 0.5 s, then a C major triad held 2 s (drums ignored)
    scale = [(p, 0.5 * i, 0.5 * i + 0.5) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])]
    chord = [(p, 4.0, 6.0) for p in (60, 64, 67)]
    f = piece(scale + chord, drums=True)
    got = piece_features(f)
    assert set(got) == set(FEATURES)
    assert got["scale_consistency"] == 1.0
    assert got["pitch_span"] == 12.0
    assert got["duration_median"] == 0.5 and got["duration_max"] == 2.0
    assert got["duration_p95"] == pytest.approx(np.percentile([0.5] * 8 + [2.0] * 3, 95))
    assert got["notes_per_second"] == pytest.approx(11 / 6.0)
    assert got["mean_polyphony"] == pytest.approx((4 * 1 + 2 * 3) / 6)  # time-weighted
    counts = np.bincount(np.array([60, 62, 64, 65, 67, 69, 71, 72, 60, 64, 67]) % 12,
                         minlength=12)
    p = counts[counts > 0] / counts.sum()
    assert got["pitch_class_entropy"] == pytest.approx(-(p * np.log2(p)).sum())
    # a chromatic run: 7 of 12 pitch classes fit a scale at best
    chromatic = piece([(60 + i, 0.1 * i, 0.1 * i + 0.1) for i in range(12)])
    assert piece_features(chromatic)["scale_consistency"] == pytest.approx(7 / 12)
    assert np.isnan(piece_features(pretty_midi.PrettyMIDI())["pitch_span"])


def test_overlap_area_known_cases():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 400)
    assert overlap_area(a, a) == pytest.approx(1.0, abs=1e-3)
    assert overlap_area(a, a + 50) < 1e-6
    b = rng.normal(1, 1, 400)
    # two unit normals one sigma apart overlap by 2 * Phi(-1/2) = 0.617
    assert overlap_area(a, b) == pytest.approx(0.617, abs=0.05)
    assert overlap_area(a, b) == pytest.approx(overlap_area(b, a))
    assert overlap_area(np.full(5, 3.0), np.full(7, 3.0)) == pytest.approx(1.0, abs=1e-3)
    assert np.isnan(overlap_area(np.array([np.nan]), a))


def test_bundled_pieces_against_themselves_and_against_a_hold_everything_piece():
    midi = get_domain("midi")
    records = list(midi.read(REPO / "data" / "midi" / "bach"))[:12]
    real = [piece_features(midi.decode(r.tokens)[0]) for r in records]
    same = compare(real, real)
    assert all(row["overlap"] == pytest.approx(1.0, abs=1e-3) for row in same.values())
    # a "wall of held notes", like an early sample: every pitch on at once, for 60 s
    wall = [piece_features(piece([(p, 0.0, 60.0) for p in range(40, 90)]))] * 3
    far = compare(wall, real)
    assert far["mean_polyphony"]["overlap"] < 0.01 and far["duration_max"]["overlap"] < 0.01
    assert far["mean_polyphony"]["generated"] == 50.0


def test_validation_block_lies_just_before_the_held_out_pieces():
    files = list(range(20))
    assert reference_block(files, 0.1) == [18, 19]
    assert reference_block(files, 0.1, validation=True) == [16, 17]
    assert reference_block(files, 1.0) == files
    assert reference_block(list(range(3)), 0.1) == [2]  # at least one piece
    assert reference_block(list(range(3)), 0.1, validation=True) == [1]
    assert not set(reference_block(files, 0.25)) & set(reference_block(files, 0.25, True))
    with pytest.raises(ValueError, match="no validation block"):
        reference_block(files, 1.0, validation=True)  # every file is held out


def test_a_weighted_reference_against_its_plain_and_its_subset():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 300), rng.normal(0.5, 2, 200)
    assert overlap_area(a, b, b_weights=np.full(200, 3.0)) == pytest.approx(overlap_area(a, b))
    # weight 0 leaves a piece out: the same as the subset alone, bandwidth included
    keep = np.arange(200) < 120
    assert overlap_area(a, b, b_weights=keep.astype(float)) == pytest.approx(
        overlap_area(a, b[keep]))
    # a reference that is half at 0 and half at 10, weighed 9 to 1 toward the part at 0,
    # overlaps a set at 0 far more than the plain reference does
    ref = np.concatenate([rng.normal(0, 1, 100), rng.normal(10, 1, 100)])
    toward_zero = np.where(np.arange(200) < 100, 0.9, 0.1)
    plain, weighted = overlap_area(a, ref), overlap_area(a, ref, b_weights=toward_zero)
    assert plain < 0.45 and weighted > 0.6  # 0.37 and 0.66: one bandwidth spans both parts


def test_mix_weights_count_each_folder_as_the_training_pieces_do():
    # reference: 2 pieces of a, 1 of b; training: 1 of a, 3 of b, 1 of c (not a reference)
    w = mix_weights(["a", "a", "b"], ["a", "b", "b", "b", "c"])
    assert w == pytest.approx([0.125, 0.125, 0.75])
    with pytest.raises(ValueError, match="no reference folder"):
        mix_weights(["a"], ["c"])
    pieces = [{key: value for key in FEATURES} for value in (1.0, 1.0, 5.0)]
    assert compare(pieces, pieces, w)["mean_polyphony"]["reference"] == pytest.approx(4.0)
    assert compare(pieces, pieces)["mean_polyphony"]["reference"] == pytest.approx(7 / 3)
