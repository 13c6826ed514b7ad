"""``two_sided_lse``: both directions of the log-sum-exp from one sweep over the tiles
(CLIP, symmetric InfoNCE).

    row_lse_i = log sum_{j : (i, j) not in E} exp(s_ij)      [N]
    col_lse_j = log sum_{i : (i, j) not in E} exp(s_ij)      [M]

E: the pair (i, i + self_offset) and, with exclude_positives, the pairs that share a label:
the same pairs leave both sides. Column statistics are merged across row blocks in a fixed
order, so results are bitwise deterministic. An empty row or column gives -inf and no
gradient. Backward, each tile recomputed once:

    dL/ds_ij = g_i exp(s_ij - row_lse_i) + h_j exp(s_ij - col_lse_j)
"""

from .spec import OpSpec, Output

TWO_SIDED_LSE = OpSpec(
    name="two_sided_lse",
    options=(("bool", "exclude_positives", False),),
    outputs=(Output("row_lse", "rows"), Output("col_lse", "keys")),
    backward_options=("exclude_positives",),
    rows_independent=False,
    label_option="exclude_positives",
    doc=__doc__,
)
