"""``lse``: the masked log-sum-exp over each row's keys (docs/design.md section 1).

    lse_i = log sum_{j in A(i)} exp(s_ij)                   [N]
    o_i   = sum_{j in A(i)} exp(s_ij - lse_i) k^_j          [N, d], only with return_o

A(i): every key but i + self_offset and, with exclude_positives, those sharing row i's
label. An empty A(i) gives lse = -inf, o = 0 and no gradient. Backward: dL/ds_ij = g_i p_ij.
"""

from .spec import OpSpec, Output

LSE = OpSpec(
    name="lse",
    options=(("bool", "exclude_positives", False), ("bool", "return_o", False)),
    outputs=(Output("lse", "rows"), Output("o", "rows_d", differentiable=False, when="return_o")),
    backward_options=("exclude_positives",),
    rows_independent=True,
    label_option="exclude_positives",
    doc=__doc__,
)
