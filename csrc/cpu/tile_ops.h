// Per-line pieces of the tile reductions (reduction.h): the online log-sum-exp updates
// along the rows and along the columns of a score tile (score_tile.h), and both at once
// with one shared pivot.
#pragma once

#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include <cmath>
#include <cstdint>

#include "operands.h"
#include "vec.h"

CK_CPU_NAMESPACE_BEGIN

// Online log-sum-exp of one tile row s[0 .. ncp) (masked entries -inf) into the running
// (max m, sum l): l <- l e^{m - m'} + sum_j e^{s_j - m'}. With weights w, s_j is replaced
// by e^{s_j - m'} w_j (the o product's operand). Returns e^{m - m'}, the factor that
// rescales the row's earlier o. The pivot stays finite: a row whose max is -inf (it has
// seen only excluded keys) or +inf takes pivot 0, so no inf - inf arises, and finish_rows
// reads l: 0 for an empty row, NaN when a NaN logit was met (the max may drop a NaN,
// but e^{NaN - pivot} carries it into l), and a row max of +inf gives lse = +inf.
// A finite pivot is a logit itself, so a row dominated by one key gets lse == that logit
// exactly and the backward's exp(s - lse) is exactly 1 there (as in the naive formula).
template <class T>
CK_INLINE T finite_pivot(T m) {
  return std::isfinite(m) ? m : T(0);
}

template <class T>
inline T row_update(T* s, int64_t ncp, T& m, double& l, const T* w) {
  using VT = Vec<T>;
  using V = typename VT::V;
  constexpr int W = VT::W;
  V vmax = VT::set1(neg_inf<T>());
  for (int64_t j = 0; j < ncp; j += W) vmax = VT::max(vmax, VT::load(s + j));
  const T m_new = std::fmax(m, VT::hmax(vmax));
  const T pivot = finite_pivot(m_new);
  const T rescale = std::exp(m - pivot);
  const V vp = VT::set1(pivot);
  V sum0 = VT::zero(), sum1 = VT::zero();
  int64_t j = 0;
  if (w != nullptr) {
    for (; j < ncp; j += W) {
      const V e = VT::exp(VT::sub(VT::load(s + j), vp));
      sum0 = VT::add(sum0, e);
      VT::store(s + j, VT::mul(e, VT::load(w + j)));
    }
  } else {
    for (; j + 2 * W <= ncp; j += 2 * W) {
      sum0 = VT::add(sum0, VT::exp(VT::sub(VT::load(s + j), vp)));
      sum1 = VT::add(sum1, VT::exp(VT::sub(VT::load(s + j + W), vp)));
    }
    for (; j < ncp; j += W) sum0 = VT::add(sum0, VT::exp(VT::sub(VT::load(s + j), vp)));
  }
  l = l * double(rescale) + double(VT::hsum(VT::add(sum0, sum1)));
  m = m_new;
  return rescale;
}

// The same update along the columns of a tile s [nr x ncp] (row stride ld): column j
// of the tile is row c0 + j of the symmetric problem, with running stats m[j], l[j].
// With weights wr (one per tile row), e^{s_ij - m'_j} wr_i goes to e [nr x ncp] (stride ld)
// and rescale[j] = e^{m_j - m'_j}. colmax / colsum are scratch of ncp entries.
template <class T>
inline void column_update(const T* s, int64_t ld, int64_t nr, int64_t ncp, int64_t nc, T* m,
                          double* l, const T* wr, T* e, T* rescale, T* colmax, T* colsum) {
  using VT = Vec<T>;
  using V = typename VT::V;
  constexpr int W = VT::W;
  for (int64_t j = 0; j < ncp; j += W) VT::store(colmax + j, VT::set1(neg_inf<T>()));
  for (int64_t i = 0; i < nr; ++i)
    for (int64_t j = 0; j < ncp; j += W)
      VT::store(colmax + j, VT::max(VT::load(colmax + j), VT::load(s + i * ld + j)));
  // colmax becomes the pivot; padding columns (j >= nc) keep pivot 0 and sum nothing
  for (int64_t j = 0; j < ncp; ++j) {
    const T m_old = j < nc ? m[j] : neg_inf<T>();
    const T m_new = std::fmax(m_old, colmax[j]);
    const T pivot = finite_pivot(m_new);
    rescale[j] = std::exp(m_old - pivot);
    colmax[j] = pivot;
    if (j < nc) m[j] = m_new;
    colsum[j] = T(0);
  }
  for (int64_t i = 0; i < nr; ++i) {
    const T* srow = s + i * ld;
    const V wi = VT::set1(wr != nullptr ? wr[i] : T(0));
    for (int64_t j = 0; j < ncp; j += W) {
      const V x = VT::exp(VT::sub(VT::load(srow + j), VT::load(colmax + j)));
      VT::store(colsum + j, VT::add(VT::load(colsum + j), x));
      if (wr != nullptr) VT::store(e + i * ld + j, VT::mul(x, wi));
    }
  }
  for (int64_t j = 0; j < nc; ++j) l[j] = l[j] * double(rescale[j]) + double(colsum[j]);
}

