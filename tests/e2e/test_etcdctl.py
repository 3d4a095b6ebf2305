"""etcdctl 3.4 (Debian's) against keeld: a 1-member cluster, and 3-member clusters driven
through the leader and through a follower.

Where etcd 3.4 fixes the output of a command, the expected text below is exactly what
etcd 3.4.23 prints for it (checked against Debian's etcd with the same commands); where it
carries ids, sizes or times, the test checks the shape and the relations that must hold.

Each TestCase class starts one cluster in setUpClass and removes it in tearDownClass; each
test works under its own key prefix (/<test name>/), so tests do not see each other's keys.
Revisions are asserted relative to the revisions a test's own writes return.

Run: KEELD=$PWD/build-dev/net/keeld python3 -m unittest -v tests/e2e/test_etcdctl.py
"""

import base64
import json
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keel_cluster as kc  # noqa: E402
from keel_cluster import time_limit  # noqa: E402

KIND = kc.KIND  # KEEL_E2E_KIND=etcd: against etcd 3.4 (keel_cluster.py)
TEST_TIME_S_MAX = 30
CLUSTER_START_TIME_S_MAX = 60
# etcd's minimum lease TTL with the default 100 ms heartbeat and 1000 ms election timeout
# is 2 s (3/2 of an election timeout, rounded up): the shortest lease etcd would grant.
SHORT_LEASE_TTL_S = 2
LONG_LEASE_TTL_S = 60
COMPACTED = "Error: etcdserver: mvcc: required revision has been compacted"
FUTURE_REVISION = "Error: etcdserver: mvcc: required revision is a future revision"


def b64(text):
    return base64.b64encode(text.encode()).decode()


def kv_lines(*pairs):
    """What `etcdctl get` prints for these (key, value) pairs."""
    return "".join("%s\n%s\n" % (k, v) for k, v in pairs)


