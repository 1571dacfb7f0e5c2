"""Score DNA variants with a trained seqformer model.

For every variant of a VCF (SNVs, MNVs, short insertions and deletions; multi-allelic
ALT columns give one row per allele) this writes

    delta = log P(alt window) - log P(ref window)        (nats; also in bits)

where each window holds W bases centred on the allele: the reference window on the
reference, the alt window on the reference with REF replaced by ALT. Both windows have
the same length, so the two log-likelihoods are comparable. Each window is read the way
a record starts, [sep] + bases, and because the model is exactly causal the sum of its
per-base log-probabilities is the true log-likelihood of the whole window.

The score is the mean of the two strands: the same two windows cut on the reverse strand
(reverse-complemented) are scored too. On each strand the allele sits in the middle; when
the flanks cannot be equal (W - allele length odd) the extra base goes downstream (3') on
that strand, so scoring the reverse-complemented genome with the reverse-complemented
variant scores exactly the same four windows and gives the same result.

    python apps/variant_effect/variant_effect.py --model runs/lambda \\
        --fasta data/dna/lambda_phage.fa.gz --vcf apps/variant_effect/lambda_example.vcf \\
        --out runs/lambda_variants.tsv

Without --vcf, an annotated reference (GenBank or EMBL) gives the variants itself: its
`variation` features with a /replace qualifier (an insertion between two bases, a
deletion as /replace="", a substitution), written VCF-style with the base before an
indel. Every row has the REF and ALT windows' log-likelihoods (per strand and averaged)
beside their difference.
"""

from __future__ import annotations

import argparse
import gzip
import math
import re
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seqformer import (
    Domain,
    InputError,
    ReformerLM,
    atomic_path,
    check_output,
    load_run,
    report_errors,
)

VCF_COLUMNS = ("#CHROM", "POS", "ID", "REF", "ALT")
_BASES = re.compile(r"[ACGTN]+")
TSV_HEADER = ("chrom", "pos", "id", "ref", "alt", "type", "window", "delta_nats",
              "delta_bits", "delta_fwd_nats", "delta_rev_nats", "shifted", "ll_ref_nats",
              "ll_alt_nats", "ll_ref_fwd", "ll_alt_fwd", "ll_ref_rev", "ll_alt_rev")


@dataclass(frozen=True)
class Variant:
    """One ALT allele of a VCF line; bases upper-case, pos 1-based as in the VCF."""

    chrom: str
    pos: int
    id: str
    ref: str
    alt: str
    line: int  # VCF line number, so later errors can still point at the input

    @property
    def start(self) -> int:
        """0-based offset of REF in the chromosome."""
        return self.pos - 1

    @property
    def kind(self) -> str:
        if len(self.ref) == len(self.alt):
            return "SNV" if len(self.ref) == 1 else "MNV"
        return "INS" if len(self.alt) > len(self.ref) else "DEL"


# ---- reference and VCF ----------------------------------------------------------------


def read_reference(path: str | Path, domain: Domain) -> dict[str, np.ndarray]:
    """Record id -> token ids of every record of a FASTA file."""
    return {rec.id: rec.tokens for rec in domain.read(path)}


def variation_variants(path: str | Path, domain: Domain) -> list[Variant]:
    """The `variation` features with a /replace qualifier of a GenBank or EMBL file, as
    variants. As in a VCF, an insertion (a location between two bases) or a deletion
    (/replace="") carries the base before it in REF and ALT. `line` numbers the feature
    in its record's feature table (1-based)."""
    variants = []
    for rec in domain.read(path):
        if "features" not in rec.meta:
            raise InputError(f"{path}: not an annotated file (GenBank or EMBL): without --vcf "
                             "the variants are its variation features")
        seq = domain.decode(rec.tokens)
        for n, f in enumerate(rec.meta["features"], start=1):
            if f.type != "variation" or "replace" not in f.qualifiers:
                continue
            start, end, strand = f.parts[0]
            try:
                alt = _check_allele(f.qualifiers["replace"][0], "/replace") if \
                    f.qualifiers["replace"][0] else ""
            except ValueError as e:
                raise InputError(f"{path}: record {rec.id!r}, variation at {f.location}: "
                                 f"{e}") from None
            if strand < 0:
                alt = domain.decode(domain.reverse_complement(domain.encode(alt)))
            ref = seq[start:end]
            if not ref or not alt:  # an insertion or a deletion: anchor on the base before
                if start == 0:
                    raise InputError(f"{path}: record {rec.id!r}, variation at {f.location}: "
                                     "an insertion or deletion at the first base")
                ref, alt, start = seq[start - 1] + ref, seq[start - 1] + alt, start - 1
            if ref != alt:
                variants.append(Variant(rec.id, start + 1, f.id, ref, alt, n))
    if not variants:
        raise InputError(f"{path}: no variation features with a /replace qualifier")
    return variants


