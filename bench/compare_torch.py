#!/usr/bin/env python3
"""Side-by-side training-step throughput: sparrow vs PyTorch (shared/tools/torch_baseline.py), interleaved.

The machines are shared and noisy, so each configuration is run --rounds times alternating sparrow and
PyTorch, and the medians and their ratio are reported, with the median and range of the per-round ratios
(one JSON line per configuration, then a table).

usage: bench/compare_torch.py [--model resnet20] [--sparsity 0 0.9 ...] [--batch 128] [--threads 2]
                              [--steps 5] [--rounds 5] [--build build] [--sparse-kernels auto]
                              [--scope global|layer] [--torch-baseline ../shared/tools/torch_baseline.py]

--scope is sparrow's mask scope (global top-k, as torch_baseline.py's prune.global_unstructured, or the same
sparsity in every layer). PyTorch's masked step costs the same whatever the masks, so its column is the
peer for both.
"""
import argparse, json, os, statistics, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--sparse-kernels", default="auto")
    ap.add_argument("--scope", default="global", choices=["global", "layer"])
    ap.add_argument("--torch-baseline", default=os.path.join(HERE, "..", "..", "shared", "tools", "torch_baseline.py"))
    a = ap.parse_args()
    sparrow = os.path.join(a.build, "bin", "sparrow-bench-train-step")
    if not os.path.exists(sparrow):
        sys.exit(f"compare_torch.py: {sparrow} not found (build first, or pass --build)")
    if not os.path.exists(a.torch_baseline):
        sys.exit(f"compare_torch.py: {a.torch_baseline} not found (pass --torch-baseline)")
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    rows = []
    for s in a.sparsity:
        ours, theirs = [], []
        for _ in range(a.rounds):
            ours += [r["img_per_s"] for r in run_json(
                [sparrow, "--model", a.model, "--batch", str(a.batch), "--threads", str(a.threads), "--steps",
                 str(a.steps), "--sparsity", str(s), "--sparse-kernels", a.sparse_kernels, "--scope", a.scope])
                if "img_per_s" in r]
            theirs += [r["img_per_s"] for r in run_json(
                ["/usr/bin/python3", a.torch_baseline, "--model", a.model, "--batch", str(a.batch), "--threads",
                 str(a.threads), "--steps", str(a.steps), "--sparsity", str(s)])]
        row = {"model": a.model, "sparsity": s, "batch": a.batch, "threads": a.threads, "rounds": a.rounds,
               "sparse_kernels": a.sparse_kernels if s > 0 else "none", "scope": a.scope,
               "sparrow_img_per_s": round(statistics.median(ours), 1),
               "pytorch_img_per_s": round(statistics.median(theirs), 1)}
        row["ratio"] = round(row["sparrow_img_per_s"] / row["pytorch_img_per_s"], 2)
        # Each round runs the two back to back, so a round's ratio sees the same machine state: their median
        # and range say how much of the ratio is noise.
        paired = [o / t for o, t in zip(ours, theirs)]
        row["ratio_paired_median"] = round(statistics.median(paired), 2)
        row["ratio_paired_range"] = [round(min(paired), 2), round(max(paired), 2)]
        row["sparrow_runs"], row["pytorch_runs"] = ours, theirs
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n| model | sparsity | sparrow img/s | PyTorch img/s | ratio | per-round ratio: median [range] |\n"
          f"|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["ratio_paired_range"]
        print(f"| {r['model']} | {r['sparsity']:.2f} | {r['sparrow_img_per_s']} | {r['pytorch_img_per_s']} | {r['ratio']}x "
              f"| {r['ratio_paired_median']}x [{lo}–{hi}] |")


if __name__ == "__main__":
    main()
