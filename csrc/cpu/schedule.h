// Tile shapes and deterministic parallel schedules for tiles that write two blocks of
// accumulators (or of running statistics: the two-sided lse forward).
//
// A backward tile (I, J) adds to the dq-side rows of block I and the dk-side rows of
// block J (a symmetric pair to both sides of both blocks). Instead of atomics or per-thread
// copies of dk, the tiles form a list in which every block's tiles come in a fixed order
// (rounds where no block appears twice: a Latin square, or a round-robin tournament), and
// a tile may start only when the previous tiles of both its blocks have finished. So each
// block receives its contributions in the list's order, whatever the number of threads or
// the timing, and the results are the same bit for bit; and a thread that stalls (a busy
// machine) holds up only the tiles that need its blocks, not the whole team at a barrier.
#pragma once

#include "cpu/isa.h"  // first: the library headers, then the ISA switch

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define CK_CPU_RELAX() _mm_pause()
#else
#define CK_CPU_RELAX() ((void)0)
#endif

#include "microkernel.h"
#include "operands.h"

CK_CPU_NAMESPACE_BEGIN

// ---------------------------------------------------------------- tile shapes
// Every tile shape below depends on the problem's shapes only, never on the thread
// count, so results are bitwise the same for any number of threads.

struct TileSizes {
  int64_t rows;  // a multiple of the micro-tile height
  int64_t cols;  // a multiple of 16 keys (whole key panels)
};

// Tile of the general (non-symmetric) kernels.
inline TileSizes general_tile_sizes(int64_t n, int64_t m) {
  // 96 x 256 logits (~100 KiB fp32): the tile and the operand panels in use stay in a
  // 512 KiB L2 (larger row blocks measured no faster). Smaller problems use smaller tiles
  // so that there are ~8 blocks each way to spread over threads.
  TileSizes ts;
  ts.rows = std::min<int64_t>(96, std::max<int64_t>(kMR, round_up(ceil_div(n, 8), kMR)));
  ts.cols = std::min<int64_t>(256, std::max<int64_t>(16, round_up(ceil_div(m, 8), 16)));
  return ts;
}

// Block size of the symmetric kernels (rows and keys alike).
inline int64_t symmetric_block(int64_t n) {
  // 192 x 192 blocks: each pair does five 192 x 192 x d products, long enough inner loops
  // to amortize the micro-tile epilogues; measured (N = 16384, d = 128, 2 threads) a few
  // percent faster than 128 and 256, and 10% faster than 96.
  return std::min<int64_t>(192, std::max<int64_t>(16, round_up(ceil_div(n, 8), 16)));
}

// Row stride of a tile buffer of `cols` keys: whole panels plus one, so that successive
// rows (read down a column by the transposed product) do not all fall into the same few
// L1 sets, as they would with a stride of 256 floats.
template <class T>
constexpr int64_t tile_stride(int64_t cols) {
  return round_up(cols, panel_width<T>()) + panel_width<T>();
}

// ---------------------------------------------------------------- tile orders

struct TileTask {
  int64_t a, b;            // row-side block, key-side block
  int64_t a_seen, b_seen;  // tiles of those blocks earlier in the list: wait for them
};

// Tiles in rounds; shared_blocks: a and b index one set of blocks (symmetric problems),
// so a tile (I, J) waits for every earlier tile that touches I or J on either side.
class TileSchedule {
 public:
  TileSchedule(const std::vector<std::pair<int64_t, int64_t>>& tiles, int64_t blocks_a,
               int64_t blocks_b, bool shared_blocks)
      : shared_(shared_blocks),
        done_a_(new std::atomic<int64_t>[std::max<int64_t>(blocks_a, 1)]),
        done_b_(shared_blocks ? nullptr : new std::atomic<int64_t>[std::max<int64_t>(blocks_b, 1)]) {
    std::vector<int64_t> seen_a(blocks_a, 0), seen_b(shared_blocks ? 0 : blocks_b, 0);
    for (const auto& [a, b] : tiles) {
      if (shared_) {
        tasks_.push_back({a, b, seen_a[a], seen_a[b]});
        ++seen_a[a];
        if (b != a) ++seen_a[b];
      } else {
        tasks_.push_back({a, b, seen_a[a], seen_b[b]});
        ++seen_a[a];
        ++seen_b[b];
      }
    }
    for (int64_t i = 0; i < blocks_a; ++i) done_a_[i].store(0, std::memory_order_relaxed);
    for (int64_t i = 0; !shared_ && i < blocks_b; ++i) done_b_[i].store(0, std::memory_order_relaxed);
    next_.store(0, std::memory_order_relaxed);
  }

