#!/usr/bin/env python3
"""PyTorch's CPU optimizers against fused-optim's fast CPU path, in one run on one machine.

For every optimizer of the throughput suite, times PyTorch's fastest available path on one
flat f32 tensor of n parameters (fused where PyTorch has a fused CPU kernel, else foreach or
the single-tensor loop: each is tried, the fastest kept), with as many threads as cores, then
runs `target/release/examples/throughput --json --full` (600 ms measurements, as PyTorch's
here) for the same optimizer and n and reads its `cpu_fast` (and `gpu_step`) records. Prints a Markdown table; `--json` prints records.

fused-optim's host vectors ask Linux for 2 MiB pages (`madvise(MADV_HUGEPAGE)`). PyTorch does
the same when started with `THP_MEM_ALLOC_ENABLE=1`, which it reads once per process: each
PyTorch path is therefore timed in two child processes, with and without it, and the faster
kept, so PyTorch is compared at its best configuration too.

    cargo build --release --example throughput
    python3 scripts/pytorch_compare.py --log2 24        # needs `pip install torch`

Hyper-parameters are the suite's (src/roofline.rs `benchmark_suite`): PyTorch defaults, SGD
momentum 0.9, RMSprop centered + momentum 0.9, AdamW = Adam with decoupled decay 1e-2,
AMSGrad = Adam with amsgrad.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# torch.optim class name and arguments of each optimizer of the suite.
SUITE = {
    "sgd": ("SGD", dict(lr=1e-3)),
    "sgd_momentum": ("SGD", dict(lr=1e-3, momentum=0.9)),
    "adagrad": ("Adagrad", dict()),
    "rmsprop": ("RMSprop", dict()),
    "rmsprop_centered_momentum": ("RMSprop", dict(centered=True, momentum=0.9)),
    "adam": ("Adam", dict()),
    "adamw": ("AdamW", dict()),
    "amsgrad": ("Adam", dict(amsgrad=True)),
    "adadelta": ("Adadelta", dict()),
    "nadam": ("NAdam", dict()),
    "adamax": ("Adamax", dict()),
    "radam": ("RAdam", dict()),
}


def seconds_per_step(cls, kwargs, n, path, target=0.6):
    """Median over 5 batches of the time of one step; None if PyTorch has no such path."""
    import torch
    p = torch.nn.Parameter(torch.randn(n, dtype=torch.float32))
    p.grad = torch.randn(n, dtype=torch.float32) * 0.01
    extra = {"fused": dict(fused=True), "foreach": dict(foreach=True),
             "single": dict(foreach=False)}[path]
    try:
        opt = cls([p], **kwargs, **extra)
        opt.step()  # warm-up: state allocation
    except (RuntimeError, TypeError, ValueError):
        return None
    k = 1
    while True:
        t = time.perf_counter()
        for _ in range(k):
            opt.step()
        if (time.perf_counter() - t) * 5 >= target or k >= 1 << 12:
            break
        k *= 2
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(k):
            opt.step()
        samples.append((time.perf_counter() - t) / k)
    return statistics.median(samples)


def child(name, log2, threads):
    """In a child process: time every PyTorch path of one optimizer, print JSON."""
    import torch
    torch.set_num_threads(threads)
    cls_name, kwargs = SUITE[name]
    cls = getattr(torch.optim, cls_name)
    paths = {path: seconds_per_step(cls, kwargs, 1 << log2, path)
             for path in ("fused", "foreach", "single")}
    print(json.dumps(dict(version=torch.__version__, paths=paths)))


def torch_paths(name, log2, threads, thp):
    """PyTorch's seconds per step for each path, from a child process whose allocator uses
    huge pages (`thp`) or not."""
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1" if thp else "0")
    out = subprocess.run([sys.executable, __file__, "--child", name, "--log2", str(log2),
                          "--threads", str(threads)],
                         check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def ours(binary, name, log2):
    out = subprocess.run([binary, "--json", "--full", "--only", name, "--log2-sizes", str(log2)],
                         check=True, capture_output=True, text=True).stdout
    return {(r["optimizer"], r["impl"]): r for r in json.loads(out)
            if r["optimizer"] == name and r["n"] == 1 << log2}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log2", type=int, default=24)
    ap.add_argument("--only", default="")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--binary", default="target/release/examples/throughput")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.log2, args.threads)
    n = 1 << args.log2
    rows = []
    version = None
    for name in SUITE:
        if args.only not in name:
            continue
        paths = {}
        for thp in (False, True):
            got = torch_paths(name, args.log2, args.threads, thp)
            version = got["version"]
            for path, sec in got["paths"].items():
                if sec is not None:
                    paths[path + ("+thp" if thp else "")] = sec
        best = min((s, path) for path, s in paths.items())
        rec = ours(args.binary, name, args.log2)
        fast = rec[(name, "cpu_fast")]
        gpu = rec[(name, "gpu_step")]
        rows.append(dict(
            optimizer=name, n=n, torch_version=version,
            torch_threads=args.threads,
            torch_seconds=paths,
            torch_best_path=best[1], torch_best_seconds=best[0],
            cpu_fast_seconds=fast["seconds_per_step"], cpu_roof_gbps=fast["roof_gbps"],
            cpu_fast_gbps=fast["gbps"], gpu_step_seconds=gpu["seconds_per_step"],
        ))
        print(f"{name}: torch {best[1]} {n / best[0] / 1e6:.0f} M/s, "
              f"cpu_fast {n / fast['seconds_per_step'] / 1e6:.0f} M/s", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"n = {n}, PyTorch {version} ({args.threads} threads; +thp: THP_MEM_ALLOC_ENABLE=1)\n")
    print("| optimizer | PyTorch best path | PyTorch Mparam/s | fused-optim cpu_fast Mparam/s "
          "| cpu_fast / PyTorch | PyTorch paths (Mparam/s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        t, f = r["torch_best_seconds"], r["cpu_fast_seconds"]
        paths = ", ".join(f"{k} {n / v / 1e6:.0f}" for k, v in r["torch_seconds"].items())
        print(f"| {r['optimizer']} | {r['torch_best_path']} | {n / t / 1e6:.0f} | "
              f"{n / f / 1e6:.0f} | {t / f:.2f} | {paths} |")


if __name__ == "__main__":
    main()
