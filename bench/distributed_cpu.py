"""SupCon 'all' with labels over torch.distributed (gloo, ranks as processes on this machine):
per-rank time and peak memory of one forward + backward for 1, 2 and 4 ranks, gather and
ring, beside SupCon over features gathered by hand (SupContrast's losses.py on the
gathered batch: its N_global x N_global matrices on every rank).

N_global rows = 2 views x N_global / 2 samples, d features, fp32, labels in 100 classes;
each rank holds N_global / (2 W) samples. Time: median of --repeats steps after one
warm-up, every rank starting together (a barrier), the slowest rank's time per step.
Memory: the peak of the step's allocations above what was allocated before, on each rank
(the profiler's CPU allocation events; the largest over the ranks). The hand-gathered
reference needs ~5 N_global^2 x 4 bytes per rank: it runs at --naive-n only and is
extrapolated by N^2 beyond (said so in the table). torch threads per rank: max(1,
cores // W), so that the ranks share the cores.

    PYTHONPATH=$PWD python bench/distributed_cpu.py [--n 32768] [--d 128] [--worlds 1,2,4,8]
        [--out bench/results/distributed_cpu.md] [--plot bench/results/distributed_cpu.png]

The column "per rank / N_local d fp32" is the peak in units of one [N_local, d] fp32
buffer: constant over W means memory per rank falling as 1/W.
"""

import argparse
import datetime
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from contrastive_kernels.testing.ranks import free_port


def _features(n_global, d, world, rank):
    gen = torch.Generator().manual_seed(3)
    bsz = n_global // 2
    feats = torch.nn.functional.normalize(torch.randn(bsz, 2, d, generator=gen), dim=-1)
    labels = torch.randint(0, 100, (bsz,), generator=gen)
    per = bsz // world
    return feats[rank * per:(rank + 1) * per], labels[rank * per:(rank + 1) * per]


def _step(kind, feats, labels):
    import contrastive_kernels as ck
    from contrastive_kernels.testing.reference_losses import supcon_loss_reference

    f = feats.detach().requires_grad_()
    if kind == "naive":
        gathered = torch.cat(dist.nn.all_gather(f), dim=0) if dist.is_initialized() else f
        every = [torch.empty_like(labels) for _ in range(dist.get_world_size())] \
            if dist.is_initialized() else [labels]
        if dist.is_initialized():
            dist.all_gather(every, labels)
        loss = supcon_loss_reference(gathered, torch.cat(every), temperature=0.1)
    else:
        loss = ck.SupConLoss(temperature=0.1, gather_distributed=dist.is_initialized(),
                             distributed_mode=kind, backend="cpu")(f, labels)
    loss.backward()
    return loss.detach()


def _worker(rank, world, port, kind, n_global, d, repeats, threads, out):
    import warnings

    from contrastive_kernels.testing.measure import peak_memory_bytes

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    if world > 1:
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=600))
    feats, labels = _features(n_global, d, world, rank)
    barrier = dist.barrier if world > 1 else (lambda: None)
    _step(kind, feats, labels)  # warm-up
    times = []
    for _ in range(repeats):
        barrier()
        t = time.perf_counter()
        _step(kind, feats, labels)
        barrier()
        times.append(time.perf_counter() - t)
    peak = peak_memory_bytes(lambda: _step(kind, feats, labels), "cpu")
    torch.save(dict(time=statistics.median(times), peak=peak), os.path.join(out, f"{rank}.pt"))
    if world > 1:
        dist.destroy_process_group()


def run(kind, world, n_global, d, repeats, threads, tmp):
    out = os.path.join(tmp, f"{kind}{world}_{n_global}")
    os.makedirs(out, exist_ok=True)
    mp.start_processes(_worker, args=(world, free_port(), kind, n_global, d, repeats, threads,
                                      out), nprocs=world, join=True, start_method="spawn")
    got = [torch.load(os.path.join(out, f"{r}.pt")) for r in range(world)]
    return max(g["time"] for g in got), max(g["peak"] for g in got)


def plot(rows, path):
    """Per-rank peak memory against world size, ours (gather, ring) and the hand-gathered
    reference (extrapolated), log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    series = {}
    for world, kind, _, _, mib, _, note in rows:
        if kind == "ours, one process":
            for mode in ("ours, gather", "ours, ring"):
                series.setdefault(mode, []).append((world, mib))
        elif kind.startswith("hand-gathered"):
            scale = float(note.split()[1]) if note else 1.0
            series.setdefault("hand-gathered SupContrast (extrapolated)", []).append(
                (world, mib * scale))
        else:
            series.setdefault(kind, []).append((world, mib))
    for label, points in series.items():
        ax.plot(*zip(*sorted(points)), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("ranks (world size)")
    ax.set_ylabel("peak memory per rank (MiB)")
    ax.set_title("SupCon, N_global = 32768, d = 128, fp32, CPU (gloo)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _in_buffers(kind, mib, world, n, d) -> str:
    """Peak memory per rank in [N_local, d] fp32 buffers (ours only: the hand-gathered
    reference holds N_global x N_global matrices)."""
    if kind.startswith("hand-gathered"):
        return "-"
    return f"{mib * 2 ** 20 * world / (n * d * 4):.1f}"


def main():
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32768, help="global rows (2 views)")
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--worlds", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--naive-n", type=int, default=4096,
                        help="global rows of the hand-gathered reference (extrapolated by N^2)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--plot", default=None, help="also plot memory per rank (png)")
    args = parser.parse_args()
    worlds = [int(w) for w in args.worlds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for world in worlds:
            threads = max(1, args.cores // world)
            for kind in (("gather",) if world == 1 else ("gather", "ring")):
                t, peak = run(kind, world, args.n, args.d, args.repeats, threads, tmp)
                rows.append((world, "ours, one process" if world == 1 else f"ours, {kind}",
                             args.n, t, peak / 2 ** 20, threads, ""))
                print(rows[-1], flush=True)
            t, peak = run("naive", world, args.naive_n, args.d, args.repeats, threads, tmp)
            scale = (args.n / args.naive_n) ** 2
            rows.append((world, "hand-gathered SupContrast", args.naive_n, t, peak / 2 ** 20,
                         threads, f"x {scale:.0f} at N = {args.n}: ~{peak * scale / 2 ** 30:.1f} GiB"))
            print(rows[-1], flush=True)
    lines = [f"SupCon 'all', labels (100 classes), N_global = {args.n} rows (2 views), "
             f"d = {args.d}, fp32, forward + backward, gloo on one machine "
             f"({args.cores} cores); per rank: slowest rank's median step time, largest "
             "peak extra memory.", "",
             "| ranks | loss | N_global | time per step (s) | peak memory per rank (MiB) | "
             "per rank / N_local d fp32 | threads per rank | note |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {w} | {k} | {n} | {t:.2f} | {m:.1f} | {_in_buffers(k, m, w, n, args.d)} "
              f"| {th} | {note} |" for w, k, n, t, m, th, note in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