class EtcdctlBehaviour:
    """The tests every cluster shape runs. A subclass sets member_count and role: which
    member every command of a test goes to ("leader" or "follower")."""

    member_count = 1
    role = "leader"

    @classmethod
    @time_limit(CLUSTER_START_TIME_S_MAX)
    def setUpClass(cls):
        cls.cluster = kc.start_cluster(cls.member_count, kind=KIND)
        try:
            cls.leader = kc.wait_for_leader(cls.cluster)
            if cls.role == "leader":
                cls.target = cls.leader
            else:
                cls.target = next(m for m in cls.cluster.members if m is not cls.leader)
            cls.member_ids = {}
            for m in cls.cluster.members:
                status = kc.etcdctl_json([m.endpoint], "endpoint", "status")[0]["Status"]
                cls.member_ids[m.name] = status["header"]["member_id"]
        except BaseException:
            cls.cluster.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.cluster.cleanup()

    # --- helpers -------------------------------------------------------------------

    def setUp(self):
        self.prefix = "/%s/" % self._testMethodName
        self.ep = [self.target.endpoint]

    def key(self, name):
        return self.prefix + name

    def ctl(self, *args, stdin=None):
        """stdout of a successful etcdctl run against the target member."""
        return kc.etcdctl(self.ep, *args, stdin=stdin)[1]

    def ctl_json(self, *args, stdin=None):
        return json.loads(kc.etcdctl(self.ep, *args, "-w", "json", stdin=stdin)[1])

    def ctl_error(self, *args):
        """The last stderr line of an etcdctl run that must fail (etcdctl's "Error: ...")."""
        rc, out, err = kc.etcdctl(self.ep, *args, check=False)
        self.assertNotEqual(rc, 0, "etcdctl %s succeeded: %r" % (" ".join(args), out))
        return err.strip().splitlines()[-1] if err.strip() else ""

    def put(self, key, value, *flags):
        """Puts and returns the revision of the write."""
        return self.ctl_json("put", key, value, *flags)["header"]["revision"]

    def stream(self, *args):
        s = kc.EtcdctlStream(self.ep, *args)
        self.addCleanup(s.stop)
        return s

    def grant(self, ttl_s):
        out = self.ctl("lease", "grant", str(ttl_s))
        m = re.fullmatch(r"lease ([0-9a-f]{16}) granted with TTL\(%ds\)\n" % ttl_s, out)
        self.assertIsNotNone(m, out)
        return m.group(1)

    def wait_until(self, predicate, timeout_s, what):
        deadline = time.time() + timeout_s
        while not predicate():
            if time.time() > deadline:
                self.fail("%s: not within %ss" % (what, timeout_s))
            time.sleep(0.1)

    # --- put / get -----------------------------------------------------------------

    @time_limit(TEST_TIME_S_MAX)
    def test_put_prints_ok_and_get_prints_the_key_then_the_value(self):
        k = self.key("k")
        self.assertEqual(self.ctl("put", k, "v1"), "OK\n")
        self.assertEqual(self.ctl("get", k), kv_lines((k, "v1")))
        self.assertEqual(self.ctl("get", k, "--print-value-only"), "v1\n")
        self.assertEqual(self.ctl("get", k, "--keys-only"), k + "\n\n")
        self.assertEqual(self.ctl("get", self.key("missing")), "")
        self.assertEqual(self.ctl("put", k, "v2", "--prev-kv"), "OK\n" + kv_lines((k, "v1")))
        self.assertEqual(self.ctl("put", k, "two words"), "OK\n")
        self.assertEqual(self.ctl("get", k), kv_lines((k, "two words")))

    @time_limit(TEST_TIME_S_MAX)
    def test_get_prefix_limit_and_keys_only(self):
        a, b, c = self.key("a"), self.key("b"), self.key("c")
        for k, v in ((b, "2"), (a, "1"), (c, "3")):
            self.put(k, v)
        self.put(self.prefix[:-1] + "0", "outside")  # sorts right after the prefix's keys
        self.assertEqual(self.ctl("get", self.prefix, "--prefix"),
                         kv_lines((a, "1"), (b, "2"), (c, "3")))
        self.assertEqual(self.ctl("get", self.prefix, "--prefix", "--keys-only"),
                         "%s\n\n%s\n\n%s\n\n" % (a, b, c))
        self.assertEqual(self.ctl("get", self.prefix, "--prefix", "--print-value-only"),
                         "1\n2\n3\n")
        self.assertEqual(self.ctl("get", self.prefix, "--prefix", "--limit", "2"),
                         kv_lines((a, "1"), (b, "2")))
        self.assertEqual(self.ctl("get", a, c), kv_lines((a, "1"), (b, "2")))  # [a, c)
        limited = self.ctl_json("get", self.prefix, "--prefix", "--limit", "2")
        self.assertEqual(limited["count"], 3)
        self.assertIs(limited["more"], True)
        self.assertEqual([kv["key"] for kv in limited["kvs"]], [b64(a), b64(b)])
        whole = self.ctl_json("get", self.prefix, "--prefix")
        self.assertEqual(whole["count"], 3)
        self.assertNotIn("more", whole)  # etcd's JSON leaves out false

    @time_limit(TEST_TIME_S_MAX)
    def test_get_json_reports_the_header_revision_and_each_kv_revision_and_version(self):
        k = self.key("k")
        created = self.put(k, "v1")
        modified = self.put(k, "v2")
        got = self.ctl_json("get", k)
        self.assertEqual(set(got["header"]), {"cluster_id", "member_id", "revision", "raft_term"})
        self.assertEqual(got["header"]["revision"], modified)
        self.assertEqual(got["header"]["member_id"], self.member_ids[self.target.name])
        self.assertEqual(got["kvs"], [{"key": b64(k), "create_revision": created,
                                       "mod_revision": modified, "version": 2,
                                       "value": b64("v2")}])
        self.assertEqual(got["count"], 1)
        self.assertNotIn("more", got)
        missing = self.ctl_json("get", self.key("missing"))
        self.assertNotIn("kvs", missing)
        self.assertNotIn("count", missing)  # 0: left out

    @time_limit(TEST_TIME_S_MAX)
    def test_get_rev_reads_the_key_as_it_was_at_that_revision(self):
        k = self.key("k")
        r1 = self.put(k, "v1")
        r2 = self.put(k, "v2")
        r3 = self.put(self.key("other"), "x")
        self.assertEqual(self.ctl("get", k, "--rev", str(r1)), kv_lines((k, "v1")))
        self.assertEqual(self.ctl("get", k, "--rev", str(r2)), kv_lines((k, "v2")))
        self.assertEqual(self.ctl("get", k, "--rev", str(r1 - 1)), "")
        old = self.ctl_json("get", k, "--rev", str(r1))
        self.assertEqual(old["header"]["revision"], r3)  # the store's revision, not --rev
        self.assertEqual(old["kvs"], [{"key": b64(k), "create_revision": r1, "mod_revision": r1,
                                       "version": 1, "value": b64("v1")}])
        self.assertEqual(self.ctl_error("get", k, "--rev", str(r3 + 1000)), FUTURE_REVISION)

    @time_limit(TEST_TIME_S_MAX)
    def test_get_sort_by_each_field_in_both_orders(self):
        a, b, c = self.key("a"), self.key("b"), self.key("c")
        # No ties: created b < a < c; modified c < a < b; version c(1) < b(2) < a(3);
        # value a(v3) < c(v5) < b(v7).
        for k, v in ((b, "v1"), (a, "v0"), (c, "v5"), (a, "v6"), (a, "v3"), (b, "v7")):
            self.put(k, v)
        values = {a: "v3", b: "v7", c: "v5"}
        ascending = {"KEY": [a, b, c], "CREATE": [b, a, c], "MODIFY": [c, a, b],
                     "VERSION": [c, b, a], "VALUE": [a, c, b]}
        for field, keys in ascending.items():
            for order, ordered in (("ASCEND", keys), ("DESCEND", keys[::-1])):
                with self.subTest(sort_by=field, order=order):
                    self.assertEqual(
                        self.ctl("get", self.prefix, "--prefix", "--sort-by", field,
                                 "--order", order),
                        kv_lines(*[(k, values[k]) for k in ordered]))
        # etcd: a sort target other than KEY without an order sorts ascending.
        self.assertEqual(self.ctl("get", self.prefix, "--prefix", "--sort-by", "VALUE"),
                         kv_lines((a, "v3"), (c, "v5"), (b, "v7")))

    # --- del -----------------------------------------------------------------------

    @time_limit(TEST_TIME_S_MAX)
    def test_del_prints_the_count_and_with_prev_kv_the_deleted_pairs(self):
        a, b, c, d = (self.key(x) for x in "abcd")
        for k, v in ((a, "1"), (b, "2"), (c, "3"), (d, "4")):
            self.put(k, v)
        self.assertEqual(self.ctl("del", a), "1\n")
        self.assertEqual(self.ctl("del", a), "0\n")
        self.assertEqual(self.ctl("del", b, "--prev-kv"), "1\n" + kv_lines((b, "2")))
        self.assertEqual(self.ctl("del", self.prefix, "--prefix", "--prev-kv"),
                         "2\n" + kv_lines((c, "3"), (d, "4")))
        self.assertEqual(self.ctl("get", self.prefix, "--prefix"), "")
        self.put(a, "again")
        deleted = self.ctl_json("del", self.prefix, "--prefix", "--prev-kv")
        self.assertEqual(deleted["deleted"], 1)
        self.assertEqual([kv["value"] for kv in deleted["prev_kvs"]], [b64("again")])

    @time_limit(TEST_TIME_S_MAX)
    def test_del_from_key_deletes_that_key_and_every_greater_key(self):
        # Under "~", above every "/<test>/" key, so no other test's keys are in range.
        prefix = "~%s-%s/" % (type(self).__name__, self._testMethodName)
        a, b, c = prefix + "a", prefix + "b", prefix + "c"
        for k in (a, b, c):
            self.put(k, "x")
        self.assertEqual(self.ctl("del", b, "--from-key", "--prev-kv"),
                         "2\n" + kv_lines((b, "x"), (c, "x")))
        self.assertEqual(self.ctl("get", prefix, "--prefix"), kv_lines((a, "x")))
        self.assertEqual(self.ctl("del", a, "--from-key"), "1\n")

    # --- txn -----------------------------------------------------------------------

    def txn_input(self, compares, success, failure):
        return "".join(line + "\n" for line in compares + [""] + success + [""] + failure + [""])

    @time_limit(TEST_TIME_S_MAX)
    def test_txn_takes_the_success_branch_when_every_compare_holds(self):
        k, out, gone = self.key("k"), self.key("out"), self.key("gone")
        created = self.put(k, "v1")
        modified = self.put(k, "v2")
        self.put(gone, "x")
        stdin = self.txn_input(
            ['value("%s") = "v2"' % k, 'version("%s") = "2"' % k,
             'create("%s") = "%d"' % (k, created), 'mod("%s") = "%d"' % (k, modified),
             'mod("%s") < "%d"' % (k, modified + 1), 'version("%s") != "7"' % k,
             'version("%s") = "0"' % self.key("missing")],
            ["put %s yes" % out, "get %s" % k, "del %s" % gone],
            ["put %s no" % out])
        self.assertEqual(self.ctl("txn", stdin=stdin),
                         "SUCCESS\n\nOK\n\n%s\n1\n" % kv_lines((k, "v2")))
        self.assertEqual(self.ctl("get", out, "--print-value-only"), "yes\n")
        self.assertEqual(self.ctl("get", gone), "")

    @time_limit(TEST_TIME_S_MAX)
    def test_txn_takes_the_failure_branch_when_a_compare_fails(self):
        k, out = self.key("k"), self.key("out")
        modified = self.put(k, "v1")
        stdin = self.txn_input(['value("%s") = "v1"' % k, 'mod("%s") > "%d"' % (k, modified)],
                               ["put %s yes" % out],
                               ["put %s no" % out, "get %s" % k])
        self.assertEqual(self.ctl("txn", stdin=stdin), "FAILURE\n\nOK\n\n" + kv_lines((k, "v1")))
        self.assertEqual(self.ctl("get", out, "--print-value-only"), "no\n")
        # A value compare on a missing key is false (etcd: no value to compare).
        stdin = self.txn_input(['value("%s") = ""' % self.key("missing")], [], [])
        self.assertEqual(self.ctl("txn", stdin=stdin), "FAILURE\n")

    @time_limit(TEST_TIME_S_MAX)
    def test_txn_json_reports_succeeded_and_each_response(self):
        k, j = self.key("k"), self.key("j")
        created = self.put(k, "v1")
        stdin = self.txn_input(['create("%s") = "%d"' % (k, created)],
                               ["put %s 1" % j, "get %s" % j], [])
        got = self.ctl_json("txn", stdin=stdin)
        revision = created + 1
        self.assertEqual(got["header"]["revision"], revision)
        self.assertIs(got["succeeded"], True)
        self.assertEqual(got["responses"], [
            {"Response": {"ResponsePut": {"header": {"revision": revision}}}},
            {"Response": {"ResponseRange": {
                "header": {"revision": revision},
                "kvs": [{"key": b64(j), "create_revision": revision, "mod_revision": revision,
                         "version": 1, "value": b64("1")}],
                "count": 1}}}])
        stdin = self.txn_input(['value("%s") = "nope"' % k], [], ["del %s" % j])
        got = self.ctl_json("txn", stdin=stdin)
        self.assertNotIn("succeeded", got)  # false: left out
        self.assertEqual(got["responses"], [
            {"Response": {"ResponseDeleteRange": {"header": {"revision": revision + 1},
                                                  "deleted": 1}}}])

    @time_limit(TEST_TIME_S_MAX)
    def test_txn_interactive_prompts_for_each_part(self):
        k = self.key("k")
        stdin = self.txn_input(['version("%s") = "0"' % k], ["put %s 1" % k], ["put %s 0" % k])
        self.assertEqual(self.ctl("txn", "-i", stdin=stdin),
                         "compares:\nsuccess requests (get, put, del):\n"
                         "failure requests (get, put, del):\nSUCCESS\n\nOK\n")
        self.assertEqual(self.ctl("get", k, "--print-value-only"), "1\n")

    # --- watch ---------------------------------------------------------------------

    def sync_watch(self, watch, key):
        """Puts `key` until the watch reports it: from then on it sees every write."""
        for attempt in range(50):
            value = "sync-%d" % attempt
            self.put(key, value)
            try:
                watch.read_until(lambda line: line == value, timeout=0.5)
                return
            except AssertionError:
                if not watch.running():
                    raise
        self.fail("the watch never reported %s" % key)

    @time_limit(TEST_TIME_S_MAX)
    def test_watch_prefix_prints_each_new_event(self):
        a, b = self.key("a"), self.key("b")
        watch = self.stream("watch", self.prefix, "--prefix")
        self.sync_watch(watch, self.key("sync"))
        self.put(a, "1")
        self.put(b, "2")
        self.ctl("del", a)
        self.put(self.prefix[:-1] + "-outside", "x")
        self.put(b, "3")
        self.assertEqual(watch.read_lines(12, timeout=5),
                         ["PUT", a, "1", "PUT", b, "2", "DELETE", a, "", "PUT", b, "3"])
        self.assertEqual(watch.read_lines(1, timeout=0.3), [])

    @time_limit(TEST_TIME_S_MAX)
    def test_watch_rev_from_the_past_replays_history_then_follows_with_prev_kv(self):
        k = self.key("k")
        first = self.put(k, "a")
        self.put(k, "b")
        self.ctl("del", k)
        watch = self.stream("watch", k, "--rev", str(first), "--prev-kv")
        self.assertEqual(watch.read_lines(13, timeout=5),
                         ["PUT", k, "a",
                          "PUT", k, "a", k, "b",
                          "DELETE", k, "b", k, ""])
        self.put(k, "c")
        self.put(k, "d")
        self.assertEqual(watch.read_lines(8, timeout=5),
                         ["PUT", k, "c", "PUT", k, "c", k, "d"])

    @time_limit(TEST_TIME_S_MAX)
    def test_watch_json_from_the_past_reports_events_with_revisions(self):
        k = self.key("k")
        first = self.put(k, "a")
        second = self.put(k, "b")
        watch = self.stream("watch", k, "--rev", str(first), "-w", "json")
        events = []
        deadline = time.time() + 5
        while len(events) < 2 and time.time() < deadline:
            for line in watch.read_lines(1, timeout=max(0.0, deadline - time.time())):
                response = json.loads(line)
                self.assertIs(response["Canceled"], False)
                events += response["Events"]
        self.assertEqual(events, [
            {"kv": {"key": b64(k), "create_revision": first, "mod_revision": first,
                    "version": 1, "value": b64("a")}},
            {"kv": {"key": b64(k), "create_revision": first, "mod_revision": second,
                    "version": 2, "value": b64("b")}}])

    # --- leases --------------------------------------------------------------------

    @time_limit(TEST_TIME_S_MAX)
    def test_lease_grant_timetolive_list_and_revoke(self):
        k = self.key("k")
        lease = self.grant(LONG_LEASE_TTL_S)
        self.assertEqual(self.ctl("put", k, "v", "--lease=" + lease), "OK\n")
        out = self.ctl("lease", "timetolive", lease, "--keys")
        m = re.fullmatch(r"lease %s granted with TTL\(%ds\), remaining\((\d+)s\), "
                         r"attached keys\(\[%s\]\)\n" % (lease, LONG_LEASE_TTL_S, re.escape(k)),
                         out)
        self.assertIsNotNone(m, out)
        self.assertGreaterEqual(int(m.group(1)), LONG_LEASE_TTL_S - 5)
        self.assertLessEqual(int(m.group(1)), LONG_LEASE_TTL_S)
        self.assertRegex(self.ctl("lease", "timetolive", lease),
                         r"^lease %s granted with TTL\(%ds\), remaining\(\d+s\)\n$"
                         % (lease, LONG_LEASE_TTL_S))
        got = self.ctl_json("lease", "timetolive", lease, "--keys")
        self.assertEqual(got["id"], int(lease, 16))
        self.assertEqual(got["granted-ttl"], LONG_LEASE_TTL_S)
        self.assertTrue(0 < got["ttl"] <= LONG_LEASE_TTL_S, got)
        self.assertEqual(got["keys"], [b64(k)])
        self.assertEqual(self.ctl_json("get", k)["kvs"][0]["lease"], int(lease, 16))
        listed = self.ctl("lease", "list").splitlines()
        self.assertEqual(listed[0], "found %d leases" % (len(listed) - 1))
        self.assertIn(lease, listed[1:])
        self.assertIn({"id": int(lease, 16)}, self.ctl_json("lease", "list")["leases"])
        self.assertEqual(self.ctl("lease", "revoke", lease), "lease %s revoked\n" % lease)
        self.assertEqual(self.ctl("get", k), "")
        self.assertNotIn(lease, self.ctl("lease", "list").splitlines()[1:])
        self.assertEqual(self.ctl_error("lease", "revoke", lease),
                         "Error: failed to revoke lease (etcdserver: requested lease not found)")

    @time_limit(TEST_TIME_S_MAX)
    def test_lease_list_orders_leases_by_expiry_soonest_first(self):
        # etcd 3.4's lessor sorts Leases() by expiry (leasesByExpiry). Five leases whose
        # expiries are 50 s apart: grant order and id order say nothing about it. Asked of
        # the leader only: a follower's lessor holds every lease at "expires never", so
        # etcd's order there is its map's, i.e. random.
        self.ep = [self.leader.endpoint]
        ttls_s = (300, 200, 100, 250, 150)
        leases = [self.grant(ttl_s) for ttl_s in ttls_s]
        for lease in leases:
            self.addCleanup(kc.etcdctl, self.ep, "lease", "revoke", lease, check=False)
        listed = [line for line in self.ctl("lease", "list").splitlines()[1:] if line in leases]
        by_expiry = [lease for _, lease in sorted(zip(ttls_s, leases))]
        self.assertEqual(listed, by_expiry)

    @time_limit(TEST_TIME_S_MAX)
    def test_lease_timetolive_of_a_revoked_lease_says_already_expired(self):
        # etcd answers LeaseTimeToLive for an unknown lease with TTL -1, not an error.
        lease = self.grant(LONG_LEASE_TTL_S)
        self.ctl("lease", "revoke", lease)
        self.assertEqual(self.ctl("lease", "timetolive", lease),
                         "lease %s already expired\n" % lease)
        got = self.ctl_json("lease", "timetolive", lease)
        self.assertEqual((got["id"], got["ttl"], got["granted-ttl"]), (int(lease, 16), -1, 0))

    @time_limit(TEST_TIME_S_MAX)
    def test_lease_keep_alive_holds_the_key_and_the_lease_expires_once_it_stops(self):
        k = self.key("k")
        granted_at = time.time()
        lease = self.grant(SHORT_LEASE_TTL_S)
        self.put(k, "v", "--lease=" + lease)
        keep_alive = self.stream("lease", "keep-alive", lease)
        self.assertEqual(keep_alive.read_lines(1, timeout=SHORT_LEASE_TTL_S),
                         ["lease %s keepalived with TTL(%d)" % (lease, SHORT_LEASE_TTL_S)])
        # Past the TTL with keep-alives flowing, the key is still there.
        while time.time() < granted_at + SHORT_LEASE_TTL_S + 1:
            time.sleep(0.1)
        self.assertTrue(keep_alive.running(), keep_alive.stderr())
        self.assertEqual(self.ctl("get", k), kv_lines((k, "v")))
        self.assertEqual(keep_alive.read_lines(1, timeout=1),
                         ["lease %s keepalived with TTL(%d)" % (lease, SHORT_LEASE_TTL_S)])
        keep_alive.stop()
        # Without them, the lease expires within its TTL (+2 s for the leader's check).
        self.wait_until(lambda: self.ctl("get", k) == "", SHORT_LEASE_TTL_S + 2,
                        "the key of lease %s disappears" % lease)
        self.assertNotIn(lease, self.ctl("lease", "list").splitlines()[1:])

    @time_limit(TEST_TIME_S_MAX)
    def test_lease_keep_alive_once_renews_and_prints_the_ttl(self):
        lease = self.grant(LONG_LEASE_TTL_S)
        self.assertEqual(self.ctl("lease", "keep-alive", "--once", lease),
                         "lease %s keepalived with TTL(%d)\n" % (lease, LONG_LEASE_TTL_S))
        self.ctl("lease", "revoke", lease)

    # --- compaction ----------------------------------------------------------------

    @time_limit(TEST_TIME_S_MAX)
    def test_compaction_makes_older_revisions_unreadable(self):
        k = self.key("k")
        r1 = self.put(k, "v1")
        r2 = self.put(k, "v2")
        self.assertEqual(self.ctl("compaction", str(r2)), "compacted revision %d\n" % r2)
        self.assertEqual(self.ctl_error("get", k, "--rev", str(r1)), COMPACTED)
        self.assertEqual(self.ctl("get", k, "--rev", str(r2)), kv_lines((k, "v2")))
        self.assertEqual(self.ctl_error("compaction", str(r1)), COMPACTED)
        watch = self.stream("watch", k, "--rev", str(r1))
        self.assertEqual(watch.read_lines(1, timeout=5), [])  # EOF: etcdctl exits
        exit_code = watch.proc.wait(timeout=5)
        watch.stop()  # joins the stderr reader
        self.assertEqual(exit_code, 5)
        self.assertEqual(watch.stderr(),
                         "watch was canceled (etcdserver: mvcc: required revision has been "
                         "compacted)\nError: watch is canceled by the server\n")

    @time_limit(TEST_TIME_S_MAX)
    def test_compaction_keeps_the_compacted_revision_itself_readable_and_watchable(self):
        k = self.key("k")
        self.put(k, "v1")
        r2 = self.put(k, "v2")
        self.put(k, "v3")
        self.assertEqual(self.ctl("compaction", str(r2), "--physical"),
                         "compacted revision %d\n" % r2)
        self.assertEqual(self.ctl("get", k, "--rev", str(r2)), kv_lines((k, "v2")))
        watch = self.stream("watch", k, "--rev", str(r2))
        if KIND == "etcd":
            # etcd cancels a watch only when its start revision is BELOW the compacted one.
            self.assertEqual(watch.read_lines(6, timeout=5), ["PUT", k, "v2", "PUT", k, "v3"],
                             watch.stderr())
        else:
            # keel on purpose also cancels one from the compacted revision itself: etcd's
            # compaction drops the tombstones of deletes made at that revision, so such a
            # watcher could miss them (core/watch/watch_hub.h). From the next one it serves.
            lines = watch.read_lines(10, timeout=5)  # until etcdctl exits
            self.assertIn("required revision has been compacted", "\n".join(lines) + watch.stderr())
            self.assertEqual(watch.stop(), 5, watch.stderr())
            watch = self.stream("watch", k, "--rev", str(r2 + 1))
            self.assertEqual(watch.read_lines(3, timeout=5), ["PUT", k, "v3"], watch.stderr())

    # --- cluster -------------------------------------------------------------------

    @time_limit(TEST_TIME_S_MAX)
    def test_endpoint_status_json_names_the_leader_its_term_and_the_version(self):
        leader_id = self.member_ids[self.leader.name]
        terms = set()
        for m in self.cluster.members:
            with self.subTest(member=m.name):
                statuses = kc.etcdctl_json([m.endpoint], "endpoint", "status")
                self.assertEqual(len(statuses), 1)
                self.assertEqual(statuses[0]["Endpoint"], m.endpoint)
                st = statuses[0]["Status"]
                self.assertEqual(st["header"]["member_id"], self.member_ids[m.name])
                self.assertEqual(st["leader"], leader_id)
                self.assertEqual(st["raftTerm"], st["header"]["raft_term"])
                self.assertGreaterEqual(st["raftTerm"], 1)
                self.assertRegex(st["version"], r"^3\.4\.\d+$")
                self.assertGreater(st["dbSize"], 0)
                self.assertGreaterEqual(st["raftIndex"], 1)
                terms.add(st["raftTerm"])
        self.assertEqual(len(terms), 1, "members disagree on the term: %s" % terms)
        _, out, _ = kc.etcdctl(self.cluster.endpoints, "endpoint", "status")
        rows = out.splitlines()
        self.assertEqual(len(rows), len(self.cluster.members))
        for m, row in zip(self.cluster.members, rows):
            self.assertRegex(row, r"^%s, %x, 3\.4\.\d+, \d+ [kMG]?B, %s, false, \d+, \d+, \d+, $"
                             % (re.escape(m.endpoint), self.member_ids[m.name],
                                "true" if m is self.leader else "false"))

    @time_limit(TEST_TIME_S_MAX)
    def test_endpoint_health_reports_every_member_healthy(self):
        rc, out, err = kc.etcdctl(self.cluster.endpoints, "endpoint", "health")
        lines = sorted(err.splitlines())
        self.assertEqual(out, "")
        self.assertEqual(len(lines), len(self.cluster.members), err)
        for m, line in zip(sorted(self.cluster.members, key=lambda m: m.endpoint), lines):
            self.assertRegex(line, r"^%s is healthy: successfully committed proposal: took = "
                                   r"[0-9.]+[µnm]?s$" % re.escape(m.endpoint))
        health = kc.etcdctl_json(self.ep, "endpoint", "health")
        self.assertEqual([(h["endpoint"], h["health"]) for h in health], [(self.ep[0], True)])

    def expected_member_lines(self):
        ms = sorted(self.cluster.members, key=lambda m: self.member_ids[m.name])
        return ["%x, started, %s, %s, %s, false"
                % (self.member_ids[m.name], m.name, m.peer_url, m.client_url) for m in ms]

    @time_limit(TEST_TIME_S_MAX)
    def test_member_list_names_every_member_with_its_peer_and_client_urls(self):
        expected = self.expected_member_lines()
        for m in self.cluster.members:
            with self.subTest(asked=m.name):
                _, out, _ = kc.etcdctl([m.endpoint], "member", "list")
                self.assertEqual(out.splitlines(), expected)

    @time_limit(TEST_TIME_S_MAX)
    def test_member_list_json_header_has_no_revision(self):
        got = self.ctl_json("member", "list")
        # etcd's Cluster service fills only these: MemberList never reads the store.
        self.assertEqual(set(got["header"]), {"cluster_id", "member_id", "raft_term"})
        self.assertEqual(got["header"]["member_id"], self.member_ids[self.target.name])

    @time_limit(TEST_TIME_S_MAX)
    def test_member_list_json_gives_each_members_id_name_and_urls(self):
        got = self.ctl_json("member", "list")
        self.assertEqual(
            sorted((m["ID"], m["name"], m["peerURLs"], m.get("clientURLs"))
                   for m in got["members"]),
            sorted((self.member_ids[m.name], m.name, [m.peer_url], [m.client_url])
                   for m in self.cluster.members))


class OneMember(EtcdctlBehaviour, unittest.TestCase):
    member_count = 1
    role = "leader"


class ThreeMembersThroughTheLeader(EtcdctlBehaviour, unittest.TestCase):
    member_count = 3
    role = "leader"

    @time_limit(TEST_TIME_S_MAX)
    def test_a_write_through_this_member_is_readable_on_every_member(self):
        k = self.key("k")
        self.put(k, "v")
        for m in self.cluster.members:
            with self.subTest(member=m.name):
                _, out, _ = kc.etcdctl([m.endpoint], "get", k)
                self.assertEqual(out, kv_lines((k, "v")))


class ThreeMembersThroughAFollower(ThreeMembersThroughTheLeader):
    member_count = 3
    role = "follower"


if __name__ == "__main__":
    unittest.main()
