"""Chart of `ratel bench radius --csv` rows: durable acks/s and p99 latency against requests
in flight, one line per server (benches/peers/sweep.sh).

    python benches/peers/plot.py benches/results/radius-sweep.csv benches/results/radius-sweep.png
"""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "ratel": dict(color="tab:blue", marker="o"),
    "FreeRADIUS+detail": dict(color="tab:orange", marker="s"),
    "ceiling": dict(color="tab:gray", marker="^", linestyle="--"),
}


def main(src, dst):
    series = defaultdict(list)
    for row in csv.DictReader(open(src)):
        series[row["server"]].append(
            (int(row["in_flight"]), float(row["acks_per_sec"]), float(row["p99_ms"]))
        )
    fig, (thr, lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, pts in series.items():
        pts.sort()
        x = [p[0] for p in pts]
        style = STYLE.get(name, {})
        thr.plot(x, [p[1] for p in pts], label=name, **style)
        lat.plot(x, [p[2] for p in pts], label=name, **style)
    for ax in (thr, lat):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("requests in flight")
        ax.grid(True, which="both", alpha=0.3)
        xs = sorted({p[0] for pts in series.values() for p in pts})
        ax.set_xticks(xs, [str(v) for v in xs])
    thr.set_ylabel("acknowledged requests/s")
    thr.set_title("throughput (ratel: durable, fsync before ack)")
    lat.set_ylabel("p99 latency, ms")
    lat.set_yscale("log")
    lat.set_title("p99 ack latency")
    thr.legend()
    first = next(csv.DictReader(open(src)))
    fig.suptitle(
        f"RADIUS accounting, {first['users']} subscribers, {first['sessions']} sessions, "
        f"{first['duration_s']} s per point, {first['cores']} cores"
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