// Largest gap between a tile's max logit and a row's (or column's) own max for which one
// shared pivot still serves that row: its leading terms are then >= e^-40, far above
// FLT_MIN ~ e^-87, so they keep full relative precision.
constexpr double kSharedPivotSpread = 40;

// Merges a tile's contribution to one row's running stats (m, l): the row's max in the
// tile, and its sum of e^{s_j - pivot} taken at a common pivot.
// A NaN logit makes sum NaN (whatever the max kept), and l NaN from then on; a row whose
// max is already +inf (from a tile of the per-side updates) has lse +inf whatever it adds.
template <class T>
inline void merge_stats(T& m, double& l, T tile_row_max, double sum, T pivot) {
  if (std::isnan(sum)) {
    l = sum;
    return;
  }
  if (tile_row_max == neg_inf<T>()) return;  // nothing of this row in the tile
  if (m == std::numeric_limits<T>::infinity()) return;
  const T m_new = std::fmax(m, tile_row_max);
  l = l * std::exp(double(m) - double(m_new)) + sum * std::exp(double(pivot) - double(m_new));
  m = m_new;
}

// Both sides of an off-diagonal symmetric tile s [nr x ncp] with ONE exponential per entry:
// e_ij = e^{s_ij - M}, M the tile max, summed along rows into the stats of the tile's rows
// (rm, rl) and along columns into those of its keys' rows (cm, cl). Valid when every row's
// and column's own max is within kSharedPivotSpread of M (always, e.g., for normalized rows
// with |scale| <= 20); returns false, touching no stats, otherwise, and also when the tile
// max is not finite (+inf logits, or a tile of only excluded or NaN entries, whose max
// may read -inf): the per-side updates handle those. rowmax holds nr entries, colmax and
// colsum ncp.
template <class T>
inline bool shared_pivot_update(const T* s, int64_t ld, int64_t nr, int64_t ncp, int64_t nc,
                                T* rm, double* rl, T* cm, double* cl, T* rowmax, T* colmax,
                                T* colsum) {
  using VT = Vec<T>;
  using V = typename VT::V;
  constexpr int W = VT::W;
  for (int64_t j = 0; j < ncp; j += W) VT::store(colmax + j, VT::set1(neg_inf<T>()));
  T tile_max = neg_inf<T>();
  for (int64_t i = 0; i < nr; ++i) {
    V vmax = VT::set1(neg_inf<T>());
    for (int64_t j = 0; j < ncp; j += W) {
      const V x = VT::load(s + i * ld + j);
      vmax = VT::max(vmax, x);
      VT::store(colmax + j, VT::max(VT::load(colmax + j), x));
    }
    rowmax[i] = VT::hmax(vmax);
    tile_max = std::fmax(tile_max, rowmax[i]);
  }
  // tile_max comes from the row maxima, which may have dropped a NaN, and with it an
  // +inf of the same row: a NaN row max, or a column max above tile_max, also bails out.
  if (!std::isfinite(tile_max)) return false;
  for (int64_t i = 0; i < nr; ++i)
    if (rowmax[i] != neg_inf<T>() && !(double(tile_max) - double(rowmax[i]) <= kSharedPivotSpread))
      return false;
  for (int64_t j = 0; j < nc; ++j)
    if (colmax[j] != neg_inf<T>() &&
        !(double(tile_max) - double(colmax[j]) <= kSharedPivotSpread && colmax[j] <= tile_max))
      return false;
  const V pivot = VT::set1(tile_max);
  for (int64_t j = 0; j < ncp; j += W) VT::store(colsum + j, VT::zero());
  for (int64_t i = 0; i < nr; ++i) {
    V acc = VT::zero();
    for (int64_t j = 0; j < ncp; j += W) {
      const V e = VT::exp(VT::sub(VT::load(s + i * ld + j), pivot));
      acc = VT::add(acc, e);
      VT::store(colsum + j, VT::add(VT::load(colsum + j), e));
    }
    merge_stats(rm[i], rl[i], rowmax[i], double(VT::hsum(acc)), tile_max);
  }
  for (int64_t j = 0; j < nc; ++j) merge_stats(cm[j], cl[j], colmax[j], double(colsum[j]), tile_max);
  return true;
}

// Multiplies rows [0, rows) of x (stride ld, width dp) by f[i] where f[i] != 1.
template <class T>
inline void scale_rows(T* x, int64_t ld, int64_t rows, int64_t dp, const T* f) {
  for (int64_t i = 0; i < rows; ++i) {
    if (f[i] == T(1)) continue;
    T* r = x + i * ld;
    for (int64_t c = 0; c < dp; ++c) r[c] *= f[i];
  }
}

CK_CPU_NAMESPACE_END
