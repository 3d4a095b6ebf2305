"""keel-bench against keeld, and scripts/bench's side-by-side driver end to end (small).

keel-bench's numbers are not judged here (that is scripts/bench's job); what is: every
workload runs to the end against a real keeld, its JSON report is complete and
consistent with what it did, what it wrote is really in the store, and bad usage or an
unreachable server gives a clear error and the right exit code, promptly.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from keel_cluster import KIND, ROOT, etcdctl, start_cluster, time_limit  # noqa: E402

KEEL_BENCH = os.environ.get("KEEL_BENCH",
                            os.path.join(ROOT, "build", "net", "client", "keel-bench"))
LATENCY_KEYS = {"min", "mean", "stddev", "p50", "p90", "p99", "p999", "max"}


def bench(endpoints, *args, timeout=120):
    cmd = [KEEL_BENCH, "--endpoints", ",".join(endpoints), "--no-progress", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def count_keys(endpoints, key, *flags):
    """How many keys the range holds (etcdctl 3.4 has no --count-only: the header's count)."""
    _, out, _ = etcdctl(endpoints, "get", key, *flags, "--limit", "1", "-w", "json")
    return json.loads(out).get("count", 0)


def bench_json(endpoints, *args, **kwargs):
    rc, out, err = bench(endpoints, "--json", *args, **kwargs)
    if rc != 0:
        raise AssertionError("keel-bench %s: exit %d\n%s\n%s" % (" ".join(args), rc, out, err))
    return json.loads(out)


class KeelBench(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = start_cluster(1, kind=KIND)
        cls.endpoints = cls.cluster.endpoints

    @classmethod
    def tearDownClass(cls):
        cls.cluster.cleanup()

    def check_report(self, r, workload, ok):
        self.assertEqual(r["workload"], workload)
        self.assertEqual(r["errors"], 0, r.get("error_samples"))
        self.assertEqual(r["ok"], ok)
        self.assertGreater(r["elapsed_s"], 0)
        self.assertGreater(r["throughput"], 0)
        self.assertLessEqual(LATENCY_KEYS, set(r["latency_ms"]))
        lat = r["latency_ms"]
        self.assertLessEqual(lat["min"], lat["p50"])
        self.assertLessEqual(lat["p50"], lat["p99"])
        self.assertLessEqual(lat["p99"], lat["max"])
        self.assertEqual(sum(b["count"] for b in r["histogram"]), ok)

    @time_limit(60)
    def test_put_writes_the_keys_it_reports(self):
        r = bench_json(self.endpoints, "--clients", "16", "--conns", "4", "--total", "500",
                       "put", "--key-size", "8", "--val-size", "64", "--key-space-size", "50",
                       "--sequential-keys")
        self.check_report(r, "put", 500)
        self.assertEqual(r["clients"], 16)
        self.assertEqual(r["conns"], 4)
        # 500 sequential puts over a key space of 50: every key written, 10 versions each.
        _, out, _ = etcdctl(self.endpoints, "get", "", "--from-key", "-w", "json")
        kvs = [kv for kv in json.loads(out).get("kvs", []) if kv["version"] == 10]
        self.assertEqual(len(kvs), 50)

    @time_limit(60)
    def test_range_both_consistencies_and_txn_put(self):
        etcdctl(self.endpoints, "put", "bench-range", "v")
        for consistency in ("l", "s"):
            r = bench_json(self.endpoints, "--clients", "8", "--total", "300", "range",
                           "bench-range", "--consistency", consistency)
            self.check_report(r, "range", 300)
        r = bench_json(self.endpoints, "--clients", "4", "--total", "100", "txn-put",
                       "--txn-ops", "4", "--key-space-size", "1000")
        self.check_report(r, "txn-put", 100)

    @time_limit(60)
    def test_watch_delivers_every_put_to_every_watcher(self):
        r = bench_json(self.endpoints, "--clients", "2", "watch", "--watchers", "40",
                       "--streams", "4", "--puts", "50")
        self.assertEqual(r["errors"], 0, r.get("error_samples"))
        self.assertEqual(r["events"], 40 * 50)
        self.assertGreater(r["events_per_s"], 0)
        self.assertLessEqual(LATENCY_KEYS, set(r["event_latency_ms"]))
        # The watched prefix is removed at the end.
        self.assertEqual(count_keys(self.endpoints, "/keel-bench/watch/", "--prefix"), 0)

    @time_limit(60)
    def test_lease_keepalive_revokes_its_leases(self):
        r = bench_json(self.endpoints, "--clients", "8", "--total", "400", "lease-keepalive",
                       "--leases", "8")
        self.check_report(r, "lease-keepalive", 400)
        _, out, _ = etcdctl(self.endpoints, "lease", "list")
        self.assertIn("found 0 leases", out)

    @time_limit(60)
    def test_load_puts_every_key(self):
        r = bench_json(self.endpoints, "--clients", "2", "--total", "1000", "load",
                       "--key-size", "16", "--val-size", "32", "--txn-ops", "100")
        self.assertEqual(r["errors"], 0, r.get("error_samples"))
        self.assertGreaterEqual(count_keys(self.endpoints, "", "--from-key"), 1000)

    @time_limit(30)
    def test_text_report(self):
        rc, out, err = bench(self.endpoints, "--total", "50", "put")
        self.assertEqual(rc, 0, err)
        for word in ("Summary:", "Requests/sec:", "Response time histogram",
                     "Latency distribution:", "99.9%"):
            self.assertIn(word, out)

    @time_limit(30)
    def test_bad_usage_exits_2_without_sending_anything(self):
        for args in (["--clients", "0", "put"], ["--total", "x", "put"], ["frobnicate"],
                     ["range"], ["range", "k", "--consistency", "q"], ["--timeout", "soon", "put"]):
            rc, out, err = bench(self.endpoints, *args)
            self.assertEqual(rc, 2, (args, out, err))
            self.assertTrue(err.strip(), args)

    @time_limit(30)
    def test_an_unreachable_server_fails_promptly_with_exit_1(self):
        began = time.time()
        rc, out, err = bench(["127.0.0.1:1"], "--dial-timeout", "1s", "--total", "10", "put")
        self.assertEqual(rc, 1, (out, err))
        self.assertIn("127.0.0.1:1", out + err)
        self.assertLess(time.time() - began, 10)


@unittest.skipIf(KIND != "keel", "the side-by-side driver starts both systems itself")
class SideBySide(unittest.TestCase):
    @time_limit(240)
    def test_scripts_bench_driver_runs_end_to_end_and_writes_its_report(self):
        out_dir = tempfile.mkdtemp(prefix="keel-bench-report-")
        self.addCleanup(subprocess.run, ["rm", "-rf", out_dir])
        p = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_side_by_side.py"),
                            "--rounds", "1", "--scale", "0.01", "--members", "1",
                            "--memory-keys", "2000", "--out", out_dir],
                           capture_output=True, text=True, timeout=230)
        self.assertEqual(p.returncode, 0, p.stderr[-3000:])
        with open(os.path.join(out_dir, "bench.json")) as f:
            report = json.load(f)
        self.assertEqual(len(report["points"]), 8)  # the 1-member points
        for point in report["points"]:
            for kind in ("keel", "etcd"):
                self.assertEqual(len(point["runs"][kind]), 1)
                self.assertEqual(point["runs"][kind][0]["errors"], 0, point["point"]["name"])
        self.assertGreater(report["memory"]["keel"]["rss_after"], 0)
        self.assertGreater(report["memory"]["etcd"]["rss_after"], 0)
        with open(os.path.join(out_dir, "bench.md")) as f:
            md = f.read()
        self.assertIn("| 1 | put, 64 clients |", md)
        self.assertIn("Scaled run", md)
        with open(os.path.join(out_dir, "bench.png"), "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


if __name__ == "__main__":
    unittest.main()
