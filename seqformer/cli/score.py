"""`seqformer score dna|midi|seq2seq`, and the feature selection `embed` shares."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from ..core import ReformerLM
from ..domains import Domain
from ..domains.annotations import read_bed
from ..errors import InputError
from ..files import check_output
from ..pipeline.inference import (
    RecordScore,
    feature_records,
    score_features,
    token_log_likelihoods,
)
from ..pipeline.outputs import is_bigwig, write_bedgraph, write_bigwig, write_tsv
from ..pipeline.run_dir import load_run, read_baseline
from ..pipeline.seq2seq import check_sources, load_seq2seq, pair_ids, target_log_likelihoods
from .common import (
    Force,
    ModelOpt,
    SourceOpt,
    against_baseline,
    clean_errors,
    err,
    out,
    progress,
    read_all,
    unit,
    verb,
)

app = verb("Log-likelihood of sequences.")

Features = Annotated[str | None, typer.Option(
    "--features", help="each annotated feature of these types instead of each record, e.g. "
    "CDS,rRNA (GenBank/EMBL input)")]
Regions = Annotated[Path | None, typer.Option(
    "--regions", help="each region of a BED file instead of each record (BED6 strand "
    "respected)")]
Context = Annotated[int | None, typer.Option(
    "--context", help="score each token with at most this many preceding tokens of its "
    "record, in windows of this length overlapping by half (default: the model's training "
    "window). Beyond the model's max_seq_len, with the copy mixture: windows of the training "
    "length, and the copy mixture reads the rest")]
Flank = Annotated[int | None, typer.Option(
    "--flank", help="bases of the record 5' of a feature read as its context (default: "
    "enough to fill the window, at least half of it)")]


def scoring_window(context: int | None, cfg: dict, model: ReformerLM,
                   beyond_window: bool = True) -> tuple[int, int]:
    """(window, context): tokens are scored in windows of `window`, each with at most
    `context` preceding tokens: --context, or the training window. A context beyond the
    model's max_seq_len is read by the copy mixture alone (model.copy_k), when
    beyond_window allows it."""
    max_seq_len = model.max_seq_len
    if context is None:
        window = int(cfg["data"]["seq_len"])
        return window, window
    if context < 2:
        raise InputError(f"--context {context}: must be at least 2")
    if context <= max_seq_len:
        return context, context
    if not beyond_window or model.copy_gate is None:
        raise InputError(f"--context {context}: beyond the model's max_seq_len "
                         f"({max_seq_len:,}); only a model with the copy mixture "
                         "(model.copy_k) reads further back, and only when scoring records")
    return min(int(cfg["data"]["seq_len"]), max_seq_len), context


def score_records(domain_name: str, model_dir: Path, inputs: list[Path], out_path: Path | None,
                  force: bool, per_base: Path | None = None, both_strands: bool = False,
                  context: int | None = None) -> None:
    """A row per record: log-likelihood, bits per token, perplexity, the Markov baseline's
    bits and, for timed records (MIDI), nats per second; per-base tracks on request.
    context: at most this many preceding tokens per token (`scoring_window`)."""
    for p in (out_path, per_base):
        if p is not None:
            check_output(p, force)
    if per_base is not None and is_bigwig(per_base):
        try:
            import pyBigWig  # noqa: F401  (optional: only .bw tracks need it)
        except ImportError:
            raise InputError(f"--per-base {per_base}: writing bigWig needs pyBigWig: pip install "
                             "'seqformer[tracks]' (a .bedgraph path needs nothing)") from None
    model, domain, cfg = load_run(model_dir, domain_name)
    window, context = scoring_window(context, cfg, model)
    records = read_all(domain, inputs)
    scores, per_position = [], []
    with progress() as bar:
        task = bar.add_task("scoring", total=sum(len(r.tokens) for r in records))
        for rec in records:
            ll = token_log_likelihoods(model, rec.tokens, domain.sep_id, window,
                                       context=context)
            if both_strands:
                rc = domain.reverse_complement(rec.tokens)
                ll = 0.5 * (ll + token_log_likelihoods(model, rc, domain.sep_id, window,
                                                       context=context)[::-1])
            scores.append(RecordScore(rec.id, len(rec.tokens), float(ll.sum())))
            if per_base is not None:
                per_position.append((rec.id, ll))
            bar.advance(task, len(rec.tokens))
    per = unit(domain_name)
    baseline = read_baseline(model_dir)
    columns = ["record", "length", "total ll (nats)", "mean ll", f"bits/{per}", "perplexity"]
    header = ["id", "length", "total_ll_nats", "mean_ll_nats", f"bits_per_{per}", "perplexity"]
    if baseline is not None:
        columns.append(f"Markov bits/{per}")
        header.append(f"markov_order{baseline[1]['order']}_bits_per_{per}")
    per_second = any(rec.meta.get("duration") for rec in records)
    if per_second:
        columns.append("nll nats/s")
        header.append("nll_nats_per_second")
    table = Table(title=f"{model_dir.name}: log-likelihood, at most {context:,} tokens of "
                        "context")
    for col in columns:
        table.add_column(col, justify="right" if col != "record" else "left")
    rows, totals = [], np.zeros(3)
    for s, rec in zip(scores, records):
        row = [s.id, s.length, f"{s.total_ll:.4f}", f"{s.mean_ll:.6f}",
               f"{s.bits_per_token:.6f}", f"{s.perplexity:.4f}"]
        if baseline is not None:
            bits, n = baseline[0].bits([rec.tokens])
            row.append(f"{bits / max(1, n):.6f}")
            totals += (-s.total_ll / np.log(2), bits, n)
        if per_second:
            duration = rec.meta.get("duration")
            row.append(f"{-s.total_ll / duration:.4f}" if duration else "")
        rows.append(row)
        table.add_row(*map(str, row))
    out.print(table)
    if baseline is not None and totals[2]:
        model_bits, markov_bits = totals[0] / totals[2], totals[1] / totals[2]
        out.print(against_baseline(model_bits, {**baseline[1], "val_bits": markov_bits,
                                                "val_tokens": int(totals[2])}, per)
                  .replace("validation: ", "all records: "))
    if out_path is not None:
        write_tsv(out_path, header, rows)
        out.print(f"wrote {out_path}")
    if per_base is not None:
        if is_bigwig(per_base):
            write_bigwig(per_base, per_position)
        else:
            write_bedgraph(per_base, model_dir.name, "log-likelihood per base (nats)",
                           per_position)
        out.print(f"wrote {per_base}")


def selected_features(domain: Domain, inputs: list[Path], features: str | None,
                      regions: Path | None, flank: int | None, window: int) -> list:
    """(feature, its own record) pairs: the annotated features of the types named in
    `features` (GenBank/EMBL input) or the regions of a BED file (any input)."""
    if (features is None) == (regions is None):
        raise InputError("give --features TYPES (GenBank/EMBL input) or --regions BED, not "
                         "both")
    if flank is not None and flank < 0:
        raise InputError(f"--flank {flank}: must be at least 0")
    records = read_all(domain, inputs)
    if regions is not None:
        by_record = read_bed(regions, {r.id: len(r.tokens) for r in records})
        for rec in records:
            rec.meta["features"] = by_record.get(rec.id, [])
        wanted = {"region"}
    else:
        wanted = {t.strip() for t in features.split(",") if t.strip()}
        if not wanted:
            raise InputError(f"--features {features!r}: name at least one feature type, e.g. "
                             "CDS")
        plain = [r for r in records if "features" not in r.meta]
        if plain:
            raise InputError(f"{plain[0].meta.get('path', 'the input')}: --features needs "
                             "annotated input (GenBank or EMBL; --regions BED for FASTA); "
                             f"record {plain[0].id!r} has no features")
        found = {f.type for r in records for f in r.meta["features"]}
        if not wanted & found:
            raise InputError(f"--features {features}: none in the input (it has "
                             f"{', '.join(sorted(found)) or 'no features'})")
    return feature_records(records, wanted, flank, window, domain.reverse_complement)


def score_each_feature(model_dir: Path, inputs: list[Path], out_path: Path | None, force: bool,
                       features: str | None, regions: Path | None, flank: int | None,
                       context: int | None = None) -> None:
    """One row per annotated feature of the given types, or per BED region."""
    if out_path is not None:
        check_output(out_path, force)
    model, domain, cfg = load_run(model_dir, "dna")
    window, _ = scoring_window(context, cfg, model, beyond_window=False)
    pairs = selected_features(domain, inputs, features, regions, flank, window)
    with progress() as bar:
        task = bar.add_task("scoring features", total=sum(len(r.tokens) for _, r in pairs))
        scores = score_features(model, pairs, domain.sep_id, window,
                                on_feature=lambda n: bar.advance(task, n))
    header = ["id", "type", "record", "location", "strand", "length", "total_ll_nats",
              "bits_per_base"]
    rows = [[f.id, f.type, f.record, f.location, {1: "+", -1: "-"}.get(f.strand, "."),
             str(f.length), f"{ll:.4f}", f"{-ll / np.log(2) / f.length:.6f}"]
            for f, ll in scores]
    # on screen the columns that fit a terminal; the TSV has them all
    shown = {"id": 0, "type": 1, "location": 3, "strand": 4, "length": 5, "bits/base": 7}
    table = Table(title=f"{model_dir.name}: log-likelihood per feature")
    for col in shown:
        table.add_column(col, justify="right" if col in ("length", "bits/base") else "left",
                         overflow="fold", no_wrap=col not in ("location", "id"))
    for row in rows[:40]:
        table.add_row(*(escape(row[i]) for i in shown.values()))
    out.print(table)
    if len(rows) > 40:
        out.print(f"... {len(rows) - 40} more rows" + (f" in {out_path}" if out_path else ""))
    bits = sum(-ll for _, ll in scores) / np.log(2) / max(1, sum(f.length for f, _ in scores))
    kinds = ", ".join(sorted({f.type for f, _ in scores}))
    out.print(f"{len(rows):,} features ({kinds}): {bits:.4f} bits/base over all of them")
    if out_path is not None:
        write_tsv(out_path, header, rows)
        out.print(f"wrote {out_path}")


@app.command("dna")
@clean_errors
def score_dna(model: ModelOpt, fasta: Annotated[list[Path], typer.Option(
                  "--fasta", help="FASTA, GenBank or EMBL files (plain or gzip)")],
              out_path: Annotated[Path | None, typer.Option("--out")] = None,
              per_base: Annotated[Path | None, typer.Option(
                  "--per-base", help="per-base log-likelihood track: bigWig (.bw, .bigwig; "
                  "needs seqformer[tracks]) or bedGraph (any other name)")] = None,
              both_strands: Annotated[bool, typer.Option(
                  "--both-strands", help="average with the reverse complement")] = False,
              features: Features = None,
              regions: Regions = None, flank: Flank = None, context: Context = None,
              force: Force = False) -> None:
    """Log-likelihood, bits per base and perplexity of each record, or of each feature."""
    if features is not None or regions is not None:
        if per_base is not None or both_strands:
            raise InputError("--features/--regions score each feature on its own strand: "
                             "they do not combine with --per-base or --both-strands")
        score_each_feature(model, fasta, out_path, force, features, regions, flank, context)
        return
    if flank is not None:
        raise InputError("--flank goes with --features or --regions")
    score_records("dna", model, fasta, out_path, force, per_base, both_strands, context)


@app.command("midi")
@clean_errors
def score_midi(model: ModelOpt, midi: Annotated[list[Path], typer.Option("--midi")],
               out_path: Annotated[Path | None, typer.Option("--out")] = None,
               context: Context = None, force: Force = False) -> None:
    """Negative log-likelihood per token and per second of each piece."""
    score_records("midi", model, midi, out_path, force, context=context)


@app.command("seq2seq")
@clean_errors
def score_seq2seq(model: ModelOpt, source: SourceOpt,
                  target: Annotated[list[Path], typer.Option("--target")],
                  out_path: Annotated[Path | None, typer.Option("--out", help="TSV to write")
                                      ] = None,
                  force: Force = False) -> None:
    """Log-likelihood of each target given its source (pairs by record id): the target's
    tokens and its closing separator, never a sampling constraint."""
    if out_path is not None:
        check_output(out_path, force)
    encdec, source_domain, target_domain, _ = load_seq2seq(model)
    sources = read_all(source_domain, list(source))
    targets = read_all(target_domain, list(target))
    both, unpaired = pair_ids([r.id for r in sources], [r.id for r in targets])
    names = ", ".join(map(str, [*source, *target]))
    if unpaired:
        err.print(f"{len(unpaired)} records unpaired, skipped: {', '.join(unpaired[:5])}",
                  highlight=False, soft_wrap=True)
    if not both:
        raise InputError(f"{names}: no source and target share a record id")
    check_sources(encdec, [sources[i] for i, _ in both], ", ".join(map(str, source)))
    for _, j in both:
        if len(targets[j].tokens) + 2 > encdec.max_target_len:
            raise InputError(f"{', '.join(map(str, target))}: record {targets[j].id!r} has "
                             f"{len(targets[j].tokens):,} tokens, more than the model's target "
                             f"length ({encdec.max_target_len - 2:,})")
    pairs = [(sources[i].tokens, targets[j].tokens) for i, j in both]
    lls = target_log_likelihoods(encdec, pairs, target_domain.sep_id)
    header = ["id", "source_length", "target_length", "total_ll_nats", "bits_per_token"]
    table = Table(title=f"{model.name}: log-likelihood of each target given its source")
    for col in ("record", "source", "target", "total ll (nats)", "bits/token"):
        table.add_column(col, justify="left" if col == "record" else "right")
    rows = []
    for (i, j), ll in zip(both, lls):
        total = float(ll.sum())
        rows.append([sources[i].id, len(sources[i].tokens), len(targets[j].tokens),
                     f"{total:.4f}", f"{-total / np.log(2) / len(ll):.6f}"])
        table.add_row(*map(str, rows[-1]))
    out.print(table)
    if out_path is not None:
        write_tsv(out_path, header, rows)
        out.print(f"wrote {out_path}")
