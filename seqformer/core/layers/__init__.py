"""The pieces of the stack besides attention: feed-forward, embeddings, axial positions,
the two-stream (reversible) stack and the chunked next-token loss."""
