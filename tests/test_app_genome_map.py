"""apps/genome_map: tiles, GC content, PCA, the HDF5 layout read back, and the whole run on
a tiny model trained for two steps."""

import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from seqformer.domains import Record, get_domain
from seqformer.errors import InputError

from cli_helpers import REPO, run_cli

sys.path.insert(0, str(REPO / "apps" / "genome_map"))
import genome_map as gm  # noqa: E402

LAMBDA = REPO / "data" / "dna" / "lambda_phage.fa.gz"
DNA = get_domain("dna")


@pytest.fixture(scope="module")
def trained(tiny_dna_run):
    return tiny_dna_run


@pytest.fixture(scope="module")
def mapped(trained, tmp_path_factory):
    """The app run end to end on lambda in 2 kbp tiles."""
    out = tmp_path_factory.mktemp("map")
    code = gm.main(["--model", str(trained), "--fasta", str(LAMBDA), "--out", str(out),
                    "--tile", "2000"])
    assert code == 0
    return out


@pytest.mark.parametrize("seq, expected", [
    ("GGCCAATT", 0.5), ("GCGC", 1.0), ("ATAT", 0.0), ("GCNNNNNNAT", 0.5), ("ACGTG", 0.6)])
def test_gc_content(seq, expected):
    assert gm.gc_content(DNA.encode(seq), DNA) == pytest.approx(expected)


def test_gc_content_counts_soft_masked_bases_and_no_base_is_nan():
    keep = get_domain("dna", softmask="keep")
    assert gm.gc_content(keep.encode("gcAT"), keep) == pytest.approx(0.5)
    assert gm.gc_content(keep.encode("ggcA"), keep) == pytest.approx(0.75)
    assert np.isnan(gm.gc_content(DNA.encode("NNNN"), DNA))


def test_tiles_cover_records_with_coordinates_in_their_ids():
    recs = [Record("a", np.arange(2500) % 4 + 2), Record("b", np.full(2400, 3)),
            Record("c", np.full(300, 4))]
    tiles = gm.tile_records(recs, 1000)
    assert [t.id for t in tiles] == ["a:1-1000", "a:1001-2000", "a:2001-2500",  # 500 kept
                                     "b:1-1000", "b:1001-2000",  # the last 400 dropped
                                     "c:1-300"]  # a short record stays whole
    assert np.array_equal(tiles[1].tokens, recs[0].tokens[1000:2000])
    assert tiles[2].meta == {"record": "a", "start": 2000, "end": 2500}
    assert [t.id for t in gm.tile_records(recs, 0)] == ["a", "b", "c"]
    with pytest.raises(InputError, match="--tile -5"):
        gm.tile_records(recs, -5)


def test_pca_finds_the_planted_directions():
    rng = np.random.default_rng(0)
    n, d = 200, 16
    strong, weak = rng.normal(size=n), rng.normal(size=n)
    u, v = np.linalg.qr(rng.normal(size=(d, 2)))[0].T
    x = 10 * np.outer(strong, u) + 3 * np.outer(weak, v) + 0.1 * rng.normal(size=(n, d)) + 5
    scores, ratio, components = gm.pca(x, k=2)
    assert scores.shape == (n, 2) and ratio.shape == (2,) and components.shape == (2, d)
    assert abs(gm.correlation(scores[:, 0], strong)) > 0.99
    assert abs(gm.correlation(scores[:, 1], weak)) > 0.99
    assert ratio[0] > ratio[1] > 0 and ratio.sum() <= 1
    assert abs(scores[:, 0] @ scores[:, 1]) < 1e-6 * n  # uncorrelated components
    assert np.allclose(components @ components.T, np.eye(2), atol=1e-9)
    # sign fixed: the largest loading of each component is positive
    assert all(c[np.abs(c).argmax()] > 0 for c in components)


