"""Sequence to sequence without Lightning: pairs of records, the model a run holds (a
ReformerEncDec, or to compare a PrefixLM: seq2seq.decoder_only), `sample seq2seq`
(translate, target constraints) and `score seq2seq`. Training is in seq2seq_training.py.

Pairs: a source record and the target record with the same id (a FASTA id; a MIDI file's
name). The target the decoder learns is [sep] + target + [sep]: the separator starts it and
ends it, so sampling stops by itself. A batch is right-padded with the lengths of each row:
no source position attends to padding and padding is never a target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..core import Alignment, Constraint, PrefixLM, ReformerEncDec
from ..core.decoding.beam import require_reorder
from ..domains import Domain, Record, get_domain
from ..errors import InputError
from .run_config import model_config
from .run_dir import load_model_dir
from .token_store import TokenStore

Seq2Seq = ReformerEncDec | PrefixLM


@dataclass
class Pairs:
    """Paired records of two token stores: source index i <-> target index j."""

    source: TokenStore
    target: TokenStore
    index: list[tuple[int, int]]
    ids: list[str]
    unpaired: list[str]  # "<id> (source only)" / "<id> (target only)"
    too_long: list[str]  # paired ids left out for exceeding the lengths

    def __len__(self) -> int:
        return len(self.index)

    def tokens(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        i, j = self.index[k]
        return self.source.record_tokens(i), self.target.record_tokens(j)

    def split(self, holdout: float, seed: int) -> tuple[list[int], list[int]]:
        """A seeded split of the pairs: (training, validation) positions."""
        order = np.random.default_rng(seed).permutation(len(self.index))
        n_val = int(round(holdout * len(order))) if holdout > 0 and len(order) > 1 else 0
        return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def pair_ids(source_ids: list[str], target_ids: list[str]
             ) -> tuple[list[tuple[int, int]], list[str]]:
    """(source index, target index) of each id in both lists, in source order, and the ids
    found on one side only ("<id> (source only)" / "<id> (target only)")."""
    targets = {rid: j for j, rid in enumerate(target_ids)}
    sources = set(source_ids)
    pairs = [(i, targets[rid]) for i, rid in enumerate(source_ids) if rid in targets]
    unpaired = [f"{rid} (source only)" for rid in source_ids if rid not in targets]
    unpaired += [f"{rid} (target only)" for rid in target_ids if rid not in sources]
    return pairs, unpaired


def pair_records(source: TokenStore, target: TokenStore, source_len: int, target_len: int,
                 source_names: str, target_names: str) -> Pairs:
    """Pairs by record id. Records without a partner are listed and skipped; so are pairs
    longer than the model takes (source_len tokens, target_len with its two separators).
    None paired is an error naming both inputs."""
    both, unpaired = pair_ids([r.id for r in source.records], [r.id for r in target.records])
    index, ids, too_long = [], [], []
    for i, j in both:
        rid = source.records[i].id
        if source.records[i].length > source_len or target.records[j].length + 2 > target_len:
            too_long.append(rid)
        else:
            index.append((i, j))
            ids.append(rid)
    if not index:
        why = (f"{len(too_long)} pairs are longer than the model takes" if too_long else
               "no record id appears in both")
        raise InputError(f"{source_names} / {target_names}: no pairs to train on ({why}; "
                         "pairs are matched by record id, MIDI files by name)")
    return Pairs(source, target, index, ids, unpaired, too_long)


def pad_batch(rows: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, max length) int64 tokens and the (B,) lengths."""
    lengths = torch.tensor([len(r) for r in rows])
    out = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, :len(r)] = torch.from_numpy(np.asarray(r, dtype=np.int64))
    return out, lengths


def framed(target: np.ndarray, sep_id: int) -> np.ndarray:
    """What the decoder reads and predicts: sep + target + sep."""
    return np.concatenate([[sep_id], np.asarray(target, dtype=np.int64), [sep_id]])


