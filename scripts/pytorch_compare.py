#!/usr/bin/env python3
"""PyTorch's (and bitsandbytes') CPU optimizers against fused-optim's fast CPU path,
interleaved in one run on one machine.

Three kinds of long-lived processes time batches of optimizer steps on request:
fused-optim's `cpu_step_server` example, and two PyTorch servers (this script with
`--serve`), one started with `THP_MEM_ALLOC_ENABLE=1` (PyTorch's allocator then asks for 2 MiB
pages, as fused-optim's host vectors do) and one without; PyTorch reads that variable once per
process. For every optimizer of the throughput suite:

1. every PyTorch candidate (fused, foreach, single-tensor loop; x both servers) is timed for a
   few batches and the fastest kept: PyTorch is compared at its best configuration;
2. then rounds alternate one batch of PyTorch's best candidate and one batch of fused-optim
   (each batch >= --batch-seconds); the result is the median over rounds of the per-round
   ratio t_peer / t_ours (> 1: fused-optim faster), so host drift over minutes cancels.

For Adam and AdamW, fused-optim's bitsandbytes-style 8-bit state (`adam_8bit`, `adamw_8bit`)
is compared the same way with PyTorch's best fp32 path and with bitsandbytes' own CPU
`Adam8bit` / `AdamW8bit` (block-wise, `min_8bit_size` 4096).

    cargo build --release --example cpu_step_server
    python3 scripts/pytorch_compare.py --log2 24     # pip install torch bitsandbytes

With `--muon square_512,transformer_12_512` it compares Muon instead: `torch.optim.Muon`
(defaults; PyTorch orthogonalises in bfloat16 on the CPU) against fused-optim's fast CPU Muon
twice: Newton-Schulz in f32 (our default, matrixmultiply's sgemm) and in torch's own bf16
arithmetic (`NsArithmetic::Bf16`: bf16 operands, f32 sums; gemmkit's `vdpbf16ps` kernel on
CPUs with AVX-512 BF16), over the 2-D tensors of each model (`square_D`: one
D x D matrix; `transformer_L_D`: L layers of q, k, v, o D x D and the MLP's D x 4D, 4D x D),
interleaved the same way; rates are in parameters per second.

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
# bitsandbytes' 8-bit class for the suite's Adam variants (its defaults otherwise).
BNB8 = {"adam": ("Adam8bit", dict()), "adamw": ("AdamW8bit", dict(weight_decay=1e-2))}
TORCH_PATHS = ("fused", "foreach", "single")


# ---------------------------------------------------------------- the PyTorch server
def muon_shapes(model):
    """(rows, cols) of a Muon model name (the list of fused_optim::roofline::muon_model_shapes)."""
    words = model.split("_")
    if words[0] == "square" and len(words) == 2:
        d = int(words[1])
        return [(d, d)]
    if words[0] == "transformer" and len(words) == 3:
        layers, d = int(words[1]), int(words[2])
        return [s for _ in range(layers) for s in [(d, d)] * 4 + [(d, 4 * d), (4 * d, d)]]
    raise ValueError(f"unknown Muon model {model}")


def serve(threads):
    """Answer `setup NAME LOG2 PATH` / `time K` / `quit` on stdin (see the module doc)."""
    import torch
    torch.set_num_threads(threads)
    opt = None
    for line in sys.stdin:
        words = line.split()
        try:
            if words[0] == "setup" and words[1] == "muon":
                opt = None
                gen = torch.Generator().manual_seed(0)
                params = []
                for rows, cols in muon_shapes(words[2]):
                    p = torch.nn.Parameter(torch.randn(rows, cols, generator=gen))
                    p.grad = torch.randn(rows, cols, generator=gen) * 0.01
                    params.append(p)
                opt = torch.optim.Muon(params)
                opt.step()
                opt.step()
                answer = "ok " + torch.__version__
            elif words[0] == "setup":
                name, log2, path = words[1], int(words[2]), words[3]
                opt = None
                n = 1 << log2
                gen = torch.Generator().manual_seed(0)
                p = torch.nn.Parameter(torch.randn(n, dtype=torch.float32, generator=gen))
                p.grad = torch.randn(n, dtype=torch.float32, generator=gen) * 0.01
                if path == "bnb8bit":
                    import bitsandbytes as bnb
                    cls_name, kwargs = BNB8[name]
                    opt = getattr(bnb.optim, cls_name)([p], min_8bit_size=4096, **kwargs)
                else:
                    cls_name, kwargs = SUITE[name]
                    extra = {"fused": dict(fused=True), "foreach": dict(foreach=True),
                             "single": dict(foreach=False)}[path]
                    opt = getattr(torch.optim, cls_name)([p], **kwargs, **extra)
                opt.step()
                opt.step()  # warm-up: state allocated and touched
                answer = "ok " + torch.__version__
            elif words[0] == "time":
                k = int(words[1])
                t = time.perf_counter()
                for _ in range(k):
                    opt.step()
                answer = f"{time.perf_counter() - t:.9f}"
            elif words[0] == "quit":
                return
            else:
                answer = "err unknown request"
        except Exception as e:  # a path PyTorch lacks: reported, not fatal
            opt = None
            answer = "err " + repr(e).replace("\n", " ")
        print(answer, flush=True)


# ---------------------------------------------------------------- the driver
class Server:
    def __init__(self, argv, env=None):
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=env)

    def ask(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        answer = self.p.stdout.readline().strip()
        if not answer:
            raise RuntimeError(f"server died answering {line!r}")
        return answer

    def setup(self, *words):
        answer = self.ask("setup " + " ".join(str(w) for w in words))
        return answer[3:] if answer.startswith("ok") else None

    def time(self, k):
        answer = self.ask(f"time {k}")
        if answer.startswith("err"):
            raise RuntimeError(answer)
        return float(answer)

    def close(self):
        try:
            self.ask("quit")
        except (RuntimeError, BrokenPipeError):
            pass
        self.p.wait()


def steps_for(server, seconds):
    """The number of steps whose batch takes at least `seconds` (doubling from 1)."""
    k = 1
    while True:
        t = server.time(k)
        if t >= seconds or k >= 1 << 14:
            return max(1, int(k * seconds / max(t, 1e-9)))
        k *= 2


def interleave(peer, ours, rounds, seconds):
    """Alternate batches of `peer` and `ours`: (median peer s/step, median ours s/step,
    median, min and max of the per-round ratio peer / ours)."""
    kp, ko = steps_for(peer, seconds), steps_for(ours, seconds)
    tp, to, ratios = [], [], []
    for r in range(rounds):
        # Alternate which side goes first, so neither always runs on a warmer machine.
        if r % 2 == 0:
            a = peer.time(kp) / kp
            b = ours.time(ko) / ko
        else:
            b = ours.time(ko) / ko
            a = peer.time(kp) / kp
        tp.append(a)
        to.append(b)
        ratios.append(a / b)
    return (statistics.median(tp), statistics.median(to), statistics.median(ratios),
            min(ratios), max(ratios))


def best_torch(servers, name, log2, seconds):
    """The fastest PyTorch candidate (server label, path, seconds per step) for `name`."""
    best = None
    version = None
    for label, server in servers.items():
        for path in TORCH_PATHS:
            got = server.setup(name, log2, path)
            if got is None:
                continue
            version = got
            k = steps_for(server, seconds / 2)
            t = min(server.time(k) / k for _ in range(3))
            if best is None or t < best[2]:
                best = (label, path, t)
    return best, version


def compare_muon(args):
    """torch.optim.Muon against fused-optim's CPU Muon, interleaved, per model."""
    me = [sys.executable, __file__, "--serve", "--threads", str(args.threads)]
    peer = Server(me, dict(os.environ, THP_MEM_ALLOC_ENABLE="1"))
    ours = Server([args.server], dict(os.environ, RAYON_NUM_THREADS=str(args.threads)))
    rows = []
    version = None
    try:
        for model in args.muon.split(","):
            n = sum(r * c for r, c in muon_shapes(model))
            version = peer.setup("muon", model, "-")
            if version is None:
                raise RuntimeError("torch.optim.Muon is not available")
            for arithmetic in ("f32", "bf16"):
                if ours.setup("muon", model, arithmetic) is None:
                    raise RuntimeError(f"fused-optim refused the Muon model {model}")
                tp, to, med, lo, hi = interleave(peer, ours, args.rounds, args.batch_seconds)
                rows.append(dict(model=model, n=n, tensors=len(muon_shapes(model)),
                                 arithmetic=arithmetic, peer="torch.optim.Muon+thp",
                                 peer_seconds=tp, ours_seconds=to, ratio_median=med,
                                 ratio_min=lo, ratio_max=hi, rounds=args.rounds))
                print(f"muon {model} ({arithmetic} NS) vs torch: {med:.2f}x", file=sys.stderr)
    finally:
        peer.close()
        ours.close()
    if args.json:
        print(json.dumps(dict(torch_version=version, threads=args.threads, rows=rows),
                         indent=1))
        return
    print(f"Muon, PyTorch {version}, {args.threads} threads, {args.rounds} interleaved rounds "
          f"of >= {args.batch_seconds} s batches\n")
    print("| model | tensors | params | our NS arithmetic | torch.optim.Muon ms/step "
          "| fused-optim ms/step | median ratio (min-max) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['tensors']} | {r['n']} | {r['arithmetic']} | "
              f"{r['peer_seconds'] * 1e3:.1f} | "
              f"{r['ours_seconds'] * 1e3:.1f} | {r['ratio_median']:.2f}x "
              f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log2", type=int, default=24)
    ap.add_argument("--only", default="", help="only optimizers whose name contains this")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--batch-seconds", type=float, default=0.3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-8bit", action="store_true")
    ap.add_argument("--server", default="target/release/examples/cpu_step_server")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--muon", default="", help="compare Muon on these models instead")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.threads)
    if args.muon:
        return compare_muon(args)
    n = 1 << args.log2
    me = [sys.executable, __file__, "--serve", "--threads", str(args.threads)]
    torch_servers = {
        "thp": Server(me, dict(os.environ, THP_MEM_ALLOC_ENABLE="1")),
        "nothp": Server(me, dict(os.environ, THP_MEM_ALLOC_ENABLE="0")),
    }
    ours = Server([args.server], dict(os.environ, RAYON_NUM_THREADS=str(args.threads)))
    rows = []
    version = None
    try:
        for name in SUITE:
            if args.only not in name:
                continue
            best, version = best_torch(torch_servers, name, args.log2, args.batch_seconds)
            peer = torch_servers[best[0]]
            peer.setup(name, args.log2, best[1])
            formats = ["f32"] + (["8bit"] if name in BNB8 and not args.no_8bit else [])
            for fmt in formats:
                if ours.setup(name, args.log2, fmt) is None:
                    raise RuntimeError(f"fused-optim has no {name} with {fmt} state")
                label = name if fmt == "f32" else name + "_8bit"
                tp, to, med, lo, hi = interleave(peer, ours, args.rounds, args.batch_seconds)
                rows.append(dict(optimizer=label, n=n, peer="torch." + best[1] +
                                 ("+thp" if best[0] == "thp" else ""),
                                 peer_seconds=tp, ours_seconds=to, ratio_median=med,
                                 ratio_min=lo, ratio_max=hi, rounds=args.rounds))
                print(f"{label} vs {rows[-1]['peer']}: {med:.2f}x", file=sys.stderr)
                if fmt == "8bit":
                    bnb = torch_servers["thp"]
                    if bnb.setup(name, args.log2, "bnb8bit") is None:
                        raise RuntimeError("bitsandbytes is not importable (pip install "
                                           "bitsandbytes), or refused the configuration")
                    if ours.setup(name, args.log2, fmt) is None:
                        raise RuntimeError("fused-optim setup failed")
                    tp, to, med, lo, hi = interleave(bnb, ours, args.rounds,
                                                     args.batch_seconds)
                    rows.append(dict(optimizer=label, n=n, peer="bitsandbytes." +
                                     BNB8[name][0] + "+thp",
                                     peer_seconds=tp, ours_seconds=to, ratio_median=med,
                                     ratio_min=lo, ratio_max=hi, rounds=args.rounds))
                    print(f"{label} vs {rows[-1]['peer']}: {med:.2f}x", file=sys.stderr)
                    peer.setup(name, args.log2, best[1])
    finally:
        for s in list(torch_servers.values()) + [ours]:
            s.close()
    if args.json:
        print(json.dumps(dict(torch_version=version, threads=args.threads, rows=rows),
                         indent=1))
        return
    print(f"n = {n}, PyTorch {version}, {args.threads} threads, {args.rounds} interleaved "
          f"rounds of >= {args.batch_seconds} s batches (+thp: THP_MEM_ALLOC_ENABLE=1)\n")
    print("| fused-optim | peer (its fastest path) | peer Mparam/s | fused-optim Mparam/s "
          "| median ratio (min-max) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['optimizer']} | {r['peer']} | {n / r['peer_seconds'] / 1e6:.0f} | "
              f"{n / r['ours_seconds'] / 1e6:.0f} | {r['ratio_median']:.2f}x "
              f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) |")


if __name__ == "__main__":
    main()
