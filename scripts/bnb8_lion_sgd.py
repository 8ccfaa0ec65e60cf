#!/usr/bin/env python3
"""Side-by-side data for 8-bit Lion and SGD with momentum: bitsandbytes' own `Lion8bit` and
`SGD8bit` (CPU backend) run on seeded inputs; one gzipped JSON per case under golden/bnb8/.

    pip install bitsandbytes==0.50.2      # pulls torch; runs on the CPU
    python3 scripts/bnb8_lion_sgd.py [OUT_DIR]   # default golden/bnb8

Format `fused-optim-bnb8-compare/1` (described in golden/bnb8/README.md): per case the
optimizer and its arguments, the tensors (name, numel) in parameter order, params0, and per
step the lr, the gradients and the params after the step (float32 values written as the
shortest decimal that reads back as the same float32 through a float64); the final state
of every tensor under bitsandbytes' names (`state1` uint8 codes or float32 values,
`absmax1`, `qmap1`, `step`).
"""

import gzip
import json
import os
import sys

import torch
import bitsandbytes as bnb

STEPS = 6
TENSORS = [("emb", 4500), ("b", 300)]  # emb: 17 full blocks and a partial one


def f32_list(t):
    return [float(x) for x in t.detach().to(torch.float32).flatten().tolist()]


def grads(gen, numel, step):
    g = torch.randn(numel, generator=gen)
    scale = 10.0 ** (torch.rand(numel, generator=gen) * 4.0 - 3.0)  # 1e-3 .. 1e1
    g = g * scale
    zeros = torch.rand(numel, generator=gen) < 0.05
    g[zeros] = 0.0
    g[0] = 0.0
    if step == 1 and numel > 512:
        g[256:512] = 0.0  # an all-zero block: absmax 0
    return g.to(torch.float32)


def run_case(name, make_opt, args, lrs, seed):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(n, generator=gen).to(torch.float32)) for _, n in TENSORS]
    params0 = {t[0]: f32_list(p) for t, p in zip(TENSORS, params)}
    opt = make_opt(params, **args)
    steps = []
    for k, lr in enumerate(lrs, start=1):
        for group in opt.param_groups:
            group["lr"] = lr
        gs = {}
        for (tname, n), p in zip(TENSORS, params):
            g = grads(gen, n, k)
            p.grad = g.clone()
            gs[tname] = f32_list(g)
        opt.step()
        steps.append({"lr": lr, "grads": gs, "params": {t[0]: f32_list(p) for t, p in zip(TENSORS, params)}})
    final = {}
    for (tname, _), p in zip(TENSORS, params):
        st = opt.state[p]
        entry = {"step": int(st["step"])}
        s1 = st["state1"]
        if s1.dtype == torch.uint8:
            entry["state1"] = {"dtype": "uint8", "data": [int(x) for x in s1.flatten().tolist()]}
            entry["absmax1"] = f32_list(st["absmax1"])
            entry["qmap1"] = f32_list(st["qmap1"])
        else:
            entry["state1"] = {"dtype": "float32", "data": f32_list(s1)}
        final[tname] = entry
    return {
        "name": name,
        "optimizer": make_opt.__name__,
        "args": args,
        "tensors": [{"name": t, "numel": n} for t, n in TENSORS],
        "params0": params0,
        "steps": steps,
        "final_state": final,
    }


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "golden", "bnb8")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    lion_lrs = [1e-4, 1e-4, 3e-4, 3e-4, 1e-4, 5e-5]
    sgd_lrs = [1e-2, 1e-2, 3e-3, 3e-3, 1e-2, 5e-3]
    cases = [
        ("lion8bit_default", bnb.optim.Lion8bit, {"betas": [0.9, 0.99], "weight_decay": 0.0}, lion_lrs, 1),
        ("lion8bit_wd_min_size", bnb.optim.Lion8bit,
         {"betas": [0.95, 0.98], "weight_decay": 0.1, "min_8bit_size": 256}, lion_lrs, 2),
        ("sgd8bit_default", bnb.optim.SGD8bit, {"momentum": 0.9}, sgd_lrs, 3),
        ("sgd8bit_wd_min_size", bnb.optim.SGD8bit,
         {"momentum": 0.8, "weight_decay": 1e-2, "min_8bit_size": 256}, sgd_lrs, 4),
    ]
    for name, cls, args, lrs, seed in cases:
        def make(params, **kw):
            return cls(params, lr=lrs[0], **{k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()})
        make.__name__ = cls.__name__
        case = run_case(name, make, args, lrs, seed)
        doc = {
            "format": "fused-optim-bnb8-compare/1",
            "generator": "scripts/bnb8_lion_sgd.py",
            "bitsandbytes": bnb.__version__,
            "torch": torch.__version__,
            "case": case,
        }
        path = os.path.join(out, f"{name}.json.gz")
        with gzip.open(path, "wt") as f:
            json.dump(doc, f, separators=(",", ":"))
        print(path, os.path.getsize(path))


if __name__ == "__main__":
    main()
