#!/usr/bin/env python3
"""keel and etcd 3.4 side by side (scripts/bench): the same keel-bench workloads against
each, in alternation, on the same machine and disk; writes docs/bench.md, docs/bench.json
and docs/bench.png.

Both systems run with their defaults for durability and timing (fsync on every commit,
100 ms heartbeat, 1000 ms election timeout), one member and three members on loopback,
data in one temporary directory on the same file system. Each point runs `--rounds`
times per system, keel then etcd (A B A B ...), so that drift of the machine (page cache,
other load) falls on both; a figure is the median of its rounds.
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import keel_cluster  # noqa: E402  (the e2e harness: starts and stops keeld and etcd)

KEEL_BENCH = os.path.join(ROOT, "build", "net", "client", "keel-bench")
KINDS = ("keel", "etcd")
RANGE_KEY = "bench-range-key"
NOTES_MARKER = "<!-- notes: scripts/bench keeps everything below this line -->"


def point(name, short, members, workload, args, total, clients=1, conns=1, target=None,
          headline="throughput", unit="ops/s", latency="latency_ms"):
    return dict(name=name, short="%s, %dm" % (short, members), members=members,
                workload=workload, args=list(args), total=total, clients=clients, conns=conns,
                target=target, headline=headline, unit=unit, latency=latency)


KEYS = ["--key-size", "8", "--val-size", "256", "--key-space-size", "100000"]

# The targets (keel / etcd): put 1 client >= 1.0x, 64+ clients >= 1.5x; range
# linearizable and serializable at 64+ clients >= 1.5x; watch events/s >= 2x; lease
# keepalives/s >= 1.5x; p99 no worse (ratio <= 1.0) at every point.
POINTS = [
    point("put, 1 client", "put 1c", 1, "put", KEYS, 2000, target=1.0),
    point("put, 64 clients", "put 64c", 1, "put", KEYS, 20000, clients=64, conns=8, target=1.5),
    point("put, 256 clients", "put 256c", 1, "put", KEYS, 40000, clients=256, conns=16, target=1.5),
    point("txn-put, 64 clients", "txn 64c", 1, "txn-put", KEYS, 20000, clients=64, conns=8),
    point("range linearizable, 64 clients", "range-l 64c", 1, "range", [RANGE_KEY, "--consistency", "l"],
          50000, clients=64, conns=8, target=1.5),
    point("range serializable, 64 clients", "range-s 64c", 1, "range", [RANGE_KEY, "--consistency", "s"],
          50000, clients=64, conns=8, target=1.5),
    point("watch, 1000 watchers x 100 puts", "watch", 1, "watch",
          ["--watchers", "1000", "--streams", "10", "--puts", "100"], 0, clients=4, conns=1, target=2.0, headline="events_per_s", unit="events/s",
          latency="event_latency_ms"),
    point("lease keepalive, 64 clients", "keepalive 64c", 1, "lease-keepalive", ["--leases", "64"], 50000,
          clients=64, conns=8, target=1.5, unit="keepalives/s"),
    point("put, 1 client", "put 1c", 3, "put", KEYS, 1000, target=1.0),
    point("put, 64 clients", "put 64c", 3, "put", KEYS, 10000, clients=64, conns=8, target=1.5),
    point("range linearizable, 64 clients", "range-l 64c", 3, "range", [RANGE_KEY, "--consistency", "l"],
          30000, clients=64, conns=8, target=1.5),
    point("range serializable, 64 clients", "range-s 64c", 3, "range", [RANGE_KEY, "--consistency", "s"],
          30000, clients=64, conns=8, target=1.5),
]


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def run_bench(endpoints, p, scale, progress):
    total = max(1, int(p["total"] * scale))
    args = list(p["args"])
    if p["workload"] == "watch":  # its size is its puts, each delivered to every watcher
        i = args.index("--puts") + 1
        args[i] = str(max(1, int(int(args[i]) * scale)))
    cmd = [KEEL_BENCH, "--endpoints", ",".join(endpoints), "--clients", str(p["clients"]),
           "--conns", str(p["conns"]), "--total", str(total), "--json",
           "--progress" if progress else "--no-progress", p["workload"], *args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if progress else subprocess.PIPE,
                          text=True, timeout=300)
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise RuntimeError("keel-bench gave no JSON (exit %d): %s\n%s"
                           % (proc.returncode, " ".join(cmd), proc.stdout[-2000:]))
    result["exit_code"] = proc.returncode
    result["command"] = " ".join(os.path.basename(c) if c == KEEL_BENCH else c for c in cmd)
    return result


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS for pid %d" % pid)


def dir_bytes(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                pass
    return total


def start(kind, members, workdir):
    cluster = keel_cluster.Cluster(members, kind=kind, token="keel-bench")
    shutil.rmtree(cluster.dir, ignore_errors=True)
    cluster.dir = tempfile.mkdtemp(prefix="%s-%d-" % (kind, members), dir=workdir)
    for m in cluster.members:
        m.data_dir = os.path.join(cluster.dir, os.path.basename(m.data_dir))
        m.log_path = os.path.join(cluster.dir, os.path.basename(m.log_path))
    try:
        cluster.start(timeout=30)
        keel_cluster.wait_for_leader(cluster, timeout=15)
        keel_cluster.etcdctl(cluster.endpoints, "put", RANGE_KEY, "v" * 256)
    except BaseException:
        cluster.cleanup()
        raise
    return cluster


def run_points(points, members, args, workdir, results):
    clusters = {}
    try:
        for kind in KINDS:
            clusters[kind] = start(kind, members, workdir)
            log("%s: %d member(s) up at %s" % (kind, members, ",".join(clusters[kind].endpoints)))
        for p in points:
            runs = {kind: [] for kind in KINDS}
            for r in range(args.rounds):
                for kind in KINDS:
                    res = run_bench(clusters[kind].endpoints, p, args.scale, args.progress)
                    runs[kind].append(res)
                    log("%-34s %d member(s) %-4s round %d: %10.0f %s  p99 %.2f ms  errors %d"
                        % (p["name"], members, kind, r + 1, res[p["headline"]], p["unit"],
                           res[p["latency"]]["p99"], res["errors"]))
            results.append(dict(point=p, runs=runs))
    finally:
        for c in clusters.values():
            c.cleanup()


def run_memory(args, workdir):
    """RSS of one member holding `--memory-keys` keys of 256-byte values."""
    keys = max(1000, int(args.memory_keys * min(1.0, args.scale)))
    out = {"keys": keys, "val_size": 256}
    for kind in KINDS:
        cluster = start(kind, 1, workdir)
        try:
            pid = cluster.members[0].proc.pid
            before = rss_bytes(pid)
            cmd = [KEEL_BENCH, "--endpoints", cluster.endpoints[0], "--clients", "8", "--conns",
                   "2", "--total", str(keys), "--json", "--progress" if args.progress else
                   "--no-progress", "load", "--key-size", "16", "--val-size", "256",
                   "--txn-ops", "128"]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=600)
            load = json.loads(proc.stdout)
            time.sleep(2)  # background work after the load (compaction, checkpoints) settles
            out[kind] = dict(rss_before=before, rss_after=rss_bytes(pid),
                             data_dir_bytes=dir_bytes(cluster.members[0].data_dir),
                             load_keys_per_s=load["throughput"], load_errors=load["errors"],
                             load_exit_code=proc.returncode)
            log("memory %-4s: %d keys in %.1f s; RSS %.0f MiB (idle %.0f MiB); data dir %.0f MiB"
                % (kind, keys, load["elapsed_s"], out[kind]["rss_after"] / 2**20,
                   before / 2**20, out[kind]["data_dir_bytes"] / 2**20))
        finally:
            cluster.cleanup()
    return out


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    etcd_version = subprocess.run([keel_cluster.ETCD, "--version"], capture_output=True,
                                  text=True).stdout.splitlines()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return dict(cpu=cpu, cores=os.cpu_count(), memory_gib=round(mem / 2**30, 1),
                kernel=platform.release(), etcd=etcd_version[0] if etcd_version else "?",
                keel_commit=commit)


def summarize(entry):
    p = entry["point"]
    s = {}
    for kind in KINDS:
        runs = entry["runs"][kind]
        s[kind] = dict(headline=statistics.median(r[p["headline"]] for r in runs),
                       p99=statistics.median(r[p["latency"]]["p99"] for r in runs),
                       errors=sum(r["errors"] for r in runs))
    s["ratio"] = s["keel"]["headline"] / s["etcd"]["headline"] if s["etcd"]["headline"] else 0
    s["p99_ratio"] = s["keel"]["p99"] / s["etcd"]["p99"] if s["etcd"]["p99"] else 0
    s["met"] = (p["target"] is None or s["ratio"] >= p["target"]) and s["p99_ratio"] <= 1.0
    return s


def write_chart(rows, path):
    data = path + ".dat"
    with open(data, "w") as f:
        for label, ratio, p99_ratio in rows:
            f.write('"%s" %.3f %.3f\n' % (label.replace('"', "'"), ratio, p99_ratio))
    script = """