class PairBatches(Dataset):
    """Training batches of pairs: item i is batch i of one seeded plan, so the order is
    reproducible, a resumed run goes on after the batches already used, and DDP's sampler
    can share the batches out. Pairs of similar target length share a batch (sorted within
    windows of 32 batches' worth of draws), so padding stays small."""

    def __init__(self, pairs: Pairs, positions: list[int], batch_size: int, n_items: int,
                 seed: int, pad_id: int, sep_id: int, start: int = 0):
        self.pairs, self.pad_id, self.sep_id = pairs, pad_id, sep_id
        rng = np.random.default_rng(seed)
        draws = rng.choice(positions, size=n_items) if positions else np.zeros(0, int)
        lengths = np.array([pairs.target.records[pairs.index[k][1]].length for k in draws])
        plan, window = [], 32 * batch_size
        for w0 in range(0, n_items, window):
            chunk = draws[w0:w0 + window][np.argsort(lengths[w0:w0 + window], kind="stable")]
            batches = [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
            plan += [batches[k] for k in rng.permutation(len(batches))]
        self.plan = plan[start // batch_size:]

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return self.collate(self.plan[i])

    def collate(self, positions) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
        """(source, source lengths, framed target, target lengths), right-padded."""
        src, tgt = zip(*(self.pairs.tokens(k) for k in positions))
        return (*pad_batch(list(src), self.pad_id),
                *pad_batch([framed(t, self.sep_id) for t in tgt], self.pad_id))


def build_model(cfg: dict) -> Seq2Seq:
    s2s = cfg["seq2seq"]
    if s2s.get("decoder_only"):
        return PrefixLM(model_config(cfg), s2s["source_len"])
    return ReformerEncDec(model_config({"model": s2s["encoder"]}), model_config(cfg),
                          share_weights=s2s["share_weights"],
                          tie_positions=s2s.get("tie_positions", False),
                          alignment=Alignment(**s2s["align"]) if s2s.get("align") else None,
                          read_target=s2s.get("read_target", True),
                          shared_vocab=s2s["source_domain"] == cfg["domain"])


def domains_of(cfg: dict) -> tuple[Domain, Domain]:
    """(source domain, target domain) with their training tokenization options."""
    s2s = cfg["seq2seq"]
    return (get_domain(s2s["source_domain"], **s2s["source_options"]),
            get_domain(cfg["domain"], **cfg["data"]["options"]))


def tokenize_pairs(cfg: dict, sources: list[Path], targets: list[Path], run: Path,
                   on_tokens: Callable[[int], None] | None = None) -> Pairs:
    """Both token stores (run/data/source, run/data/target), built unless up to date, and
    their pairs."""
    source_domain, target_domain = domains_of(cfg)
    src = TokenStore.build(run / "data" / "source", source_domain, sources, on_tokens=on_tokens)
    tgt = TokenStore.build(run / "data" / "target", target_domain, targets, on_tokens=on_tokens)
    return pair_records(src, tgt, cfg["seq2seq"]["source_len"], cfg["data"]["seq_len"],
                        ", ".join(map(str, sources)), ", ".join(map(str, targets)))


def load_seq2seq(run: str | Path, device: str | torch.device = "cpu"
                 ) -> tuple[Seq2Seq, Domain, Domain, dict]:
    """A trained encoder-decoder (eval mode), its source and target domains and config."""
    model, target, cfg = load_model_dir(run, "seq2seq", build_model, None, device)
    return model, domains_of(cfg)[0], target, cfg


def check_sources(model: Seq2Seq, records: list[Record], where: str) -> None:
    """Sources the model cannot take: one error naming the file and the record."""
    for rec in records:
        if len(rec.tokens) == 0:
            raise InputError(f"{where}: record {rec.id!r} is empty")
        if len(rec.tokens) > model.max_source_len:
            raise InputError(f"{where}: record {rec.id!r} has {len(rec.tokens):,} tokens, more "
                             f"than the model's source length ({model.max_source_len:,})")


class Within:
    """A constraint: only the `ids` token ids (a domain's own tokens) and the closing
    separator, never first (a target has a token at least), and among them what `inner`
    allows. A row that has closed is left to `inner` (what follows is cut off)."""

    def __init__(self, ids: list[int], sep_id: int, vocab_size: int, batch: int,
                 inner: Constraint | None = None):
        self.mask = torch.zeros(batch, vocab_size, dtype=torch.bool)
        self.mask[:, ids] = True
        self.first = self.mask.clone()
        self.mask[:, sep_id] = True
        self.sep_id, self.inner = sep_id, inner
        self.closed = torch.zeros(batch, dtype=torch.bool)

    def allowed(self) -> torch.Tensor:
        mask = (self.first if self.first is not None else self.mask) | self.closed[:, None]
        if self.inner is None:
            return mask
        return mask & torch.as_tensor(self.inner.allowed()).cpu()

    def log_weights(self) -> np.ndarray | torch.Tensor | None:
        """The inner constraint's prior, if it has one."""
        inner = getattr(self.inner, "log_weights", None)
        return inner() if inner is not None else None

    def redirects(self) -> np.ndarray | torch.Tensor | None:
        """The inner constraint's redirects, if it has them."""
        inner = getattr(self.inner, "redirects", None)
        return inner() if inner is not None else None

    def update(self, tokens: torch.Tensor, removed: torch.Tensor) -> None:
        self.first = None
        self.closed |= tokens.cpu() == self.sep_id
        if self.inner is not None:
            self.inner.update(tokens, removed)

    def reorder(self, index: torch.Tensor) -> None:
        """Row r takes row index[r]'s state (beam search); the inner constraint must
        reorder too."""
        self.mask, self.closed = self.mask[index], self.closed[index]
        if self.first is not None:
            self.first = self.first[index]
        if self.inner is not None:
            require_reorder(self.inner)
            self.inner.reorder(index)


class UntilClosed:
    """A target domain's grammar (MIDI's note grammar) as a seq2seq constraint. The
    separator that closes a target is allowed at any step, and a closed row's walk stops
    there, so `closing(k)` gives the tokens that release what the row left sounding, when
    it closed or was cut off by the length limit (translate appends them), as `sample midi`
    releases what sounds at the end of a sample. (Allowing the separator only with no note
    sounding kept a harmonizer that had lost track of a note writing to the length limit:
    docs/seq2seq.md.)"""

    def __init__(self, grammar, sep_id: int, ends: list[int] | None = None):  # noqa: ANN001
        """ends: each row's source's end (time steps): the row then closes exactly when its
        own time reaches it, neither before nor after."""
        self.grammar, self.sep_id = grammar, sep_id
        self.closed = np.zeros(len(grammar.walks), dtype=bool)
        self.ends = ends

    def allowed(self) -> np.ndarray:
        mask = self.grammar.allowed()  # a new array each call
        mask[:, self.sep_id] = True
        if self.ends is not None:  # a row closes when its time reaches its source's end
            done = np.array([w.now for w in self.grammar.walks]) >= self.ends
            mask[done] = False
            mask[:, self.sep_id] = done
        return mask

    def log_weights(self) -> np.ndarray | None:
        return self.grammar.log_weights()

    def redirects(self) -> np.ndarray | None:
        return self.grammar.redirects()

    def update(self, tokens: torch.Tensor, removed: torch.Tensor) -> None:
        ends = tokens.cpu().numpy() == self.sep_id
        self.grammar.update(tokens, removed, rows=~(self.closed | ends))
        self.closed |= ends

    def closing(self, index: int) -> list[int]:
        return self.grammar.closing(index)


def target_grammar(domain: Domain, read_limits: Callable[[], dict | None],
                   source_domain: Domain | None = None, end_with_source: bool = True,
                   **options: Any) -> Callable[[list[np.ndarray]], UntilClosed] | None:
    """For `translate(constraint=)`: the target domain's grammar for each batch of
    sources, or None for a domain without one (then `read_limits`, which reads what
    training stored, e.g. `run_dir.read_sampling_limits`, is not called). With a
    `source_domain` that has a grammar too (MIDI to MIDI), the pace steer follows the
    source's notes and, with `end_with_source`, each target closes exactly when its time
    reaches its source's end: a harmonization's voices end with the melody. `options`:
    keyword arguments of the domain's `constraint` (MIDI: `texture`, `redirect`, `key`,
    `register`, `pace`)."""
    start = np.array([domain.sep_id])
    if domain.constraint(None, [start]) is None:
        return None
    limits = read_limits()
    timed = source_domain is not None and source_domain.constraint(None, [start]) is not None

    def rule(rows: list[np.ndarray]) -> UntilClosed:
        ends = onsets = None
        if timed:  # the source's time and notes, walked by its own grammar
            first = np.array([source_domain.sep_id])
            walks = source_domain.constraint(None, [np.concatenate([first, r]) for r in rows])
            # at least one step: a target is never closed empty (Within)
            if end_with_source:
                ends = [max(1, w.now) for w in walks.walks]
            onsets = [np.asarray(w.onsets) for w in walks.walks]
        grammar = domain.constraint(limits, [start] * len(rows), **options,
                                    **({"source_onsets": onsets} if timed else {}))
        return UntilClosed(grammar, domain.sep_id, ends)

    return rule


@torch.no_grad()
def translate(model: Seq2Seq, sources: list[np.ndarray], sep_id: int, max_tokens: int,
              temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
              seed: int | None = None,
              constraint: Callable[[list[np.ndarray]], Constraint] | None = None,
              allowed: list[int] | None = None, batch_size: int = 16,
              on_done: Callable[[int], None] | None = None, num_beams: int = 1
              ) -> list[np.ndarray]:
    """One target per source (its tokens, without the separators), in the sources' order.
    Sources of similar length decode together, a batch at a time, until every row of the
    batch has closed with the separator or has max_tokens tokens; each row draws with its
    own generator (seed + its index), so a target does not depend on its batch.
    `constraint(batch of sources)` gives a constraint for that batch (e.g. synonymous
    codons); `allowed`, the token ids a target may hold (the separator is added).
    num_beams > 1: each target is beam search's likeliest instead of a sample."""
    device = next(model.parameters()).device
    if isinstance(model, PrefixLM):  # its prompts differ in length: one row at a time
        batch_size = 1
    order = sorted(range(len(sources)), key=lambda k: len(sources[k]))
    out: list[np.ndarray | None] = [None] * len(sources)
    for b0 in range(0, len(order), batch_size):
        index = order[b0:b0 + batch_size]
        rows = [sources[k] for k in index]
        src, lengths = pad_batch(rows, 0)
        gens = None if seed is None else [torch.Generator().manual_seed(seed + k) for k in index]
        rule = rule_given = constraint(rows) if constraint else None
        if allowed is not None:
            rule = Within(allowed, sep_id, model.dec_cfg.vocab_size, len(rows), rule)
        tokens = model.generate(src.to(device), max_tokens, sep_id, temperature, top_k, top_p,
                                gens, rule, lengths.to(device), eos=sep_id,
                                num_beams=num_beams).cpu().numpy()
        for i, (k, row) in enumerate(zip(index, tokens[:, 1:])):
            end = np.flatnonzero(row == sep_id)
            out[k] = row[:end[0]] if len(end) else row
            if hasattr(rule_given, "closing"):  # a grammar: settle the notes left open
                out[k] = np.concatenate([out[k], np.asarray(rule_given.closing(i), np.int64)])
        if on_done:
            on_done(len(rows))
    return out


@torch.no_grad()
def target_log_likelihoods(model: Seq2Seq, pairs: list[tuple[np.ndarray, np.ndarray]],
                           sep_id: int, batch_size: int = 16) -> list[np.ndarray]:
    """Per-token log-likelihood (nats) of each target given its source: the target's
    tokens and then its closing separator (len(target) + 1 values)."""
    device = next(model.parameters()).device
    out = []
    for b0 in range(0, len(pairs), batch_size):
        src, tgt = zip(*pairs[b0:b0 + batch_size])
        s, s_len = pad_batch(list(src), 0)
        t, t_len = pad_batch([framed(x, sep_id) for x in tgt], 0)
        nll = model.loss(s.to(device), t.to(device), s_len.to(device), t_len.to(device),
                         reduction="none").cpu()
        out += [-nll[b, :int(n) - 1].double().numpy() for b, n in enumerate(t_len)]
    return out
