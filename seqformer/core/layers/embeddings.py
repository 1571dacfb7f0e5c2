"""The input embedding as one sum of table rows, built and back-propagated in blocks.

Token, axial-position and k-mer embeddings are each a row of some table, so the input at
a position is a sum of rows. Summing them block by block writes the (B, L, d_model)
result once, without one full-size temporary per table, and the backward scatters each
block's gradient into each table (index_add) without a per-table (L, d) gradient.
"""

from __future__ import annotations

import torch

ROWS = 8192  # positions per block


class _SumOfRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, *tables):  # noqa: ANN001 - autograd signature
        B, L = ids[0].shape
        out = tables[0].new_empty(B, L, tables[0].shape[-1])
        for s in range(0, L, ROWS):
            block = tables[0][ids[0][:, s:s + ROWS]]
            for idx, table in zip(ids[1:], tables[1:]):
                block += table[idx[..., s:s + ROWS]]
            out[:, s:s + ROWS] = block
        ctx.ids = ids
        ctx.table_rows = [t.shape[0] for t in tables]
        return out

    @staticmethod
    def backward(ctx, d_out):  # noqa: ANN001
        B, L, d = d_out.shape
        grads = []
        for idx, n, needed in zip(ctx.ids, ctx.table_rows, ctx.needs_input_grad[1:]):
            g = d_out.new_zeros(n, d) if needed else None
            for s in range(0, L, ROWS) if needed else ():
                rows = idx[..., s:s + ROWS].expand(B, -1).reshape(-1)
                g.index_add_(0, rows, d_out[:, s:s + ROWS].reshape(-1, d))
            grads.append(g)
        return (None, *grads)


def sum_of_rows(ids: list[torch.Tensor], tables: list[torch.Tensor]) -> torch.Tensor:
    """sum_k tables[k][ids[k]]: ids[0] (B, L), the others (B, L) or (L,) shared by the
    batch. Returns (B, L, d) in the first table's dtype."""
    return _SumOfRows.apply(tuple(ids), *tables)