def _open_text(path: Path):
    with path.open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    # errors="replace": a stray byte then fails the allele checks with its line number
    return (gzip.open if gzipped else open)(path, "rt", encoding="utf-8", errors="replace")


def _check_allele(text: str, what: str) -> str:
    """Upper-cased allele, or the reason it is not supported (raised as ValueError)."""
    if text in ("", "."):
        raise ValueError(f"{what} is empty ('{text}'): no allele to score")
    if text.startswith("<"):
        raise ValueError(f"{what} {text}: symbolic alleles are not supported")
    if "[" in text or "]" in text:
        raise ValueError(f"{what} {text}: breakend alleles are not supported")
    if text == "*":
        raise ValueError(f"{what} '*' (an overlapping deletion) is not supported")
    allele = text.upper()
    if not _BASES.fullmatch(allele):
        raise ValueError(f"{what} {text!r}: only the bases A, C, G, T, N are supported")
    return allele


def parse_vcf(path: str | Path, reference: dict[str, np.ndarray], domain: Domain
              ) -> list[Variant]:
    """Variants of a VCF (plain or gzipped), one per ALT allele, checked against the
    reference. Any problem raises InputError naming the file and line: this parser never
    skips a line it does not understand."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a VCF file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    variants: list[Variant] = []
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                line = line.rstrip("\r\n")
                if line.startswith("##") or not line.strip():
                    continue
                try:
                    if line.startswith("#"):
                        columns = tuple(line.split("\t")[:5])
                        if columns != VCF_COLUMNS:
                            raise ValueError("header line must start with the tab-separated "
                                             f"columns {' '.join(VCF_COLUMNS)}")
                        continue
                    variants.extend(_parse_line(line, number, reference, domain))
                except ValueError as e:
                    raise InputError(f"{path}: line {number}: {e}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    if not variants:
        raise InputError(f"{path}: no variants found (expected tab-separated lines "
                         "CHROM POS ID REF ALT ...)")
    return variants


def _parse_line(line: str, number: int, reference: dict[str, np.ndarray], domain: Domain
                ) -> list[Variant]:
    fields = line.split("\t")
    if len(fields) < 5:
        hint = " (columns must be separated by tabs)" if " " in line else ""
        raise ValueError(f"expected at least 5 tab-separated columns (CHROM POS ID REF ALT), "
                         f"found {len(fields)}{hint}")
    chrom, pos_text, vid, ref_text, alt_text = fields[:5]
    if chrom not in reference:
        known = ", ".join(list(reference)[:5]) + (", ..." if len(reference) > 5 else "")
        raise ValueError(f"unknown CHROM {chrom!r}; the reference has: {known}")
    if not pos_text.isdigit():
        raise ValueError(f"POS {pos_text!r} is not a positive integer")
    pos = int(pos_text)
    ref = _check_allele(ref_text, "REF")
    length = len(reference[chrom])
    if pos < 1 or pos + len(ref) - 1 > length:
        raise ValueError(f"POS {pos} (REF {ref}) is out of range: {chrom} has {length:,} bases")
    actual = domain.decode(reference[chrom][pos - 1:pos - 1 + len(ref)]).upper()
    if actual != ref:
        raise ValueError(f"REF {ref} does not match the reference, which has {actual} at "
                         f"{chrom}:{pos}")
    out = []
    for alt_text_one in alt_text.split(","):
        alt = _check_allele(alt_text_one, "ALT")
        if alt == ref:
            raise ValueError(f"ALT {alt} equals REF: not a variant")
        out.append(Variant(chrom, pos, vid, ref, alt, number))
    return out


# ---- windows --------------------------------------------------------------------------


def allele_window(seq: np.ndarray, start: int, ref_len: int, allele: np.ndarray, width: int,
                  left: int) -> tuple[np.ndarray, bool]:
    """`width` bases of `seq` with seq[start:start + ref_len] replaced by `allele`, with
    `left` bases before the allele; near a chromosome end the window slides inwards to
    stay inside the sequence (then the flag is True)."""
    edited_len = len(seq) - ref_len + len(allele)
    if not len(allele) <= width <= edited_len:
        raise ValueError("need len(allele) <= width <= edited sequence length")
    begin = min(max(start - left, 0), edited_len - width)
    # edit only the neighbourhood: a chromosome is never copied
    lo = max(0, start - width)
    local = np.concatenate([seq[lo:start], allele, seq[start + ref_len:start + ref_len + width]])
    window = local[begin - lo:begin - lo + width]
    return window, begin != start - left


def variant_windows(seq: np.ndarray, variant: Variant, domain: Domain, width: int
                    ) -> dict[str, np.ndarray | bool]:
    """The four windows of a variant: ref/alt on the forward strand, and ref/alt cut on
    the reverse strand (already reverse-complemented, ready to score)."""
    out: dict[str, np.ndarray | bool] = {"shifted": False}
    ref_len = len(variant.ref)
    # the ref allele is the reference's own tokens (soft-masked case included), so the ref
    # window is exactly a slice of the reference
    for name, allele in (("ref", seq[variant.start:variant.start + ref_len]),
                         ("alt", domain.encode(variant.alt).astype(seq.dtype))):
        spare = width - len(allele)
        # the allele's left flank on each strand is spare // 2: on the reverse strand that
        # is the right flank on the forward one
        fwd, moved_f = allele_window(seq, variant.start, ref_len, allele, width, spare // 2)
        rev, moved_r = allele_window(seq, variant.start, ref_len, allele, width,
                                     spare - spare // 2)
        out[f"{name}_fwd"] = fwd
        out[f"{name}_rev"] = domain.reverse_complement(rev)
        out["shifted"] = bool(out["shifted"] or moved_f or moved_r)
    return out


def variant_width(variant: Variant, chrom_len: int, window: int, path: Path | str = "VCF"
                  ) -> int:
    """The window for one variant: `window`, or less on a chromosome shorter than that."""
    width = min(window, chrom_len, chrom_len - len(variant.ref) + len(variant.alt))
    longest = max(len(variant.ref), len(variant.alt))
    if longest > width:
        raise InputError(f"{path}: line {variant.line}: an allele of {longest} bases does not "
                         f"fit in a {width}-base window (raise --window)")
    return width


# ---- scoring --------------------------------------------------------------------------


@torch.no_grad()
def window_log_likelihoods(model: ReformerLM, windows: list[np.ndarray], sep_id: int,
                           batch_size: int = 8, device: str | torch.device = "cpu"
                           ) -> np.ndarray:
    """log P(window) in nats (float64) of each window, read as [sep] + bases."""
    out = np.empty(len(windows), dtype=np.float64)
    by_length: dict[int, list[int]] = {}  # a batch holds windows of one length
    for i, w in enumerate(windows):
        by_length.setdefault(len(w), []).append(i)
    for group in by_length.values():
        for b in range(0, len(group), batch_size):
            idx = group[b:b + batch_size]
            targets = torch.from_numpy(np.stack([windows[i] for i in idx]).astype(np.int64))
            targets = targets.to(device)
            sep = torch.full((len(idx), 1), sep_id, dtype=torch.long, device=device)
            inputs = torch.cat([sep, targets[:, :-1]], dim=1)  # position i predicts base i
            logp = F.log_softmax(model(inputs).float(), dim=-1)
            ll = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double().sum(-1)
            out[idx] = ll.cpu().numpy()
    return out


@dataclass
class VariantScore:
    variant: Variant
    width: int
    ref_fwd: float  # log P(reference window), forward strand, nats
    alt_fwd: float  # log P(alternative window), forward strand
    ref_rev: float  # the same two on the reverse strand
    alt_rev: float
    shifted: bool  # the window slid inwards at a chromosome end

    @property
    def fwd(self) -> float:
        """log P(alt) - log P(ref) on the forward strand, nats."""
        return self.alt_fwd - self.ref_fwd

    @property
    def rev(self) -> float:
        return self.alt_rev - self.ref_rev

    @property
    def delta(self) -> float:
        return 0.5 * (self.fwd + self.rev)


def score_variants(model: ReformerLM, domain: Domain, reference: dict[str, np.ndarray],
                   variants: list[Variant], window: int, batch_size: int = 8,
                   device: str | torch.device = "cpu", vcf: Path | str = "VCF",
                   on_batch: Callable[[int, int], None] | None = None) -> list[VariantScore]:
    """Strand-averaged log-likelihood ratios of the variants (see the module docstring)."""
    unique: dict[bytes, int] = {}  # identical windows (alleles of one site) are scored once
    windows: list[np.ndarray] = []
    plans = []
    for v in variants:
        width = variant_width(v, len(reference[v.chrom]), window, vcf)
        w = variant_windows(reference[v.chrom], v, domain, width)
        slots = {}
        for key in ("ref_fwd", "ref_rev", "alt_fwd", "alt_rev"):
            tokens = w[key]
            slot = unique.setdefault(tokens.tobytes(), len(windows))
            if slot == len(windows):
                windows.append(tokens)
            slots[key] = slot
        plans.append((v, width, slots, w["shifted"]))
    ll = np.empty(len(windows))
    step = batch_size * 4  # report progress every few batches
    for b in range(0, len(windows), step):
        ll[b:b + step] = window_log_likelihoods(model, windows[b:b + step], domain.sep_id,
                                                batch_size, device)
        if on_batch:
            on_batch(min(b + step, len(windows)), len(windows))
    return [VariantScore(v, width, ll[s["ref_fwd"]], ll[s["alt_fwd"]], ll[s["ref_rev"]],
                         ll[s["alt_rev"]], shifted)
            for v, width, s, shifted in plans]


# ---- outputs --------------------------------------------------------------------------


def write_tsv(scores: list[VariantScore], path: Path) -> None:
    rows = ["\t".join(TSV_HEADER)]
    for s in scores:
        v = s.variant
        rows.append("\t".join(map(str, (
            v.chrom, v.pos, v.id, v.ref, v.alt, v.kind, s.width, f"{s.delta:.6f}",
            f"{s.delta / math.log(2):.6f}", f"{s.fwd:.6f}", f"{s.rev:.6f}", int(s.shifted),
            f"{0.5 * (s.ref_fwd + s.ref_rev):.6f}", f"{0.5 * (s.alt_fwd + s.alt_rev):.6f}",
            f"{s.ref_fwd:.6f}", f"{s.alt_fwd:.6f}", f"{s.ref_rev:.6f}", f"{s.alt_rev:.6f}"))))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(rows) + "\n")


def plot_histogram(scores: list[VariantScore], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("SNV", "MNV", "INS", "DEL") if any(s.variant.kind == k for s in scores)]
    values = [[s.delta for s in scores if s.variant.kind == k] for k in kinds]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(values, bins=min(40, max(10, len(scores) // 2)), stacked=True, label=kinds)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("log P(alt window) - log P(ref window)  (nats, mean of both strands)")
    ax.set_ylabel("variants")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def default_window(cfg: dict) -> int:
    """The training window minus the separator, made odd so an SNV sits exactly in the
    middle: the positions the model was trained on."""
    width = int(cfg["data"]["seq_len"]) - 1
    return width if width % 2 else width - 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="trained DNA model directory")
    p.add_argument("--fasta", required=True, type=Path,
                   help="reference FASTA, GenBank or EMBL (plain or .gz)")
    p.add_argument("--vcf", type=Path, help="variants (plain or .gz VCF); default: the "
                   "variation features (/replace) of an annotated --fasta")
    p.add_argument("--out", required=True, type=Path, help="output TSV")
    p.add_argument("--plot", type=Path, help="histogram PNG (default: --out with .png)")
    p.add_argument("--window", type=int, help="bases per window (default: the model's "
                   "training window minus one, made odd)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    return report_errors(run, p.parse_args(argv))


def run(args: argparse.Namespace) -> None:
    plot = args.plot or args.out.with_suffix(".png")
    if plot == args.out:
        raise InputError(f"{args.out}: --out and --plot must differ")
    for path in (args.out, plot):
        check_output(path, args.force)
    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: must be at least 1")
    t0 = time.perf_counter()
    model, domain, cfg = load_run(args.model, "dna", device=args.device)
    window = args.window or default_window(cfg)
    limit = model.cfg.max_seq_len - 1  # one position holds the leading separator
    if not 1 <= window <= limit:
        raise InputError(f"--window {window}: must be in 1..{limit} for {args.model} "
                         f"(max_seq_len {model.cfg.max_seq_len})")
    if window >= int(cfg["data"]["seq_len"]):
        print(f"note: --window {window} reaches past the {cfg['data']['seq_len']}-token "
              "windows the model was trained on", file=sys.stderr)
    reference = read_reference(args.fasta, domain)
    source = args.vcf or args.fasta
    variants = (parse_vcf(args.vcf, reference, domain) if args.vcf
                else variation_variants(args.fasta, domain))
    print(f"{len(variants)} variants from {source}; windows of {window} bases, both strands",
          file=sys.stderr)
    scores = score_variants(
        model, domain, reference, variants, window, args.batch_size, args.device, source,
        on_batch=lambda done, total: print(f"  scored {done}/{total} windows",
                                           file=sys.stderr))
    write_tsv(scores, args.out)
    plot_histogram(scores, plot, f"{source.name}: {len(scores)} variants, "
                   f"model {args.model.name}, W={window}")
    elapsed = time.perf_counter() - t0
    print(f"wrote {args.out} and {plot} ({elapsed:.1f} s)")
    for kind in ("SNV", "MNV", "INS", "DEL"):
        d = np.array([s.delta for s in scores if s.variant.kind == kind])
        if d.size:
            print(f"  {kind}: {d.size:3d} variants, mean delta {d.mean():+.3f} nats, "
                  f"range [{d.min():+.3f}, {d.max():+.3f}]")
    worst = sorted(scores, key=lambda s: s.delta)[:3]
    print("  most damaging (lowest delta): " + ", ".join(
        f"{s.variant.chrom}:{s.variant.pos} {s.variant.ref}>{s.variant.alt} {s.delta:+.3f}"
        for s in worst))


if __name__ == "__main__":
    sys.exit(main())
