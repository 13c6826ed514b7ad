"""``pairwise_sigmoid``: the sigmoid loss of every (row, key) pair, summed per row (SigLIP).

    z_ij = +1 for a positive pair, -1 otherwise
    row_loss_i = sum_j softplus(-z_ij s_ij) = -sum_j log sigmoid(z_ij s_ij)      [N]

Positive pairs: (i, i + self_offset) when self_offset is given (open_clip's diagonal) and,
when both label tensors are given, the pairs whose labels are equal (the multi-positive
form: several captions of one image, duplicates in a web batch). Neither given: every pair
is a negative (the blocks a distributed exchange brings from other ranks). No pair is
excluded: every key enters every row. The bias is differentiable (SigLIP learns it): pass a
scalar bias as ``bias.expand(M)``. Backward, each tile recomputed once:

    dL/ds_ij = -z_ij sigmoid(-z_ij s_ij) g_i,        dbias_j = sum_i dL/ds_ij

softplus(x) = max(x, 0) + log1p(exp(-|x|)) and sigmoid(-|x|) = e / (1 + e), e = exp(-|x|):
one exp per logit in both passes, plus the log1p (forward) or a reciprocal (backward).
"""

from .spec import WITH_BIAS_GRADIENT, OpSpec, Output

PAIRWISE_SIGMOID = OpSpec(
    name="pairwise_sigmoid",
    options=(),
    outputs=(Output("row_loss", "rows"),),
    backward_options=(),
    rows_independent=False,  # self_offset pairs row i with key i + self_offset
    label_option=None,
    gradients=WITH_BIAS_GRADIENT,
    doc=__doc__,
)
