"""Decoding: the caches (cache.py), turning logits into a token (sampling.py), the
sampling loop (generate.py) and beam search (beam.py)."""
