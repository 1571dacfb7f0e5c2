"""seqformer: Reformer models for very long sequences (genomes, music)."""

__version__ = "0.1.0"