set terminal pngcairo size 1200,640 font ",10"
set output "%s"
set title "keel / etcd 3.4 on this machine: throughput ratio (higher is better) and p99 latency ratio (lower is better)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set xtics rotate by -30 scale 0
set bmargin 6
set ylabel "keel / etcd"
set yrange [0:*]
set grid ytics
set key top left
plot "%s" using 2:xtic(1) title "throughput ratio" lc rgb "#2a7ab0", \\
     "" using 3 title "p99 latency ratio" lc rgb "#d9822b", \\
     1 with lines lw 2 lc rgb "#333333" title "parity"
""" % (path, data)
    try:
        subprocess.run(["gnuplot"], input=script, text=True, check=True, capture_output=True)
    finally:
        os.unlink(data)


def write_report(results, memory, info, elapsed, args, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    lines = []
    lines.append("# keel and etcd 3.4 side by side")
    lines.append("")
    lines.append("Written by `scripts/bench` on %s in %.0f s (keel %s). Each figure is the median "
                 "of %d runs per system, run in alternation (keel, etcd, keel, etcd) against "
                 "both systems started with their defaults: fsync on every commit, 100 ms "
                 "heartbeat, 1000 ms election timeout, data on the same disk. The load comes "
                 "from `keel-bench` (etcd's v3 gRPC API) on the same machine."
                 % (info["date"], elapsed, info["keel_commit"], args.rounds))
    lines.append("")
    lines.append("Machine: %s, %d cores, %.1f GiB memory, Linux %s; %s."
                 % (info["cpu"], info["cores"], info["memory_gib"], info["kernel"], info["etcd"]))
    if args.scale != 1.0:
        lines.append("")
        lines.append("**Scaled run (--scale %g): totals are not the committed figures.**" % args.scale)
    lines.append("")
    lines.append("| members | workload | unit | keel | etcd | keel/etcd | target | p99 keel ms | "
                 "p99 etcd ms | p99 keel/etcd | met |")
    lines.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    chart = []
    for e in results:
        p, s = e["point"], summarize(e)
        target = ">= %.1fx" % p["target"] if p["target"] else "-"
        errors = ""
        if s["keel"]["errors"] or s["etcd"]["errors"]:
            errors = " (errors: keel %d, etcd %d)" % (s["keel"]["errors"], s["etcd"]["errors"])
        lines.append("| %d | %s%s | %s | %.0f | %.0f | %.2fx | %s | %.2f | %.2f | %.2f | %s |"
                     % (p["members"], p["name"], errors, p["unit"], s["keel"]["headline"],
                        s["etcd"]["headline"], s["ratio"], target, s["keel"]["p99"],
                        s["etcd"]["p99"], s["p99_ratio"], "yes" if s["met"] else "**no**"))
        chart.append((p["short"], s["ratio"], s["p99_ratio"]))
    lines.append("")
    lines.append("p99 is the request latency (for watch: from a put's send to its event at a "
                 "watcher). \"met\" needs the throughput target (where there is one) and a p99 "
                 "no worse than etcd's.")
    if memory:
        lines.append("")
        lines.append("## Memory: one member holding %d keys of 256-byte values" % memory["keys"])
        lines.append("")
        lines.append("| | RSS idle MiB | RSS loaded MiB | data dir MiB | load keys/s |")
        lines.append("|---|---:|---:|---:|---:|")
        for kind in KINDS:
            m = memory[kind]
            lines.append("| %s | %.0f | %.0f | %.0f | %.0f |"
                         % (kind, m["rss_before"] / 2**20, m["rss_after"] / 2**20,
                            m["data_dir_bytes"] / 2**20, m["load_keys_per_s"]))
        ratio = memory["keel"]["rss_after"] / memory["etcd"]["rss_after"]
        lines.append("")
        lines.append("keel/etcd RSS: %.2fx (target: no more than etcd's, <= 1.0x): %s."
                     % (ratio, "met" if ratio <= 1.0 else "**not met**"))
        lines.append("RSS is VmRSS of the server process (for etcd it includes the pages of its "
                     "memory-mapped bbolt file that were touched).")
    lines.append("")
    lines.append("![keel / etcd ratios](bench.png)")
    lines.append("")
    lines.append("## How to run")
    lines.append("")
    lines.append("`scripts/bench` (this file, bench.json and bench.png are its output; about "
                 "%.0f minutes here). `scripts/bench --micro` runs the Google Benchmarks of the "
                 "simulator, the durable log and the lease table instead. One point by hand:" % (elapsed / 60))
    lines.append("")
    lines.append("```")
    lines.append("build/net/client/keel-bench --endpoints 127.0.0.1:2379 --clients 64 --conns 8 "
                 "--total 20000 put --key-size 8 --val-size 256 --key-space-size 100000")
    lines.append("```")
    lines.append("")
    lines.append("The commands of every run are in bench.json.")
    # A hand-written part (what bounds the figures) survives runs: all after the marker.
    md_path = os.path.join(out_dir, "bench.md")
    kept = ""
    if os.path.exists(md_path):
        with open(md_path) as f:
            old = f.read()
        if NOTES_MARKER in old:
            kept = old[old.index(NOTES_MARKER):]
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
        if kept:
            f.write("\n" + kept)
    with open(os.path.join(out_dir, "bench.json"), "w") as f:
        json.dump(dict(machine=info, elapsed_s=elapsed, rounds=args.rounds, scale=args.scale,
                       points=[dict(summary=summarize(e), **e) for e in results],
                       memory=memory), f, indent=1)
    write_chart(chart, os.path.join(out_dir, "bench.png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs per system and point, alternating (A B A B A B)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every total by this (e.g. 0.1 for a quick look)")
    ap.add_argument("--memory-keys", type=int, default=1000000)
    ap.add_argument("--no-memory", action="store_true", help="skip the RSS point")
    ap.add_argument("--members", choices=["1", "3", "both"], default="both")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--progress", action="store_true", help="keel-bench's progress bars")
    args = ap.parse_args()
    if args.rounds < 1 or args.scale <= 0:
        ap.error("--rounds must be >= 1 and --scale > 0")
    for binary in (KEEL_BENCH, keel_cluster.KEELD, keel_cluster.ETCD):
        if not os.access(binary, os.X_OK):
            ap.error("%s is not built or not installed (scripts/bench builds keel's)" % binary)

    began = time.time()
    info = machine()
    info["date"] = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    workdir = tempfile.mkdtemp(prefix="keel-bench-", dir=os.environ.get("KEEL_BENCH_DIR"))
    results, memory = [], None
    try:
        for members in (1, 3):
            if args.members in (str(members), "both"):
                run_points([p for p in POINTS if p["members"] == members], members, args,
                           workdir, results)
        if not args.no_memory:
            memory = run_memory(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.time() - began
    write_report(results, memory, info, elapsed, args, args.out)
    log("done in %.0f s: %s" % (elapsed, os.path.join(args.out, "bench.md")))
    bad = [e["point"]["name"] for e in results
           if any(r["exit_code"] != 0 for runs in e["runs"].values() for r in runs)]
    if bad:
        log("runs with errors: %s" % ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
