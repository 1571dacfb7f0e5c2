"""Fuzzed inputs: malformed, truncated and random files through the readers and the CLI.
Every outcome is a valid result or one clean error naming the file: never a traceback,
a hang or a partial output file."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqformer.domains import InputError, get_domain

from cli_helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
MIDI_FILES = sorted((REPO / "data" / "midi").rglob("*.mid"))[:6]
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mutate(data: bytes, cut: float, flips: list[tuple[float, int]]) -> bytes:
    """A real file truncated at a fraction `cut` and with some bytes overwritten."""
    out = bytearray(data[:max(1, int(len(data) * cut))])
    for where, value in flips:
        out[int(where * (len(out) - 1))] = value
    return bytes(out)


MUTATIONS = dict(cut=st.floats(0.0, 1.0), flips=st.lists(
    st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8))


@FUZZ
@given(source=st.sampled_from(MIDI_FILES), **MUTATIONS)
def test_mutated_midi_reads_or_fails_cleanly(tmp_path, source, cut, flips):
    path = tmp_path / "fuzzed.mid"
    path.write_bytes(_mutate(source.read_bytes(), cut, flips))
    midi = get_domain("midi")
    try:
        records = list(midi.read(path))
    except InputError as e:
        assert str(e).startswith(str(path))
        return
    assert len(records) == 1
    tokens = records[0].tokens
    assert tokens.ndim == 1 and len(tokens) > 0 and 0 <= tokens.min() and tokens.max() < 519
    # whatever was read decodes and writes back as a MIDI file that reads again
    out = tmp_path / "back.mid"
    midi.write([records[0]], out)
    assert list(midi.read(out))


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_as_midi(tmp_path, data):
    path = tmp_path / "random.mid"
    path.write_bytes(b"MThd" + data if data[:1] == b"\x00" else data)
    try:
        list(get_domain("midi").read(path))
    except InputError as e:
        assert str(e).startswith(str(path))


@FUZZ
@given(ids=st.lists(st.integers(-5, 600), max_size=200))
def test_token_decoders_take_any_ids_or_refuse_cleanly(ids):
    dna = get_domain("dna")
    arr = np.array(ids, dtype=np.int64)
    try:
        text = dna.decode(arr)
    except ValueError as e:  # out-of-vocabulary ids: a clear message, nothing else
        assert "token ids must lie in" in str(e)
        assert len(arr) and (arr.min() < 0 or arr.max() >= dna.vocab_size)
    else:
        assert set(text) <= set("ACGTNacgtn")
    pm, repairs = get_domain("midi").decode(arr)
    assert all(n.start <= n.end for inst in pm.instruments for n in inst.notes)


@pytest.fixture(scope="module")
def tiny_run(tiny_dna_run):
    return tiny_dna_run


def _fasta_like() -> st.SearchStrategy[bytes]:
    chunk = st.sampled_from([b">", b"\n", b"ACGT", b"acgtn", b"id", b"R", b"U", b"E",
                             b"\xff", b"\x00", b">r1\n", b">r2 desc\n", b"MKVLEEF"])
    return st.lists(chunk, max_size=30).map(b"".join)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=120), _fasta_like()), gz=st.booleans(),
       command=st.sampled_from(["score", "embed"]))
def test_cli_on_fuzzed_fasta(tiny_run, tmp_path_factory, data, gz, command):
    tmp = tmp_path_factory.mktemp("cli")
    fasta = tmp / "in.fa"
    fasta.write_bytes(gzip.compress(data)[: len(data) // 2 + 10] if gz else data)
    out = tmp / ("out.tsv" if command == "score" else "out.h5")
    code, text = run_cli(command, "dna", "--model", tiny_run, "--fasta", fasta, "--out", out)
    assert "Traceback" not in text
    if code == 0:
        assert out.exists()
    else:
        assert code == 2 and text.startswith("error: ") and str(fasta) in text
        assert not out.exists()
    # no temporary or partial files left behind, whatever happened
    assert sorted(p.name for p in tmp.iterdir() if p.name not in ("in.fa", out.name)) == []
