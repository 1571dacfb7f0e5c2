"""Shared-QK attention: the sublayer (module.py), LSH hashing (hashing.py), the layout of
the bucket-sorted rounds (buckets.py), the kernels (kernels_torch.py, kernels_triton.py,
kernels_flex.py), the choice among them and the merge of the rounds (dispatch.py), and
cross-attention to an encoder's output (cross.py)."""
