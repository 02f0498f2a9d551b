#!/usr/bin/env python3
"""Draws TPLA/MLA decode throughput against context from the CSVs of ./run -m bench: one line per shape, g and
GPU layout, with the paper's 2 x H800 ratios (the CSV's `paper` column) dashed beside it.
    tools/plot_bench.py OUT.png BENCH.csv [MORE.csv ...]      (matplotlib; not needed by the program)"""
import csv
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    lines, paper, card = {}, {}, set()
    for path in sys.argv[2:]:
        with open(path) as f:
            for r in csv.DictReader(f):
                if r.get("shape") == "shape" or r.get("scheme") != "TPLA" or r["g"] == "1":   # headers, MLA rows
                    continue
                rank = r.get("gpus_run") == "1" and r["gpus"] != "1"
                key = (r["shape"], int(r["g"]), int(r["gpus"]), rank)
                old = lines.setdefault(key, {}).get(int(r["ctx"]))
                if old is None or int(r["batch"]) > old[0]:   # the largest batch, as the bench's ratio means
                    lines[key][int(r["ctx"])] = (int(r["batch"]), float(r["ratio"]))
                if float(r["paper"]) > 0:
                    paper.setdefault(r["shape"], {})[int(r["ctx"])] = float(r["paper"])
                card.add(r["card"])
    if not lines:
        sys.exit("no TPLA rows in " + ", ".join(sys.argv[2:]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {}
    for (shape, g, gpus, rank), byctx in sorted(lines.items()):
        pts = sorted((ctx, ratio) for ctx, (_, ratio) in byctx.items())
        c = colors.setdefault(shape, "C%d" % len(colors))
        how = "one GPU, rank of %d" % gpus if rank else "%d GPUs" % gpus
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if g == 2 else "s:", color=c,
                label="%s, g = %d (%s)" % (shape, g, how))
    for shape, pts in sorted(paper.items()):
        ctx = sorted(pts)
        ax.plot(ctx, [pts[x] for x in ctx], "x--", color=colors.get(shape, "k"), alpha=0.6,
                label="%s, paper (2 x H800)" % shape)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("TPLA / MLA-TP decode throughput")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_title("tpla -m bench, largest batch each (%s)" % ", ".join(sorted(card)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[1], dpi=110)
    print("wrote", sys.argv[1])


if __name__ == "__main__":
    main()
