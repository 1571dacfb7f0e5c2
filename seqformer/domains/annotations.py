"""Annotated features of a record (GenBank/EMBL through Biopython, or BED regions) as
plain data, and the tokens of one feature on its own strand with real left context from
its record. A BED region without a strand is read on the plus strand.

A feature's sequence is what Biopython's `SeqFeature.extract` gives: its parts in the
order of the location (5' to 3' of the feature), each reverse-complemented on the minus
strand. Its left context is the record's bases just 5' of the first part on that part's
strand, never beyond the record's ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError


@dataclass
class Feature:
    id: str  # locus_tag, else gene, else protein_id, else record:start-end(strand)
    type: str  # CDS, gene, rRNA, variation, ...
    record: str
    location: str  # as Biopython writes it, 0-based half-open
    strand: int  # 1, -1, or 0 (none or mixed)
    parts: list[tuple[int, int, int]]  # (start, end, strand) in 5'-to-3' order of the feature
    qualifiers: dict[str, list[str]]

    @property
    def length(self) -> int:
        return sum(end - start for start, end, _ in self.parts)


def from_biopython(features: Iterable, record: str) -> list[Feature]:  # noqa: ANN001
    """Biopython SeqFeatures -> Features (the record-wide `source` feature left out)."""
    out = []
    for f in features:
        if f.type == "source" or f.location is None:
            continue
        parts = [(int(p.start), int(p.end), p.strand if p.strand in (1, -1) else 1)
                 for p in f.location.parts]
        strands = {s for _, _, s in parts}
        strand = strands.pop() if len(strands) == 1 else 0
        q = f.qualifiers
        name = next((q[k][0] for k in ("locus_tag", "gene", "protein_id") if q.get(k)), None)
        if name is None:  # by position, 1-based as in the file (a^b: between two bases)
            start, end = min(p[0] for p in parts), max(p[1] for p in parts)
            span = f"{start}^{start + 1}" if start == end else f"{start + 1}-{end}"
            name = f"{record}:{span}({'+-'[strand < 0] if strand else '.'})"
        out.append(Feature(name, f.type, record, str(f.location), strand, parts,
                           {k: list(v) for k, v in q.items()}))
    return out


def select(features: list[Feature], types: set[str]) -> list[Feature]:
    return [f for f in features if f.type in types]


def feature_tokens(tokens: np.ndarray, feature: Feature, flank: int,
                   reverse_complement: Callable[[np.ndarray], np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(left context of up to `flank` tokens, the feature's tokens), both on the feature's
    own strand, from its record's `tokens`."""
    body = [tokens[s:e] if strand > 0 else reverse_complement(tokens[s:e])
            for s, e, strand in feature.parts]
    start, end, strand = feature.parts[0]
    if strand > 0:
        context = tokens[max(0, start - flank):start]
    else:
        context = reverse_complement(tokens[end:end + flank])
    body = np.concatenate(body) if body else tokens[:0]
    return np.asarray(context), np.asarray(body)


def read_bed(path: Path, lengths: dict[str, int]) -> dict[str, list[Feature]]:
    """Regions of a BED file (BED3 or more; name from column 4, strand from column 6) as
    features of type "region", by record; each must lie inside a record of `lengths`."""
    out: dict[str, list[Feature]] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        cols = line.rstrip("\n").split("\t")
        try:
            chrom, start, end = cols[0], int(cols[1]), int(cols[2])
        except (IndexError, ValueError):
            raise InputError(f"{path}, line {n}: expected chrom<TAB>start<TAB>end, got "
                             f"{line[:60]!r}") from None
        strand = {"+": 1, "-": -1}.get(cols[5] if len(cols) > 5 else ".", 0)
        if chrom not in lengths:
            raise InputError(f"{path}, line {n}: no record {chrom!r} in the input")
        if not 0 <= start < end <= lengths[chrom]:
            raise InputError(f"{path}, line {n}: {start}-{end} is not a region inside "
                             f"{chrom!r} ({lengths[chrom]:,} bp)")
        name = cols[3] if len(cols) > 3 and cols[3] not in ("", ".") else (
            f"{chrom}:{start + 1}-{end}({'+-'[strand < 0] if strand else '.'})")
        location = f"[{start}:{end}]({'+' if strand > 0 else '-' if strand < 0 else ''})"
        out.setdefault(chrom, []).append(Feature(name, "region", chrom, location, strand,
                                                 [(start, end, strand or 1)], {}))
    if not out:
        raise InputError(f"{path}: no regions")
    return out