  // Called by every thread of a parallel region: takes tiles in list order and runs
  // body(a, b) for each once its blocks are free.
  template <class Body>
  void run(Body&& body) {
    std::atomic<int64_t>* done_b = shared_ ? done_a_.get() : done_b_.get();
    for (;;) {
      const int64_t t = next_.fetch_add(1, std::memory_order_relaxed);
      if (t >= int64_t(tasks_.size())) return;
      const TileTask& task = tasks_[t];
      // The earliest unfinished tile never waits (its predecessors were taken before it
      // and are done), so the team always makes progress.
      for (int spins = 0; done_a_[task.a].load(std::memory_order_acquire) < task.a_seen ||
                          done_b[task.b].load(std::memory_order_acquire) < task.b_seen;
           ++spins) {
        if (spins < 64) CK_CPU_RELAX();
        else std::this_thread::yield();
      }
      body(task.a, task.b);
      done_a_[task.a].fetch_add(1, std::memory_order_release);
      if (!(shared_ && task.a == task.b)) done_b[task.b].fetch_add(1, std::memory_order_release);
    }
  }

 private:
  bool shared_;
  std::vector<TileTask> tasks_;
  std::unique_ptr<std::atomic<int64_t>[]> done_a_, done_b_;
  std::atomic<int64_t> next_;
};

// Latin square over nbr row blocks x nbc key blocks: round r holds (t, t + r mod nbc) for
// every row block t (or the transpose when there are more row blocks), so no block appears
// twice in a round and every tile appears once.
inline std::vector<std::pair<int64_t, int64_t>> latin_square_tiles(int64_t nbr, int64_t nbc) {
  std::vector<std::pair<int64_t, int64_t>> tiles;
  const int64_t rounds = std::max(nbr, nbc), per_round = std::min(nbr, nbc);
  for (int64_t r = 0; r < rounds; ++r)
    for (int64_t t = 0; t < per_round; ++t) {
      if (nbr <= nbc) tiles.emplace_back(t, (t + r) % nbc);
      else tiles.emplace_back((t + r) % nbr, t);
    }
  return tiles;
}

// Round-robin ("circle method") tournament over nb blocks: every unordered pair {I, J},
// I < J, once, in rounds where no block appears twice. Diagonal tiles (I, I) fill the slot
// of a block that would otherwise sit out (odd nb), or form a first round.
inline std::vector<std::pair<int64_t, int64_t>> tournament_tiles(int64_t nb) {
  std::vector<std::pair<int64_t, int64_t>> tiles;
  if (nb <= 0) return tiles;
  const bool odd = nb % 2 == 1;
  const int64_t players = odd ? nb + 1 : nb;  // the extra player of an odd nb is a bye
  if (!odd)
    for (int64_t b = 0; b < nb; ++b) tiles.emplace_back(b, b);
  const int64_t ring = players - 1;
  for (int64_t r = 0; r < ring; ++r) {
    auto add = [&](int64_t a, int64_t b) {
      if (a >= nb) tiles.emplace_back(b, b);  // b's bye: its diagonal tile
      else if (b >= nb) tiles.emplace_back(a, a);
      else tiles.emplace_back(std::min(a, b), std::max(a, b));
    };
    add(players - 1, r);
    for (int64_t t = 1; t < players / 2; ++t) add((r + t) % ring, (r - t + ring) % ring);
  }
  return tiles;
}

CK_CPU_NAMESPACE_END
