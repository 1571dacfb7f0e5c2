"""A run's configuration: defaults < YAML preset < CLI options < `section.key=value`.

Four sections: `model` (ReformerConfig fields), `data` (windows, split, tokenization
options), `train` (optimizer, schedule, hardware) and the top-level `domain` and `task`
("lm"; "classify" with a fifth section, `classify`; "seq2seq" with `seq2seq`, where
`domain` and `model` are the target's and the decoder's). Every key is checked, so a typo
is an error naming the field, not a silently ignored setting.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from ..core import Alignment, ConfigError, ReformerConfig
from ..core.model.classifier import POOLS
from ..domains import get_domain
from ..errors import InputError

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true")

DEFAULTS: dict[str, Any] = {
    "domain": None,
    "task": "lm",
    "model": {},  # ReformerConfig defaults, vocab_size set from the domain
    "data": {
        "seq_len": 4096,  # training window; <= model.max_seq_len
        "holdout": 0.1,  # fraction held out for validation
        "split": "tail",  # "tail": last fraction of each record; "records": whole records
        "holdout_ids": [],  # record ids held out whole for validation (overrides split)
        "rc_augment": True,  # DNA: reverse-complement half the windows
        # MIDI: relabel the instruments of each window by a random permutation of the 128
        # programs, so a model reads a piece's instruments from its context (and can copy
        # programs it never saw in training) instead of learning which ones are common
        "program_shuffle": False,
        "options": {},  # domain tokenization options, e.g. {softmask: keep}
        "val_windows": 8,  # validation windows per evaluation
        "record_starts": 0.0,  # share of training windows that start at a record's start
    },
    "train": {
        "max_steps": 200,
        "max_minutes": None,  # also stop (and validate, export) after this much training time
        "batch_size": 4,
        "accumulate": 1,
        "lr": 1.0e-3,
        "weight_decay": 0.01,
        "warmup_steps": 50,
        "grad_clip": 1.0,
        # an exponential moving average of the weights (e.g. 0.999), which validation,
        # best.ckpt and model.safetensors then hold; null = the raw weights
        "ema_decay": None,
        # after training, fit the sampling grammar's steers to the model from its own samples
        # (MIDI, duration vocabulary: domains/midi/calibration.py); false: keep them as set
        "calibrate_sampling": True,
        "precision": "auto",  # bf16-mixed on GPU, 32-true on CPU
        "seed": 0,
        "val_every": 100,
        "checkpoint_every": None,  # steps between checkpoints/last.ckpt; None = val_every
        # which weights model.safetensors keeps: the last step's, or ("best") those of the
        # validation with the best score, when training went on past it (overfitting)
        "export": "last",
        "log_every": 10,
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",
        "accelerator": "auto",
        "num_workers": 0,
    },
}


# the classifier's own section (task "classify")
CLASSIFY_DEFAULTS: dict[str, Any] = {
    "classes": [],  # class names, in the order of the model's outputs
    "head_dropout": 0.1,
    "pool": "mean",  # or "max": the final hidden states' mean or maximum over positions
    "freeze": False,  # train the head only (with a pretrained language model)
    "pretrained": None,  # the language model directory the body started from
    "both_strands": True,  # DNA: validate and predict on both strands, averaged
}
# the encoder-decoder's own section (task "seq2seq")
SEQ2SEQ_DEFAULTS: dict[str, Any] = {
    "source_domain": None,
    "source_options": {},  # the source domain's tokenization options
    "source_len": 4096,  # longest source (tokens); longer pairs are skipped in training
    # ReformerConfig fields where the encoder differs from the decoder (`model`); resolved,
    # the encoder's whole config (vocab_size from the source domain, never causal, and
    # max_seq_len = source_len unless given)
    "encoder": {},
    "share_weights": False,  # decoder layers use the encoder's attention and FF weights
    # the decoder's first axial position axis is the encoder's (position-aligned pairs,
    # see ReformerEncDec)
    "tie_positions": False,
    # {ratio: r, window: w}: aligned cross-attention, target position t reads the source
    # positions within w of t // r (position-aligned pairs; T x (2w + 1) instead of S x T).
    # None: every target position reads the whole source
    "align": None,
    # false: the decoder never reads the target tokens it wrote; each target position is
    # predicted from its position and the source alone, and greedy decoding takes each
    # position's likeliest token (position-aligned pairs such as codon design)
    "read_target": True,
    # the comparison: no encoder, one causal model reads source + target and is scored on
    # the target (source and target of one domain; model.max_seq_len covers both)
    "decoder_only": False,
}
# what each task's model is called, the command that trains it, and what else to do with it
TASKS = {"lm": ("language model", "seqformer train", "sample, score or embed"),
         "classify": ("classifier", "seqformer finetune", "predict"),
         "seq2seq": ("sequence-to-sequence model", "seqformer train seq2seq",
                     "sample seq2seq or score seq2seq")}


def _merge(base: dict, extra: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        name = f"{where}.{key}" if where else key
        if where in ("model", "seq2seq.encoder") or (where, key) in (
                ("data", "options"), ("seq2seq", "source_options")):
            out[key] = value  # checked by ReformerConfig / the domain
        elif key not in base:
            raise InputError(f"{name}: unknown config field")
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise InputError(f"{name}: expected a mapping, got {value!r}")
            out[key] = _merge(base[key], value, name)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict:
    """'model.n_hashes=8' -> {'model': {'n_hashes': 8}} (value parsed as YAML)."""
    if "=" not in text:
        raise InputError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise InputError(f"override {text!r}: cannot parse value: {e}") from None
    if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of config sections")
    return data


def resolve(domain: str, vocab_size: int, preset: str | Path | None = None,
            options: dict | None = None, overrides: list[str] = (), task: str = "lm",
            source: tuple[str, int] | None = None) -> dict:
    """The full, checked configuration of a training run. source: (domain, vocab_size) of
    a seq2seq model's source."""
    if task not in TASKS:
        raise InputError(f"task: must be one of {tuple(TASKS)}, got {task!r}")
    cfg = copy.deepcopy(DEFAULTS)
    cfg["task"] = task
    if task == "classify":
        cfg["classify"] = copy.deepcopy(CLASSIFY_DEFAULTS)
    if task == "seq2seq":
        cfg["seq2seq"] = copy.deepcopy(SEQ2SEQ_DEFAULTS)
        cfg["seq2seq"]["source_domain"] = source[0]
    if preset is not None:
        cfg = _merge(cfg, load_yaml(preset), "")
    for layer in [options or {}] + [parse_override(o) for o in overrides]:
        cfg = _merge(cfg, layer, "")
    if cfg["domain"] not in (None, domain):
        raise InputError(f"domain: the config is for {cfg['domain']!r}, not {domain!r}")
    if cfg["task"] != task:
        raise InputError(f"task: the config is for {cfg['task']!r}, not {task!r}")
    cfg["domain"] = domain
    cfg["model"]["vocab_size"] = vocab_size
    _resolve_complement(cfg["model"], domain)
    if task == "seq2seq":
        _resolve_encoder(cfg, source)
    model = model_config(cfg)
    cfg["model"] = model.to_dict()
    data, train = cfg["data"], cfg["train"]

    def need(ok: bool, name: str, what: str, value: Any) -> None:
        if not ok:
            raise InputError(f"{name}: {what}, got {value!r}")

    def integer(v: Any, low: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    def number(v: Any, low: float) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= low

    need(integer(data["seq_len"], 1) and data["seq_len"] <= model.max_seq_len, "data.seq_len",
         f"must be an integer in 1..model.max_seq_len ({model.max_seq_len})", data["seq_len"])
    need(number(data["holdout"], 0.0) and data["holdout"] < 1.0, "data.holdout",
         "must be a number in [0, 1)", data["holdout"])
    need(data["split"] in ("tail", "records"), "data.split", "must be 'tail' or 'records'",
         data["split"])
    need(isinstance(data["rc_augment"], bool), "data.rc_augment", "must be true or false",
         data["rc_augment"])
    need(isinstance(data["program_shuffle"], bool), "data.program_shuffle",
         "must be true or false", data["program_shuffle"])
    need(not data["program_shuffle"] or domain == "midi", "data.program_shuffle",
         "relabels MIDI instruments: only for the midi domain", data["program_shuffle"])
    need(integer(data["val_windows"], 0), "data.val_windows", "must be an integer >= 0",
         data["val_windows"])
    need(number(data["record_starts"], 0.0) and data["record_starts"] <= 1.0,
         "data.record_starts", "must be a number in [0, 1]", data["record_starts"])
    need(isinstance(data["holdout_ids"], list), "data.holdout_ids", "must be a list of ids",
         data["holdout_ids"])
    for key in ("max_steps", "batch_size", "accumulate", "val_every", "log_every"):
        need(integer(train[key], 1), f"train.{key}", "must be a positive integer", train[key])
    for key in ("warmup_steps", "seed", "num_workers"):
        need(integer(train[key], 0), f"train.{key}", "must be an integer >= 0", train[key])
    need(train["checkpoint_every"] is None or integer(train["checkpoint_every"], 1),
         "train.checkpoint_every", "must be a positive integer or null",
         train["checkpoint_every"])
    need(train["export"] in ("last", "best"), "train.export", "must be last or best",
         train["export"])
    need(train["max_minutes"] is None or (number(train["max_minutes"], 0.0)
                                          and train["max_minutes"] > 0),
         "train.max_minutes", "must be a positive number or null", train["max_minutes"])
    need(number(train["lr"], 0.0) and train["lr"] > 0, "train.lr", "must be a positive number",
         train["lr"])
    need(number(train["weight_decay"], 0.0), "train.weight_decay", "must be a number >= 0",
         train["weight_decay"])
    need(train["grad_clip"] is None or number(train["grad_clip"], 0.0), "train.grad_clip",
         "must be a number >= 0 or null", train["grad_clip"])
    need(train["ema_decay"] is None or (number(train["ema_decay"], 0.0)
                                        and 0 < train["ema_decay"] < 1),
         "train.ema_decay", "must be a number in (0, 1) or null", train["ema_decay"])
    need(isinstance(train["calibrate_sampling"], bool), "train.calibrate_sampling",
         "must be true or false", train["calibrate_sampling"])
    need(train["precision"] in PRECISIONS, "train.precision", f"must be one of {PRECISIONS}",
         train["precision"])
    if task == "classify":
        clf = cfg["classify"]
        need(number(clf["head_dropout"], 0.0) and clf["head_dropout"] < 1,
             "classify.head_dropout", "must be a number in [0, 1)", clf["head_dropout"])
        need(clf["pool"] in POOLS, "classify.pool", f"must be one of {POOLS}", clf["pool"])
        for key in ("freeze", "both_strands"):
            need(isinstance(clf[key], bool), f"classify.{key}", "must be true or false",
                 clf[key])
    return cfg


def _resolve_complement(model: dict, domain: str) -> None:
    """model.copy_complement: true/false -> the domain's complement map / off."""
    wanted = model.get("copy_complement")
    if wanted is False:
        model["copy_complement"] = []
    elif wanted is True:
        complement = getattr(get_domain(domain), "complement_ids", None)
        if complement is None:
            raise InputError(f"model.copy_complement: copies across the two strands of a "
                             f"genome; the {domain} domain has one strand")
        model["copy_complement"] = complement()


def _resolve_encoder(cfg: dict, source: tuple[str, int]) -> None:
    s2s = cfg["seq2seq"]
    if s2s["source_domain"] != source[0]:
        raise InputError(f"seq2seq.source_domain: the config is for {s2s['source_domain']!r}, "
                         f"not {source[0]!r}")
    length = s2s["source_len"]
    if not (isinstance(length, int) and not isinstance(length, bool) and length >= 1):
        raise InputError(f"seq2seq.source_len: must be a positive integer, got {length!r}")
    for key in ("share_weights", "tie_positions", "decoder_only", "read_target"):
        if not isinstance(s2s[key], bool):
            raise InputError(f"seq2seq.{key}: must be true or false, got {s2s[key]!r}")
    if s2s["decoder_only"] and not s2s["read_target"]:
        raise InputError("seq2seq.read_target: a decoder-only model reads its source and "
                         "target as one sequence; it cannot leave the target unread")
    if s2s["decoder_only"]:
        if source[0] != cfg["domain"]:
            raise InputError(f"seq2seq.decoder_only: needs one domain for source and target, "
                             f"got {source[0]!r} and {cfg['domain']!r}")
        room = cfg["model"].get("max_seq_len", 131072) - length
        if room < cfg["data"]["seq_len"]:
            raise InputError(f"seq2seq.decoder_only: model.max_seq_len must hold "
                             f"seq2seq.source_len + data.seq_len ({length} + "
                             f"{cfg['data']['seq_len']})")
    if s2s["align"] is not None:
        align = s2s["align"]
        if not (isinstance(align, dict) and set(align) == {"ratio", "window"}):
            raise InputError(f"seq2seq.align: expected null or {{ratio: R, window: W}}, "
                             f"got {align!r}")
        try:
            Alignment(**align)
        except ConfigError as e:
            raise InputError(f"seq2seq.{e}") from None
        if s2s["decoder_only"]:
            raise InputError("seq2seq.align: a decoder-only model has no cross-attention")
    if not isinstance(s2s["encoder"], dict):
        raise InputError(f"seq2seq.encoder: expected a mapping, got {s2s['encoder']!r}")
    # from the decoder's fields as given (not derived ones such as n_buckets, which follow
    # the encoder's own max_seq_len)
    encoder = {**cfg["model"], "max_seq_len": length, **s2s["encoder"],
               "vocab_size": source[1], "causal": False}
    try:
        resolved = model_config({"model": encoder})
    except InputError as e:
        raise InputError(f"seq2seq.encoder.{str(e).removeprefix('model.')}") from None
    if resolved.max_seq_len < length:
        raise InputError(f"seq2seq.encoder.max_seq_len: {resolved.max_seq_len} is below "
                         f"seq2seq.source_len ({length})")
    s2s["encoder"] = resolved.to_dict()


def model_config(cfg: dict) -> ReformerConfig:
    model = dict(cfg["model"])
    if "axial_shape" in model and model["axial_shape"] is not None:
        model["axial_shape"] = tuple(model["axial_shape"])
    try:
        return ReformerConfig.from_dict(model)
    except ConfigError as e:
        raise InputError(f"model.{e}") from None
    except TypeError as e:
        raise InputError(f"model: {e}") from None
