#!/usr/bin/python3
"""keeld under failure and at its edges, end to end: a leader killed (SIGKILL) in the
middle of a write loop, a member stopped (SIGTERM) under a watch and writes, the
start-up checks (flags, data dir, identity), and /health and /metrics.

Expectations are etcd 3.4's unless a test says otherwise. Run with Debian's Python:

    KEELD=build-dev/net/keeld /usr/bin/python3 -m unittest tests/e2e/test_failover.py
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keel_cluster as kc  # noqa: E402

try:
    import etcd3
except ImportError:  # python3-etcd3 missing: the tests that need it skip, saying so
    etcd3 = None

SERVER = kc.KIND  # KEEL_E2E_KIND=etcd: against etcd 3.4 (keel_cluster.py)
PUT_TIMEOUT_S = 2  # one put of the write loop; a timed-out put is not acknowledged


kc.quiet_etcd3_watch_thread_exits()


def connect(member, timeout=PUT_TIMEOUT_S):
    host, port = member.endpoint.rsplit(":", 1)
    return etcd3.client(host=host, port=int(port), timeout=timeout)


def with_flag(command, flag, value):
    """`command` (a member's argv) with `flag` set to `value`: replaced if present."""
    out = list(command)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return out


def serializable_get(member, key):
    """The value of `key` as `member` alone has it applied, or None (etcdctl, --consistency=s)."""
    rc, out, _ = kc.etcdctl([member.endpoint], "get", "--consistency=s", "--print-value-only",
                            key, check=False, timeout=10)
    return out.rstrip("\n") if rc == 0 and out else None


def log_tail(member, lines=40):
    return "\n".join(member.log().splitlines()[-lines:])


class WriteLoop:
    """Puts k0000, k0001, ... (value v0000, ...) as fast as it can through etcd3 clients
    on several members, moving to the next member when a put fails or times out and
    retrying the same key there, so a key is never skipped. Records each put that was
    acknowledged, with the time of its acknowledgement."""

    def __init__(self, members, first=None):
        self.clients = [connect(m) for m in members]
        self.names = [m.name for m in members]
        self.current = members.index(first) if first is not None else 0
        self.acked = {}       # key -> value
        self.acked_at = []    # (monotonic time, key), in order
        self.errors = []      # (monotonic time, member name, error text)
        self.stop_requested = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        i = 0
        while not self.stop_requested.is_set():
            key, value = "k%04d" % i, "v%04d" % i
            try:
                self.clients[self.current].put(key, value)
            except Exception as e:  # not acknowledged: try the next member
                self.errors.append((time.monotonic(), self.names[self.current],
                                    "%s: %s" % (type(e).__name__, e)))
                self.current = (self.current + 1) % len(self.clients)
                time.sleep(0.02)
                continue
            self.acked[key] = value
            self.acked_at.append((time.monotonic(), key))
            i += 1

    def acks_since(self, t):
        return [k for at, k in self.acked_at if at > t]

    def stop(self):
        self.stop_requested.set()
        self.thread.join(PUT_TIMEOUT_S + 5)
        for c in self.clients:
            c.close()
        if self.thread.is_alive():
            raise AssertionError("the write loop did not stop")


class EventCollector:
    """Drains an etcd3 watch's events iterator on a thread; the test reads with deadlines."""

    def __init__(self, iterator):
        self.events = []
        self.error = None
        self._lock = threading.Lock()
        threading.Thread(target=self._drain, args=(iterator,), daemon=True).start()

    def _drain(self, iterator):
        try:
            for event in iterator:
                with self._lock:
                    self.events.append(event)
        except Exception as e:  # the test reports it
            self.error = e

    def until(self, predicate, timeout):
        """The events up to the first one for which predicate(event) holds."""
        def find():
            with self._lock:
                for i, e in enumerate(self.events):
                    if predicate(e):
                        return self.events[:i + 1]
            return None
        try:
            return kc.wait_for(find, timeout, what="the awaited watch event")
        except AssertionError:
            raise AssertionError("the watch did not deliver the awaited event in %ss; %d events, "
                                 "last %r, error %r" % (timeout, len(self.events),
                                                        self.events[-1:] and
                                                        self.events[-1].key, self.error))


def keys_on(member):
    """{key: value} of every k* key, read linearizably through `member`."""
    client = connect(member, timeout=10)
    try:
        return {m.key.decode(): v.decode() for v, m in client.get_prefix("k")}
    finally:
        client.close()


class LeaderKilledDuringWrites(unittest.TestCase):

    def setUp(self):
        if etcd3 is None:
            self.skipTest("python3-etcd3 is not installed (apt-get install python3-etcd3)")

    @kc.time_limit(90)
    def test_acknowledged_writes_survive_a_leader_sigkill_and_it_catches_up_after_restart(self):
        cluster = kc.start_cluster(3, kind=SERVER)
        self.addCleanup(cluster.cleanup)
        leader = kc.wait_for_leader(cluster)
        survivors = [m for m in cluster.members if m is not leader]

        # A watch on a survivor from revision 1 sees the whole loop, across the election.
        watcher = connect(survivors[0], timeout=10)
        self.addCleanup(watcher.close)
        events, cancel_watch = watcher.watch_prefix("k", start_revision=1)
        self.addCleanup(cancel_watch)
        watched = EventCollector(events)

        # The loop starts on the leader, so the kill cuts its own connection.
        loop = WriteLoop(cluster.members, first=leader).start()
        self.addCleanup(lambda: loop.stop_requested.set())
        time.sleep(2)
        acked_before_kill = len(loop.acked)
        self.assertGreater(acked_before_kill, 0, "no write acknowledged in 2 s: %r"
                           % loop.errors[-5:])
        killed_at = time.monotonic()
        cluster.kill(leader)  # SIGKILL

        # Writes go on through another member once a new leader is elected.
        try:
            kc.wait_for(lambda: len(loop.acks_since(killed_at)) >= 20, 10, interval=0.05,
                        what="20 acknowledged writes after the kill")
        finally:
            loop.stop()
        first_after = min(at for at, _ in loop.acked_at if at > killed_at)
        sys.stderr.write("\n  [leader kill] %d writes acked before the kill, %d after; first "
                         "ack %.2f s after the kill; %d failed puts\n"
                         % (acked_before_kill, len(loop.acks_since(killed_at)),
                            first_after - killed_at, len(loop.errors)))
        new_leader = kc.wait_for_leader(cluster, timeout=10)
        self.assertIn(new_leader, survivors)

        # Every acknowledged write is on both survivors (linearizable reads), and nothing
        # else is: the loop moves to key i+1 only after key i was acknowledged, so the
        # only other key that may exist is the one in flight when it stopped.
        in_flight = "k%04d" % len(loop.acked)
        for m in survivors:
            have = keys_on(m)
            missing = sorted(k for k in loop.acked if have.get(k) != loop.acked[k])
            self.assertEqual(missing, [], "%s lacks acknowledged writes (first 10: %s)\n%s"
                             % (m.name, missing[:10], log_tail(m)))
            extra = sorted(set(have) - set(loop.acked) - {in_flight})
            self.assertEqual(extra, [], "%s has keys never written: %s" % (m.name, extra[:10]))

        # The watch saw every acknowledged write once, in order, with rising revisions. A
        # put retried after a failure may have committed twice: the same key, repeated.
        seen = watched.until(lambda e: e.key.decode() == "k%04d" % (len(loop.acked) - 1), 10)
        keys = [e.key.decode() for e in seen]
        deduplicated = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
        self.assertEqual(deduplicated, sorted(loop.acked), "the watch on %s skipped or "
                         "reordered writes" % survivors[0].name)
        revisions = [e.mod_revision for e in seen]
        self.assertEqual(revisions, sorted(set(revisions)))

        # The killed member restarts on its data dir and catches up with the others.
        cluster.start_member(leader)
        last_key = "k%04d" % (len(loop.acked) - 1)
        kc.wait_for(lambda: serializable_get(leader, last_key) == loop.acked[last_key], 20,
                    interval=0.2, what="the restarted member has the last acknowledged write")
        self.assertTrue(leader.running(), log_tail(leader))
        rc, out, _ = kc.etcdctl([leader.endpoint], "get", "--consistency=s", "--prefix", "k",
                                "--keys-only", check=False)
        self.assertEqual(rc, 0)
        restarted_keys = set(out.split())
        self.assertEqual(sorted(set(loop.acked) - restarted_keys), [],
                         "the restarted member lacks acknowledged writes")
        kc.etcdctl(cluster.endpoints, "endpoint", "health")  # all three healthy


class GracefulStop(unittest.TestCase):

    def setUp(self):
        if etcd3 is None:
            self.skipTest("python3-etcd3 is not installed (apt-get install python3-etcd3)")

    @kc.time_limit(60)
    def test_sigterm_ends_the_watch_stream_exits_zero_and_the_others_keep_serving(self):
        cluster = kc.start_cluster(3, kind=SERVER)
        self.addCleanup(cluster.cleanup)
        target = kc.wait_for_leader(cluster)  # the hardest member to lose
        others = [m for m in cluster.members if m is not target]

        # --debug makes etcdctl print its gRPC connection's life on stderr: a watch whose
        # server goes away retries quietly otherwise (etcd 3.4 as keel).
        # From revision 1, so the watch misses no write made before it is attached.
        watch = kc.EtcdctlStream([target.endpoint], "--debug", "watch", "--rev=1", "--prefix",
                                 "k")
        self.addCleanup(watch.stop)
        loop = WriteLoop([target]).start()  # against the member being stopped only
        self.addCleanup(lambda: loop.stop_requested.set())
        # The watch prints each event as three lines: PUT, key, value.
        self.assertEqual(watch.read_lines(12, 10),
                         ["PUT", "k0000", "v0000", "PUT", "k0001", "v0001",
                          "PUT", "k0002", "v0002", "PUT", "k0003", "v0003"])
        kc.wait_for(lambda: len(loop.acked) >= 10, 10, what="10 acknowledged writes")

        stderr_before = len(watch.stderr())
        stopped_at = time.monotonic()
        target.proc.send_signal(signal.SIGTERM)
        try:
            rc = target.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.fail("%s still running 5 s after SIGTERM:\n%s" % (target.name, log_tail(target)))
        stop_s = time.monotonic() - stopped_at
        loop.stop()
        sys.stderr.write("\n  [graceful stop] %s exited %s in %.2f s\n" % (target.name, rc, stop_s))
        if SERVER == "keel":  # etcd 3.4 re-raises the signal: it ends "killed by SIGTERM"
            self.assertEqual(rc, 0, log_tail(target))

        # The watch's stream ended: etcdctl exited, or logged its connection closing.
        def stream_ended():
            after = watch.stderr()[stderr_before:]
            return not watch.running() or re.search(
                r"transport is closing|connection refused|Error while dialing|rpc error", after)
        kc.wait_for(stream_ended, 5, what="the watch seeing its stream end")

        # Every write the stopped member acknowledged is on the other two, which go on.
        kc.wait_for_leader(cluster, timeout=10)
        for m in others:
            have = keys_on(m)
            missing = sorted(k for k in loop.acked if have.get(k) != loop.acked[k])
            self.assertEqual(missing, [], "%s lacks writes acknowledged before the stop: %s"
                             % (m.name, missing[:10]))
        kc.etcdctl([m.endpoint for m in others], "put", "after-stop", "ok")
        for m in others:
            _, out, _ = kc.etcdctl([m.endpoint], "get", "--print-value-only", "after-stop")
            self.assertEqual(out.strip(), "ok")


class LeaderStop(unittest.TestCase):

    @kc.time_limit(40)
    def test_sigterm_of_the_leader_hands_leadership_over_before_it_exits(self):
        # etcd 3.4's EtcdServer.Stop transfers leadership to the most caught-up follower
        # before stopping, so the others take writes at once, not after an election
        # timeout (1 s here) spent noticing the leader is gone.
        cluster = kc.start_cluster(3, kind=SERVER)
        self.addCleanup(cluster.cleanup)
        leader = kc.wait_for_leader(cluster)
        others = [m for m in cluster.members if m is not leader]
        kc.etcdctl(cluster.endpoints, "put", "before", "1")
        stopped_at = time.monotonic()
        leader.proc.send_signal(signal.SIGTERM)
        leader.proc.wait(timeout=10)

        def put_succeeds():
            rc, _, _ = kc.etcdctl([m.endpoint for m in others], "--command-timeout=300ms",
                                  "put", "after", "2", check=False, timeout=5)
            return rc == 0
        kc.wait_for(put_succeeds, 10, interval=0.01, what="a write through the others")
        resumed_s = time.monotonic() - stopped_at
        sys.stderr.write("\n  [leader stop] writes resumed %.2f s after SIGTERM\n" % resumed_s)
        self.assertLess(resumed_s, 1.0, "no leadership hand-over: the others waited for an "
                        "election (%s's log tail:\n%s)" % (leader.name, log_tail(leader, 15)))


class HealthWithoutQuorum(unittest.TestCase):

    @kc.time_limit(40)
    def test_health_is_false_on_a_member_that_cannot_reach_a_quorum(self):
        # etcd 3.4's /health serves a read through Raft (1 s timeout): a member cut off
        # from its quorum answers {"health":"false"} (503) from the first query on.
        cluster = kc.start_cluster(3, kind=SERVER)
        self.addCleanup(cluster.cleanup)
        leader = kc.wait_for_leader(cluster)
        alone = leader  # a leader keeps believing in itself longest
        for m in cluster.members:
            if m is not alone:
                cluster.kill(m)
        status, body = kc.http_get(kc.metrics_url(alone) + "/health")
        self.assertEqual((status, body.strip()), (503, '{"health":"false"}'),
                         "the first /health after the quorum was lost")
        time.sleep(2.5)  # well past the election timeout: no leader anywhere now
        status, body = kc.http_get(kc.metrics_url(alone) + "/health")
        self.assertEqual((status, body.strip()), (503, '{"health":"false"}'))
        _, metrics = kc.http_get(kc.metrics_url(alone) + "/metrics")
        self.assertIn("\netcd_server_has_leader 0\n", metrics)


def run_keeld(command, timeout=10):
    """Runs a keeld that is expected to refuse to start: (returncode, stderr)."""
    p = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return p.returncode, p.stderr


@unittest.skipIf(SERVER != "keel", "keeld's start-up checks and messages")
class StartUp(unittest.TestCase):

    def fresh_cluster(self, n=1, **kwargs):
        cluster = kc.Cluster(n, **kwargs)
        self.addCleanup(cluster.cleanup)
        return cluster

    @kc.time_limit(30)
    def test_a_fresh_member_answers_a_get_within_a_second_of_starting(self):
        cluster = self.fresh_cluster()
        m = cluster.members[0]
        started = time.monotonic()
        cluster.start_member(m)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", m.client_port), timeout=0.2).close()
                return True
            except OSError:
                self.assertTrue(m.running(), log_tail(m))
                return False
        kc.wait_for(listening, 5, interval=0.01, what="the client port open")

        def answers():
            rc, _, _ = kc.etcdctl([m.endpoint], "--dial-timeout=500ms", "get", "probe",
                                  check=False, timeout=5)
            return rc == 0
        kc.wait_for(answers, 5, interval=0.01, what="a successful etcdctl get")
        elapsed = time.monotonic() - started
        sys.stderr.write("\n  [start-up] first answer %.3f s after Popen\n" % elapsed)
        self.assertLess(elapsed, 1.0, log_tail(m))

    @kc.time_limit(30)
    def test_a_bad_flag_exits_nonzero_with_a_message_naming_the_flag(self):
        cluster = self.fresh_cluster()
        m = cluster.members[0]
        base = cluster.command(m)
        cases = [
            ("--heartbeat-interval", "abc"),
            ("--initial-cluster-state", "bogus"),
            ("--listen-client-urls", "https://127.0.0.1:%d" % m.client_port),
            ("--election-timeout", "50"),  # less than 5 heartbeats
            ("--listen-peer-urls", "http://127.0.0.1"),  # no port
        ]
        for flag, value in cases:
            with self.subTest(flag=flag, value=value):
                rc, err = run_keeld(with_flag(base, flag, value))
                self.assertNotEqual(rc, 0, err)
                self.assertIn(flag, err)
                self.assertFalse(os.path.exists(m.data_dir),
                                 "a refused start created the data dir")
        with self.subTest(flag="--no-such-flag"):
            rc, err = run_keeld(base + ["--no-such-flag=1"])
            self.assertNotEqual(rc, 0)
            self.assertIn("--no-such-flag", err)

    @kc.time_limit(30)
    def test_a_data_dir_that_is_a_regular_file_is_refused(self):
        cluster = self.fresh_cluster()
        m = cluster.members[0]
        with open(m.data_dir, "w") as f:
            f.write("not a directory\n")
        rc, err = run_keeld(cluster.command(m))
        self.assertNotEqual(rc, 0, err)
        self.assertIn("--data-dir", err)
        self.assertIn(m.data_dir, err)
        with open(m.data_dir) as f:
            self.assertEqual(f.read(), "not a directory\n")

    @kc.time_limit(40)
    def test_a_data_dir_in_use_by_a_running_member_is_refused_and_that_member_is_unharmed(self):
        cluster = self.fresh_cluster()
        cluster.start()
        m = cluster.members[0]
        kc.etcdctl([m.endpoint], "put", "before", "1")
        with open(os.path.join(m.data_dir, "member.id")) as f:
            identity = f.read()

        # A second keeld on the same data dir, with ports of its own.
        client, peer, metrics = kc.free_ports(3)
        second = cluster.command(m)
        for flag, url in [("--listen-client-urls", "http://127.0.0.1:%d" % client),
                          ("--advertise-client-urls", "http://127.0.0.1:%d" % client),
                          ("--listen-peer-urls", "http://127.0.0.1:%d" % peer),
                          ("--initial-advertise-peer-urls", "http://127.0.0.1:%d" % peer),
                          ("--initial-cluster", "%s=http://127.0.0.1:%d" % (m.name, peer)),
                          ("--listen-metrics-urls", "http://127.0.0.1:%d" % metrics)]:
            second = with_flag(second, flag, url)
        rc, err = run_keeld(second)
        self.assertNotEqual(rc, 0, err)
        self.assertIn(m.data_dir, err)
        self.assertRegex(err, r"in use|lock")

        self.assertTrue(m.running(), log_tail(m))
        kc.etcdctl([m.endpoint], "put", "after", "2")
        _, out, _ = kc.etcdctl([m.endpoint], "get", "--prefix", "", "--print-value-only")
        self.assertEqual(out.split(), ["2", "1"])  # after, before
        with open(os.path.join(m.data_dir, "member.id")) as f:
            self.assertEqual(f.read(), identity)
        # And its data survives its own restart.
        self.assertEqual(cluster.stop_member(m), 0, log_tail(m))
        cluster.start_member(m)
        cluster.wait_ready(15, members=[m])
        _, out, _ = kc.etcdctl([m.endpoint], "get", "--prefix", "", "--print-value-only")
        self.assertEqual(out.split(), ["2", "1"])

    @kc.time_limit(40)
    def test_a_restart_with_another_cluster_token_is_refused(self):
        # keel's rule, stricter than etcd 3.4 (which ignores --initial-cluster-token once
        # its data dir has a member): the data dir's identity must match the flags.
        cluster = self.fresh_cluster()
        cluster.start()
        m = cluster.members[0]
        kc.etcdctl([m.endpoint], "put", "kept", "yes")
        self.assertEqual(cluster.stop_member(m), 0, log_tail(m))

        cluster.token = "another-token"
        rc, err = run_keeld(cluster.command(m))
        self.assertNotEqual(rc, 0, err)
        self.assertIn("--initial-cluster-token", err)
        self.assertIn(m.data_dir, err)

        cluster.token = "keel-e2e"
        cluster.start_member(m)
        cluster.wait_ready(15, members=[m])
        _, out, _ = kc.etcdctl([m.endpoint], "get", "--print-value-only", "kept")
        self.assertEqual(out.strip(), "yes")


class HealthAndMetrics(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.cluster = kc.start_cluster(3, kind=SERVER)
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.leader = kc.wait_for_leader(cls.cluster)

    def metrics(self, member):
        status, body = kc.http_get(kc.metrics_url(member) + "/metrics")
        self.assertEqual(status, 200)
        return body

    @staticmethod
    def samples(body, name):
        """[(labels dict, value)] of the samples of metric `name` (exact name)."""
        out = []
        for line in body.splitlines():
            match = re.match(r"^%s(\{(.*)\})? (\S+)$" % re.escape(name), line)
            if match:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
                out.append((labels, float(match.group(3))))
        return out

    @kc.time_limit(30)
    def test_health_is_true_on_every_member_while_there_is_a_leader(self):
        for m in self.cluster.members:
            status, body = kc.http_get(kc.metrics_url(m) + "/health")
            self.assertEqual(status, 200, body)
            self.assertEqual(json.loads(body), {"health": "true"})

    @kc.time_limit(30)
    def test_metrics_report_leadership_grpc_calls_and_fsync_latency(self):
        kc.etcdctl(self.cluster.endpoints, "put", "metrics-probe", "x")
        for m in self.cluster.members:
            kc.etcdctl([m.endpoint], "get", "metrics-probe")
            with self.subTest(member=m.name):
                body = self.metrics(m)
                self.assertEqual(self.samples(body, "etcd_server_has_leader"), [({}, 1.0)])
                is_leader = 1.0 if m is self.leader else 0.0
                self.assertEqual(self.samples(body, "etcd_server_is_leader"), [({}, is_leader)])
                changes = self.samples(body, "etcd_server_leader_changes_seen_total")
                self.assertEqual(len(changes), 1, body[:3000])
                self.assertGreaterEqual(changes[0][1], 1)
                self.assertIn("# TYPE etcd_server_leader_changes_seen_total counter", body)

                handled = self.samples(body, "grpc_server_handled_total")
                ranges_ok = [v for labels, v in handled
                             if labels.get("grpc_service") == "etcdserverpb.KV"
                             and labels.get("grpc_method") == "Range"
                             and labels.get("grpc_type") == "unary"
                             and labels.get("grpc_code") == "OK"]
                self.assertEqual(len(ranges_ok), 1, [l for l, _ in handled])
                self.assertGreaterEqual(ranges_ok[0], 1)

                buckets = self.samples(body, "etcd_disk_wal_fsync_duration_seconds_bucket")
                self.assertGreater(len(buckets), 1)
                counts = [v for _, v in buckets]
                self.assertEqual(counts, sorted(counts), "buckets are cumulative")
                self.assertEqual(buckets[-1][0].get("le"), "+Inf")
                self.assertGreaterEqual(buckets[-1][1], 1, "no fsync observed")
                count = self.samples(body, "etcd_disk_wal_fsync_duration_seconds_count")
                self.assertEqual(count, [({}, buckets[-1][1])])
                fsync_sum = self.samples(body, "etcd_disk_wal_fsync_duration_seconds_sum")
                self.assertEqual(len(fsync_sum), 1)

    @kc.time_limit(30)
    def test_unknown_paths_are_404(self):
        status, _ = kc.http_get(kc.metrics_url(self.leader) + "/no-such-page")
        self.assertEqual(status, 404)


if __name__ == "__main__":
    unittest.main()
