"""Listen-free quality features of pieces, and how close two sets of pieces are.

Per piece (pitched notes; drums left out): mean polyphony over the time something sounds,
note duration (median, 95th percentile, maximum, seconds), pitch-class entropy (bits),
pitch span (semitones), scale consistency (the largest share of notes inside one of the 24
major and natural-minor scales) and notes per second. Two sets are compared feature by
feature with the overlapping area of their distributions (Yang and Lerch, "On the
evaluation of generative models in music", 2018): the area under the smaller of the two
Gaussian kernel density estimates, 1 for identical distributions and 0 for disjoint ones.
"""

from __future__ import annotations

import numpy as np
import pretty_midi

from seqformer.domains.midi import stats

FEATURES = ("mean_polyphony", "duration_median", "duration_p95", "duration_max",
            "pitch_class_entropy", "pitch_span", "scale_consistency", "notes_per_second")

_MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
_MINOR = np.array([0, 2, 3, 5, 7, 8, 10])
# (24, 12): row k marks the pitch classes of one major or natural-minor scale
_SCALES = np.zeros((24, 12), dtype=bool)
for _root in range(12):
    _SCALES[_root, (_MAJOR + _root) % 12] = True
    _SCALES[12 + _root, (_MINOR + _root) % 12] = True


def piece_features(pm: pretty_midi.PrettyMIDI) -> dict[str, float]:
    """The features of one piece (NaN for all of them when it has no pitched note)."""
    notes = [n for inst in pm.instruments if not inst.is_drum for n in inst.notes]
    if not notes:
        return dict.fromkeys(FEATURES, float("nan"))
    pitched = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(0)
    inst.notes = notes
    pitched.instruments.append(inst)
    s = stats(pitched)
    durations = np.array([n.end - n.start for n in notes])
    counts = np.bincount(np.array([n.pitch for n in notes]) % 12, minlength=12)
    start, end = min(n.start for n in notes), max(n.end for n in notes)
    return {
        "mean_polyphony": s["mean_polyphony"],
        "duration_median": float(np.median(durations)),
        "duration_p95": float(np.percentile(durations, 95)),
        "duration_max": float(durations.max()),
        "pitch_class_entropy": s["pitch_class_entropy"],
        "pitch_span": float(s["pitch_range"][1] - s["pitch_range"][0]),
        "scale_consistency": float((_SCALES @ counts).max() / counts.sum()),
        "notes_per_second": len(notes) / max(end - start, 1e-9),
    }


def reference_block(files: list, holdout: float, validation: bool = False) -> list:
    """The last `holdout` fraction of `files` (at least one; the split `train midi` makes
    when given no holdout ids), or with `validation` the block of the same size just
    before it: pieces to choose a sampler's settings on, so the held-out ones only report."""
    n = max(1, int(round(len(files) * holdout)))
    if validation and 2 * n > len(files):
        raise ValueError(f"{len(files)} files hold no validation block of {n} before the "
                         f"last {n}")
    return files[-2 * n:-n] if validation else files[-n:]


def _kde(values: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    z = (grid[:, None] - values[None, :]) / bandwidth
    return np.exp(-0.5 * z * z).sum(1) / (len(values) * bandwidth * np.sqrt(2 * np.pi))


def overlap_area(a: np.ndarray, b: np.ndarray, points: int = 2048) -> float:
    """Area under min(KDE of a, KDE of b). Gaussian kernels, each set with Scott's
    bandwidth (at least 1% of the pooled range, so a set of equal values is a narrow bump,
    not a spike); NaN values are left out; NaN if either set is then empty."""
    a, b = (np.asarray(x, dtype=np.float64) for x in (a, b))
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b):
        return float("nan")
    pooled = np.concatenate([a, b])
    span = max(float(pooled.max() - pooled.min()), 1e-6 * max(1.0, abs(pooled).max()))
    widths = [max((x.std(ddof=1) if len(x) > 1 else 0.0) * len(x) ** -0.2, 0.01 * span)
              for x in (a, b)]
    lo, hi = pooled.min() - 4 * max(widths), pooled.max() + 4 * max(widths)
    grid = np.linspace(lo, hi, points)
    density = np.minimum(_kde(a, grid, widths[0]), _kde(b, grid, widths[1]))
    return float(((density[1:] + density[:-1]) * np.diff(grid)).sum() / 2)  # trapezoids


def compare(generated: list[dict[str, float]], reference: list[dict[str, float]]
            ) -> dict[str, dict[str, float]]:
    """Per feature: the two sets' means and the overlapping area of their distributions."""
    out = {}
    for key in FEATURES:
        g = np.array([p[key] for p in generated], dtype=np.float64)
        r = np.array([p[key] for p in reference], dtype=np.float64)
        out[key] = {"generated": float(np.nanmean(g)) if np.isfinite(g).any() else np.nan,
                    "reference": float(np.nanmean(r)) if np.isfinite(r).any() else np.nan,
                    "overlap": overlap_area(g, r)}
    return out
