"""Listen-free quality features of pieces, and how close two sets of pieces are.

Per piece (pitched notes; drums left out): mean polyphony over the time something sounds,
note duration (median, 95th percentile, maximum, seconds), pitch-class entropy (bits),
pitch span (semitones), scale consistency (the largest share of notes inside one of the 24
major and natural-minor scales) and notes per second. Two sets are compared feature by
feature with the overlapping area of their distributions (Yang and Lerch, "On the
evaluation of generative models in music", 2018): the area under the smaller of the two
Gaussian kernel density estimates, 1 for identical distributions and 0 for disjoint ones.
The reference pieces may be weighted (`mix_weights`: each folder, e.g. composer, as it
counts among the training pieces).
"""

from __future__ import annotations

from collections import Counter

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


def _kde(values: np.ndarray, weights: np.ndarray, grid: np.ndarray, bandwidth: float
         ) -> np.ndarray:
    z = (grid[:, None] - values[None, :]) / bandwidth
    return (np.exp(-0.5 * z * z) * weights).sum(1) / (bandwidth * np.sqrt(2 * np.pi))


def _scott_width(x: np.ndarray, w: np.ndarray) -> float:
    """Scott's bandwidth of weighted values: the weighted standard deviation (unbiased,
    Kish's effective count n for the correction) times n ** -0.2; plain Scott for equal
    weights."""
    n = 1.0 / (w * w).sum()
    if n <= 1:
        return 0.0
    mean = (w * x).sum()
    return float(np.sqrt((w * (x - mean) ** 2).sum() * n / (n - 1)) * n ** -0.2)


def overlap_area(a: np.ndarray, b: np.ndarray, points: int = 2048,
                 b_weights: np.ndarray | None = None) -> float:
    """Area under min(KDE of a, KDE of b). Gaussian kernels, each set with Scott's
    bandwidth (at least 1% of the pooled range, so a set of equal values is a narrow bump,
    not a spike); b's values weighted by `b_weights` (equal without); NaN values are left
    out; NaN if either set is then empty."""
    a, b = (np.asarray(x, dtype=np.float64) for x in (a, b))
    wb = np.ones(len(b)) if b_weights is None else np.asarray(b_weights, dtype=np.float64)
    keep = np.isfinite(b) & (wb > 0)
    a, b, wb = a[np.isfinite(a)], b[keep], wb[keep]
    if not len(a) or not len(b):
        return float("nan")
    weights = [np.full(len(a), 1.0 / len(a)), wb / wb.sum()]
    pooled = np.concatenate([a, b])
    span = max(float(pooled.max() - pooled.min()), 1e-6 * max(1.0, abs(pooled).max()))
    widths = [max(_scott_width(x, w), 0.01 * span) for x, w in zip((a, b), weights)]
    lo, hi = pooled.min() - 4 * max(widths), pooled.max() + 4 * max(widths)
    grid = np.linspace(lo, hi, points)
    density = np.minimum(_kde(a, weights[0], grid, widths[0]),
                         _kde(b, weights[1], grid, widths[1]))
    return float(((density[1:] + density[:-1]) * np.diff(grid)).sum() / 2)  # trapezoids


def mix_weights(folders: list[str], like: list[str]) -> np.ndarray:
    """Per reference piece (the name of the folder it came from, e.g. its composer), a
    weight such that each folder counts as its share of `like` (the folder names of the
    pieces a model trained on): a reference of another composer mix would otherwise judge
    a model by the composers it holds more of. The weights sum to 1; a folder `like`
    lacks weighs 0."""
    have, want = Counter(folders), Counter(like)
    total = sum(want[f] for f in have)
    if total == 0:
        raise ValueError(f"no reference folder ({', '.join(have)}) is named as a folder of "
                         f"the pieces to weigh like")
    return np.array([want[f] / total / have[f] for f in folders])


def compare(generated: list[dict[str, float]], reference: list[dict[str, float]],
            reference_weights: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Per feature: the two sets' means and the overlapping area of their distributions;
    the reference pieces weighted by `reference_weights` (equal without, `mix_weights`)."""
    w = np.ones(len(reference)) if reference_weights is None else np.asarray(reference_weights)
    out = {}
    for key in FEATURES:
        g = np.array([p[key] for p in generated], dtype=np.float64)
        r = np.array([p[key] for p in reference], dtype=np.float64)
        seen = np.isfinite(r) & (w > 0)
        out[key] = {"generated": float(np.nanmean(g)) if np.isfinite(g).any() else np.nan,
                    "reference": float(np.average(r[seen], weights=w[seen])) if seen.any()
                    else np.nan,
                    "overlap": overlap_area(g, r, b_weights=w)}
    return out