def test_correlation_skips_tiles_without_gc():
    assert gm.correlation([1, 2, 3, 4], [2, 4, 6, float("nan")]) == pytest.approx(1.0)
    assert np.isnan(gm.correlation([1, 1, 1], [1, 2, 3]))


def test_run_writes_tiles_embeddings_table_and_png(mapped):
    tiles = list(DNA.read(mapped / "tiles.fa"))
    assert len(tiles) == 24 and tiles[0].id.endswith(":1-2000")  # 48,502 bp: 24 x 2 kbp
    ids, pooled, attrs = gm.read_embeddings(mapped / "emb.h5")
    assert ids == [t.id for t in tiles]
    assert pooled.shape == (24, 32) and attrs["pool"] == "mean" and attrs["layer"] == -1
    with h5py.File(mapped / "emb.h5") as f:
        first = f["embeddings/0"]
        assert first.shape == (2000, 32) and first.attrs["id"] == ids[0]
        # the pooled vector is the mean of the per-base ones (stored as float16)
        assert np.allclose(first[:].astype(np.float64).mean(0), pooled[0], atol=2e-3)
    rows = [r.split("\t") for r in (mapped / "pca.tsv").read_text().splitlines()]
    assert rows[0] == ["id", "record", "start", "end", "gc", "pc1", "pc2"] and len(rows) == 25
    gc = np.array([float(r[4]) for r in rows[1:]])
    assert np.allclose(gc, [gm.gc_content(t.tokens, DNA) for t in tiles], atol=1e-4)
    pcs = np.array([[float(r[5]), float(r[6])] for r in rows[1:]])
    assert np.allclose(pcs, gm.pca(pooled)[0], atol=1e-5)
    assert (mapped / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_embeddings_give_the_same_map(trained, mapped, tmp_path):
    """The app's HDF5 is what `seqformer embed dna --pool mean` writes for the tiles."""
    out = tmp_path / "cli.h5"
    code, text = run_cli("embed", "dna", "--model", trained, "--fasta", mapped / "tiles.fa",
                         "--out", out, "--pool", "mean")
    assert code == 0, text
    ids, pooled, _ = gm.read_embeddings(out)
    app_ids, app_pooled, _ = gm.read_embeddings(mapped / "emb.h5")
    assert ids == app_ids and np.allclose(pooled, app_pooled, atol=1e-5)


def test_outputs_are_refused_without_force(trained, mapped, tmp_path, capsys):
    mapped = Path(shutil.copytree(mapped, tmp_path / "map"))  # the other tests read the original
    before = (mapped / "pca.tsv").read_text()
    args = ["--model", str(trained), "--fasta", str(LAMBDA), "--out", str(mapped),
            "--tile", "2000"]
    assert gm.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "already exists (use --force" in err
    assert (mapped / "pca.tsv").read_text() == before
    assert gm.main(args + ["--force", "--tile", "4000"]) == 0
    assert "12 tiles" in capsys.readouterr().out
    _, trained_vectors, attrs = gm.read_embeddings(mapped / "emb.h5")
    assert attrs["weights"] == "trained"
    # the control: same architecture, random weights, other vectors
    assert gm.main(args + ["--force", "--tile", "4000", "--untrained"]) == 0
    _, random_vectors, attrs = gm.read_embeddings(mapped / "emb.h5")
    assert attrs["weights"].startswith("untrained")
    assert random_vectors.shape == trained_vectors.shape
    assert not np.allclose(random_vectors, trained_vectors, atol=1e-3)


@pytest.mark.parametrize("args, message", [
    (["--fasta", "missing.fa"], "missing.fa: no such file"),
    (["--fasta", str(LAMBDA), "--tile", "40000"], "only 1 tile(s) of 40000 bases"),
    (["--fasta", str(LAMBDA), "--layer", "7"], "--layer 7: "),
])
def test_bad_input_is_one_clean_line(trained, tmp_path, capsys, args, message):
    code = gm.main(["--model", str(trained), "--out", str(tmp_path / "m"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
