#!/usr/bin/env python3
"""report_bench.py CSV OUTDIR [TITLE]: the benchmark's table (OUTDIR/bench.rst, also printed)
and plot (OUTDIR/bench.png, with matplotlib) from the measurements bench.py wrote.

Every figure is a median over the runs, with the smallest and largest; every ratio is computed
run by run (the two things measured in the same run) before its median is taken.
"""
import collections
import csv
import os
import statistics
import sys

# The downtime's floor: the manual sequence's phases, measured one by one in the same run.
FLOOR = ["floor: programs stop", "floor: zfs rollback", "floor: start until answering"]
# (name, numerator, denominator terms, goal): the denominator is the sum of its terms.
RATIOS = [
    ("bin/snapshot / floor", "bin/snapshot", ["python start-up", "zfs snapshot"], "2"),
    ("bin/snapshot --list / floor", "bin/snapshot --list", ["python start-up", "zfs list"],
     "2"),
    ("bin/cleanup / floor", "bin/cleanup", ["python start-up", "zfs destroy"], "2"),
    ("bin/snapshot --list ({sets} sets) / floor", "bin/snapshot --list ({sets} sets)",
     ["python start-up", "zfs list ({sets} sets)"], "2"),
    ("bin/cleanup ({sets} sets) / floor", "bin/cleanup ({sets} sets)",
     ["python start-up", "zfs destroy ({sets} sets)"], "2"),
    ("bin/rollback: down / manual rollback: down", "bin/rollback: down",
     ["manual rollback: down"], "1"),
    ("bin/rollback / manual rollback", "bin/rollback", ["manual rollback"], "1.3"),
    ("bin/rollback --keep: down / bin/rollback: down", "bin/rollback --keep: down",
     ["bin/rollback: down"], ""),
    ("bin/rollback: down / floor", "bin/rollback: down", FLOOR, ""),
    ("bin/snapshot (busy pool) / bin/snapshot", "bin/snapshot (busy pool)", ["bin/snapshot"],
     "1.2"),
    ("bin/snapshot --list (busy pool) / --list", "bin/snapshot --list (busy pool)",
     ["bin/snapshot --list"], "1.2"),
    ("bin/cleanup (busy pool) / bin/cleanup", "bin/cleanup (busy pool)", ["bin/cleanup"], "1.2"),
    ("bin/rollback (busy pool) / bin/rollback", "bin/rollback (busy pool)", ["bin/rollback"],
     ""),
    ("bin/snapshot / snapshotbackup", "bin/snapshot", ["snapshotbackup"], ""),
    ("bin/rollback / snapshotrestore", "bin/rollback", ["snapshotrestore"], ""),
    ("bin/rollback: down / snapshotrestore: down", "bin/rollback: down",
     ["snapshotrestore: down"], ""),
]
# (name, measure, terms subtracted, goal in seconds): differences, run by run.
DIFFERENCES = [
    ("bin/rollback: down - floor", "bin/rollback: down", FLOOR, "0.5"),
    ("bin/rollback --keep: down - bin/rollback: down", "bin/rollback --keep: down",
     ["bin/rollback: down"], "0.3"),
]
PLOTTED = ["bin/snapshot", "snapshotbackup", "bin/rollback", "bin/rollback --keep",
           "manual rollback",
           "snapshotrestore", "bin/rollback: down", "manual rollback: down",
           "snapshotrestore: down"]


def load(path):
    data = collections.defaultdict(dict)  # (size, measure) -> {run: seconds}
    for row in csv.DictReader(open(path)):
        data[int(row["size_mib"]), row["measure"]][int(row["run"])] = float(row["seconds"])
    return data


def spread(values):
    return statistics.median(values), min(values), max(values)


def fmt(triple, unit=" s"):
    med, lo, hi = triple
    return "%.2f%s (%.2f-%.2f)" % (med, unit, lo, hi)


def table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    line = "  ".join("=" * w for w in widths)
    out = [line, "  ".join(v.ljust(w) for v, w in zip(rows[0], widths)).rstrip(), line]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows[1:]]
    return out + [line]


def main(argv):
    path, outdir = argv[1], argv[2]
    title = argv[3] if len(argv) > 3 else ""
    data = load(path)
    sizes = sorted({s for s, _ in data})
    measures = []
    for _, m in data:
        if m not in measures:
            measures.append(m)
    sets = next((m.split("(")[1].split()[0] for m in measures if "sets)" in m), "0")
    runs = max(len(v) for v in data.values())
    lines = ["Measured in the lab guest (%s, emulated CPU): median (min-max) of %d runs, in "
             "seconds." % (title or "OpenZFS", runs), ""]
    rows = [["measure"] + ["%d MiB" % s for s in sizes]]
    for m in measures:
        rows.append([m] + [fmt(spread(list(data[s, m].values())), "") if (s, m) in data
                           else "" for s in sizes])
    lines += table(rows) + ["", "Ratios, run by run (median, min-max); goal: at most:", ""]
    rows = [["ratio"] + ["%d MiB" % s for s in sizes] + ["goal"]]
    for name, top, bottom, goal in RATIOS:
        top, name = top.format(sets=sets), name.format(sets=sets)
        bottom = [b.format(sets=sets) for b in bottom]
        cells = []
        for s in sizes:
            if (s, top) not in data or not all((s, b) in data for b in bottom):
                cells.append("")
                continue
            ratios = [data[s, top][r] / sum(data[s, b][r] for b in bottom)
                      for r in data[s, top] if all(r in data[s, b] for b in bottom)]
            cells.append(fmt(spread(ratios), "x") if ratios else "")
        if any(cells):
            rows.append([name] + cells + [goal + "x" if goal else "-"])
    lines += table(rows)
    rows = [["difference"] + ["%d MiB" % s for s in sizes] + ["goal"]]
    for name, top, bottom, goal in DIFFERENCES:
        cells = []
        for s in sizes:
            runs_ = [r for r in data.get((s, top), {}) if all(r in data.get((s, b), {})
                                                             for b in bottom)]
            diffs = [data[s, top][r] - sum(data[s, b][r] for b in bottom) for r in runs_]
            cells.append(fmt(spread(diffs)) if diffs else "")
        if any(cells):
            rows.append([name] + cells + ["%s s" % goal])
    if len(rows) > 1:
        lines += ["", "Differences, run by run (median, min-max); goal: at most:", ""]
        lines += table(rows)
    text = "\n".join(lines) + "\n"
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "bench.rst"), "w") as f:
        f.write(text)
    print(text)
    try:
        import matplotlib
    except ImportError:
        print("report_bench: no matplotlib in %s: no plot" % sys.executable)
        return 0
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for m in PLOTTED:
        points = [(s, spread(list(data[s, m].values()))) for s in sizes if (s, m) in data]
        if not points:
            continue
        xs = [s for s, _ in points]
        ys = [t[0] for _, t in points]
        err = [[t[0] - t[1] for _, t in points], [t[2] - t[0] for _, t in points]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=m,
                    linestyle="--" if m.endswith("down") else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Data.fs and blobs (MiB)")
    ax.set_ylabel("seconds (median, min-max)")
    ax.set_title("Snapshot and rollback against collective.recipe.backup and by hand"
                 + (" (%s)" % title if title else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "bench.png"), dpi=100)
    print("report_bench: wrote %s" % os.path.join(outdir, "bench.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
