"""`SynonymousCodons`: a sampling constraint under which a decoder can only write a coding
sequence for the given protein.

It follows the protocol of `seqformer.core.decoding.sampling` (`allowed()` -> (B, V) boolean mask,
`update(tokens, removed)`), over the DNA domain's vocabulary (token ids read from
`seqformer.domains.get_domain("dna").tokens`, upper-case bases only) or the CDS domain's
(one token per codon: the layout below with one step per codon instead of three).

Target layout, for a protein of n residues (no '*'):

    <sep>                 BOS, given to the decoder, never sampled: not this object's step
    step 0 .. 3n-1        codon i = bases 3i..3i+2: each base must keep the codon's prefix
                          inside the codons of residue i (NCBI table 11); codon 0 is one of
                          the start codons (ATG, GTG, TTG: E. coli's), which read as M, so
                          the protein must begin with M
    step 3n .. 3n+2       a stop codon: TAA, TAG or TGA
    step 3n+3             <sep>: the end
    after that            <pad> only

so 3(n+1)+1 sampled tokens give the CDS (stop codon included) and <sep>; `steps` is that
count for each row, `max_steps` the batch's longest. Rows may have different lengths: a
finished row is held to <pad> while the others go on. Every mask allows at least one token,
and every sequence sampled under it is a complete gene that Biopython's
`translate(table=11, cds=True)` turns back into exactly its protein.

    constraint = SynonymousCodons(["MKV...", "MSTL..."])
    for _ in range(constraint.max_steps):
        logits = ...                                   # (B, V) next-token logits
        logits, removed = apply_constraint(logits, constraint)
        tokens = sample_next(logits, temperature=1.0)
        constraint.update(tokens, removed)
    constraint.cds()                                   # the B sampled CDSs
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from Bio.Data import CodonTable

from seqformer import get_domain

TABLE = 11
START_CODONS = ("ATG", "GTG", "TTG")
_CODE = CodonTable.unambiguous_dna_by_id[TABLE]
STOP_CODONS = tuple(sorted(_CODE.stop_codons))


class SynonymousCodons:
    """Constraint for B proteins (strings of table-11 amino acids, no '*').

    Args:
        proteins: the B proteins, one per batch row.
        start_codons: the codons allowed for residue 0 (which must be M); None or () treats
            residue 0 like any other (for fragments that do not begin a gene).
        stop_codons: the codons allowed after the last residue.
        domain: the target domain (default: "dna"); its tokens must include <pad>, <sep>
            and A, C, G, T, or (one step per codon, e.g. "cds") the 64 codons.
        prior: (protein, residue index) -> {synonym: log-weight}, for residues 1 .. n-1,
            one step per codon only: `log_weights` gives it to decoding, which adds it to
            the model's logits (design.py: the neighbours baseline's codon frequencies).

    State: `step` (B,) tokens taken so far per row (after the BOS), `tokens` the chosen
    ids, `removed` (B,) the summed probability mass the masks took from the model's
    distribution up to and including the row's closing <sep> (`removed_steps`: over how
    many steps), a measure of how far the model itself strays from valid synonymous codons:
    `removed / removed_steps` is its mean per token.
    """

    def __init__(self, proteins: Sequence[str], start_codons: Sequence[str] | None =
                 START_CODONS, stop_codons: Sequence[str] = STOP_CODONS,
                 domain: str = "dna",
                 prior: Callable[[str, int], Mapping[str, float]] | None = None) -> None:
        if isinstance(proteins, str):
            raise TypeError("proteins: a list of protein strings, not one string")
        tokens = list(get_domain(domain).tokens)
        self.per_codon = "AAA" in tokens
        letters = _CODE.forward_table.keys() | _CODE.stop_codons if self.per_codon else "ACGT"
        for t in ("<pad>", "<sep>", *letters):
            if t not in tokens:
                raise ValueError(f"domain {domain!r} has no token {t!r}")
        if prior is not None and not self.per_codon:
            raise ValueError(f"a prior weighs whole codons: domain {domain!r} writes bases")
        self.prior = prior
        self.vocab_size = len(tokens)
        self.pad, self.sep = tokens.index("<pad>"), tokens.index("<sep>")
        self.letter_ids = {b: tokens.index(b) for b in letters}  # bases, or codons per_codon
        self._letter_of = {i: b for b, i in self.letter_ids.items()}
        self.width = 1 if self.per_codon else 3  # steps per codon

        families = {aa: [c for c, a in _CODE.forward_table.items() if a == aa]
                    for aa in set(_CODE.forward_table.values())}
        start = tuple(start_codons or ())
        stop = tuple(stop_codons)
        for c in start + stop:
            if len(c) != 3 or set(c) - set("ACGT"):
                raise ValueError(f"not a codon: {c!r}")
        if not stop:
            raise ValueError("no stop codons")
        for c in stop:
            if c in _CODE.forward_table:
                raise ValueError(f"{c} is a sense codon in table {TABLE}, not a stop")
        self.proteins: list[str] = []
        # per row: the codon families, one per codon position (the stop's last)
        self._families: list[list[tuple[str, ...]]] = []
        for b, protein in enumerate(proteins):
            protein = str(protein).upper()
            bad = set(protein) - set(families)
            if bad:
                raise ValueError(f"protein {b}: {''.join(sorted(bad))!r} is not a table-"
                                 f"{TABLE} amino acid (no '*': the stop is added here)")
            if not protein:
                raise ValueError(f"protein {b} is empty")
            if start and protein[0] != "M":
                raise ValueError(f"protein {b} begins with {protein[0]!r}: with start codons "
                                 "the first residue must be M (start_codons=None lifts it)")
            fams = [tuple(sorted(families[aa])) for aa in protein]
            if start:
                fams[0] = start
            fams.append(stop)
            self.proteins.append(protein)
            self._families.append(fams)
        if not self.proteins:
            raise ValueError("no proteins")
        self._masks: dict[tuple[tuple[str, ...], str], np.ndarray] = {}
        self._end = np.zeros(self.vocab_size, bool)
        self._end[self.sep] = True
        self._done = np.zeros(self.vocab_size, bool)
        self._done[self.pad] = True
        b = len(self.proteins)
        self.steps = [self.width * len(f) + 1 for f in self._families]
        self.max_steps = max(self.steps)
        self.step = [0] * b
        self.tokens: list[list[int]] = [[] for _ in range(b)]
        self.removed = torch.zeros(b, dtype=torch.float64)
        self.removed_steps = torch.zeros(b, dtype=torch.long)

    @property
    def batch_size(self) -> int:
        return len(self.proteins)

    @property
    def done(self) -> bool:
        """Whether every row has written its closing <sep>."""
        return all(s >= n for s, n in zip(self.step, self.steps))

    def _mask(self, family: tuple[str, ...], prefix: str) -> np.ndarray:
        key = (family, prefix)
        mask = self._masks.get(key)
        if mask is None:
            mask = np.zeros(self.vocab_size, bool)
            for c in family:
                if self.per_codon:
                    mask[self.letter_ids[c]] = True
                elif c.startswith(prefix):
                    mask[self.letter_ids[c[len(prefix)]]] = True
            self._masks[key] = mask
        return mask

    def _row_mask(self, b: int) -> np.ndarray:
        t, fams = self.step[b], self._families[b]
        if t < self.width * len(fams):
            codon = t // self.width
            prefix = "".join(self._letter_of[i] for i in self.tokens[b][self.width * codon:t])
            return self._mask(fams[codon], prefix)
        return self._end if t == self.width * len(fams) else self._done

    def allowed(self) -> torch.Tensor:
        """(B, V) bool: the tokens each row may take next."""
        return torch.from_numpy(np.stack([self._row_mask(b) for b in range(self.batch_size)]))

    def log_weights(self) -> np.ndarray | None:
        """(B, V): the prior's log-weights of the synonyms of each row's next residue (1 ..
        n-1; 0 elsewhere, and for the start and stop codons), which decoding adds to the
        model's logits; None without a prior."""
        if self.prior is None:
            return None
        out = np.zeros((self.batch_size, self.vocab_size), dtype=np.float32)
        for b, (t, protein) in enumerate(zip(self.step, self.proteins)):
            if 1 <= t < len(protein):
                for codon, logp in self.prior(protein, t).items():
                    out[b, self.letter_ids[codon]] = logp
        return out

    def update(self, tokens: torch.Tensor, removed: torch.Tensor | None = None) -> None:
        """Record the (B,) tokens chosen; a token the mask did not allow is a ValueError
        (nothing is recorded then)."""
        ids = torch.as_tensor(tokens).reshape(-1).tolist()
        if len(ids) != self.batch_size:
            raise ValueError(f"{len(ids)} tokens for a batch of {self.batch_size}")
        for b, tok in enumerate(ids):
            if not (0 <= tok < self.vocab_size and self._row_mask(b)[tok]):
                raise ValueError(f"row {b}, step {self.step[b]}: token {tok} is not allowed")
        active = torch.tensor([s < n for s, n in zip(self.step, self.steps)])
        for b, tok in enumerate(ids):
            self.tokens[b].append(tok)
            self.step[b] += 1
        if removed is not None:
            removed = torch.as_tensor(removed).detach().to("cpu", torch.float64).reshape(-1)
            self.removed += removed * active
            self.removed_steps += active.long()

    def reorder(self, index: torch.Tensor) -> None:
        """Row r takes row index[r]'s state (beam search: B proteins become B x beams
        rows, and beams are reordered every step)."""
        rows = torch.as_tensor(index).reshape(-1).tolist()
        self.proteins = [self.proteins[i] for i in rows]
        self._families = [self._families[i] for i in rows]
        self.steps = [self.steps[i] for i in rows]
        self.step = [self.step[i] for i in rows]
        self.tokens = [list(self.tokens[i]) for i in rows]
        self.removed = self.removed[rows]
        self.removed_steps = self.removed_steps[rows]
        self.max_steps = max(self.steps)

    def cds(self) -> list[str]:
        """The bases written so far in each row (the CDS with its stop codon once the row
        is done), without <sep> and <pad>."""
        return ["".join(self._letter_of[i] for i in row if i in self._letter_of)
                for row in self.tokens]
