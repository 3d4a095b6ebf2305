#!/usr/bin/python3
"""python3-etcd3 (Debian's 0.12) against keeld: KV, transactions, watch, leases and the
library's lock recipe, on a 1-member cluster and through a follower of a 3-member one.

Each expectation is etcd 3.4's behaviour as this library sees it. Run with Debian's
Python (the etcd3 and grpc modules are Debian packages):

    KEELD=build-dev/net/keeld /usr/bin/python3 -m unittest tests/e2e/test_python_etcd3.py
"""

import os
import queue
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keel_cluster as kc  # noqa: E402

try:
    import etcd3
    import etcd3.events
    import etcd3.exceptions
    import grpc
except ImportError:  # python3-etcd3 missing: the tests skip, saying so
    etcd3 = None

SERVER = kc.KIND  # KEEL_E2E_KIND=etcd: against etcd 3.4 (keel_cluster.py)
CALL_TIMEOUT_S = 5  # every unary call and watch creation
# etcd's minimum lease TTL: ceil(1.5 * --election-timeout), 2 s at the default 1000 ms.
LEASE_TTL_MIN_S = 2


kc.quiet_etcd3_watch_thread_exits()


def connect(member):
    host, port = member.endpoint.rsplit(":", 1)
    return etcd3.client(host=host, port=int(port), timeout=CALL_TIMEOUT_S)


def keel_watchers(member):
    """keel's gauge of watchers open on `member` (keel_watchers on /metrics); etcd has
    none, so 0 there."""
    if SERVER != "keel":
        return 0
    _, body = kc.http_get(kc.metrics_url(member) + "/metrics")
    for line in body.splitlines():
        if line.startswith("keel_watchers "):
            return int(float(line.split()[1]))
    raise AssertionError("no keel_watchers line in /metrics:\n" + body[:2000])


def acquire_waiting(lock, timeout):
    """lock.acquire(timeout=...) as the library means it: try, and on failure wait for the
    lock's key to change, until `timeout` s pass; True once acquired.

    etcd3 0.12's own waiting acquire is broken with Debian's tenacity 8.2 (its wait()
    takes the pre-8.0 arguments: kragniz/python-etcd3#2149), against etcd as against
    keel; acquire(timeout=0) makes exactly one attempt and never reaches that wait().
    This loop is the recipe's wait done right: a watch from the revision the failed
    attempt saw, so a release between the attempt and the watch is not missed.
    """
    client = lock.etcd_client
    deadline = time.monotonic() + timeout
    while True:
        seen = client.get_response(lock.key).header.revision
        if lock.acquire(timeout=0):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            client.watch_once(lock.key, timeout=remaining, start_revision=seen + 1)
        except etcd3.exceptions.WatchTimedOut:
            pass


class EventCollector:
    """Drains an etcd3 events iterator on a thread, so the test reads with deadlines."""

    def __init__(self, iterator):
        self.events = queue.Queue()
        self.ended = threading.Event()
        self.error = None
        self._thread = threading.Thread(target=self._drain, args=(iterator,), daemon=True)
        self._thread.start()

    def _drain(self, iterator):
        try:
            for event in iterator:
                self.events.put(event)
        except Exception as e:  # the test asserts on it
            self.error = e
        finally:
            self.ended.set()

    def take(self, n, timeout):
        """Exactly n events, or AssertionError saying how many came within `timeout` s."""
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            try:
                out.append(self.events.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError("%d of %d watch events within %ss: %s (error: %r)"
                                     % (len(out), n, timeout, [describe(e) for e in out],
                                        self.error))
        return out


def describe(event):
    """('PUT' | 'DELETE', key, value) of an etcd3 event."""
    kind = "PUT" if isinstance(event, etcd3.events.PutEvent) else "DELETE"
    return (kind, event.key.decode(), event.value.decode())


class ClientLibraryContract:
    """The tests; a subclass says which cluster and which members the clients talk to.

    `member` is the member the test's main client (self.etcd) connects to; `other` the
    member of a second client (self.etcd2), used for the lock's second holder and for
    writes seen by a watch (the same member in the 1-member cluster).
    """

    cluster = None
    member = None
    other = None

    def setUp(self):
        if etcd3 is None:
            self.skipTest("python3-etcd3 is not installed (apt-get install python3-etcd3)")
        self.assertTrue(self.member.running(), self.member.log()[-2000:])
        self.etcd = connect(self.member)
        self.addCleanup(self.etcd.close)
        self.etcd2 = connect(self.other)
        self.addCleanup(self.etcd2.close)
        self.prefix = "/%s/%s/" % (type(self).__name__, self._testMethodName)

    def key(self, name):
        return self.prefix + name

    # ---- KV ----

    @kc.time_limit(30)
    def test_put_then_get_returns_the_value_with_its_revisions_and_version(self):
        k = self.key("a")
        first = self.etcd.put(k, "v1")
        value, meta = self.etcd.get(k)
        self.assertEqual(value, b"v1")
        self.assertEqual(meta.key, k.encode())
        self.assertEqual(meta.version, 1)
        self.assertEqual(meta.create_revision, first.header.revision)
        self.assertEqual(meta.mod_revision, first.header.revision)
        self.assertEqual(meta.lease_id, 0)

        second = self.etcd.put(k, "v2", prev_kv=True)
        self.assertGreater(second.header.revision, first.header.revision)
        self.assertEqual(second.prev_kv.value, b"v1")
        self.assertEqual(second.prev_kv.mod_revision, first.header.revision)
        value, meta = self.etcd.get(k)
        self.assertEqual(value, b"v2")
        self.assertEqual(meta.version, 2)
        self.assertEqual(meta.create_revision, first.header.revision)
        self.assertEqual(meta.mod_revision, second.header.revision)

        # A put without prev_kv returns none; a get of a key never written, nothing.
        self.assertFalse(self.etcd.put(k, "v3").HasField("prev_kv"))
        self.assertEqual(self.etcd.get(self.key("never-written")), (None, None))
        # A write through the other client is seen by this one's (linearizable) get.
        self.etcd2.put(k, "v4")
        self.assertEqual(self.etcd.get(k)[0], b"v4")

    @kc.time_limit(30)
    def test_get_prefix_returns_only_the_keys_under_it_in_key_order(self):
        for name in ["p/b", "p/a", "p/c", "p0", "o"]:
            self.etcd.put(self.key(name), "value-of-" + name)
        got = [(m.key.decode(), v.decode()) for v, m in self.etcd.get_prefix(self.key("p/"))]
        self.assertEqual(got, [(self.key("p/a"), "value-of-p/a"),
                               (self.key("p/b"), "value-of-p/b"),
                               (self.key("p/c"), "value-of-p/c")])
        everything = [m.key.decode() for _, m in self.etcd.get_prefix(self.prefix)]
        self.assertEqual(everything, sorted(self.key(n) for n in ["p/b", "p/a", "p/c", "p0", "o"]))

    @kc.time_limit(30)
    def test_delete_removes_the_key_and_reports_whether_it_existed(self):
        k = self.key("d")
        self.etcd.put(k, "x")
        self.assertTrue(self.etcd.delete(k))
        self.assertEqual(self.etcd.get(k), (None, None))
        self.assertFalse(self.etcd.delete(k))

        self.etcd.put(k, "y")
        response = self.etcd.delete(k, prev_kv=True, return_response=True)
        self.assertEqual(response.deleted, 1)
        self.assertEqual([(kv.key, kv.value) for kv in response.prev_kvs], [(k.encode(), b"y")])
        # Re-created after a delete, a key starts over at version 1.
        put = self.etcd.put(k, "z")
        _, meta = self.etcd.get(k)
        self.assertEqual((meta.version, meta.create_revision), (1, put.header.revision))

    @kc.time_limit(30)
    def test_delete_prefix_removes_only_the_keys_under_it(self):
        for name in ["q/1", "q/2", "q/3/deep", "q0"]:
            self.etcd.put(self.key(name), "x")
        response = self.etcd.delete_prefix(self.key("q/"))
        self.assertEqual(response.deleted, 3)
        self.assertEqual(list(self.etcd.get_prefix(self.key("q/"))), [])
        self.assertEqual(self.etcd.get(self.key("q0"))[0], b"x")
        self.assertEqual(self.etcd.delete_prefix(self.key("q/")).deleted, 0)

    # ---- Transactions ----

    @kc.time_limit(30)
    def test_transaction_whose_compares_all_hold_runs_the_success_branch(self):
        k, other = self.key("t"), self.key("t-other")
        created = self.etcd.put(k, "a").header.revision
        modified = self.etcd.put(k, "b").header.revision
        tx = self.etcd.transactions
        succeeded, responses = self.etcd.transaction(
            compare=[tx.value(k) == "b", tx.value(k) != "a",
                     tx.version(k) == 2, tx.version(k) > 1,
                     tx.create(k) == created, tx.create(k) < modified,
                     tx.mod(k) == modified, tx.mod(k) > created,
                     tx.version(self.key("absent")) == 0, tx.create(self.key("absent")) == 0],
            success=[tx.put(k, "c"), tx.get(k), tx.put(other, "x"), tx.delete(self.key("absent"))],
            failure=[tx.put(k, "failure-branch")])
        self.assertTrue(succeeded)
        self.assertEqual(len(responses), 4)
        self.assertEqual(responses[0].WhichOneof("response"), "response_put")
        # Operations of a transaction run in order: its get sees its put.
        self.assertEqual([v for v, _ in responses[1]], [b"c"])
        self.assertEqual(responses[3].response_delete_range.deleted, 0)
        self.assertEqual(self.etcd.get(k)[0], b"c")
        self.assertEqual(self.etcd.get(other)[0], b"x")
        # The whole transaction is one revision.
        _, meta_k = self.etcd.get(k)
        _, meta_other = self.etcd.get(other)
        self.assertEqual(meta_k.mod_revision, meta_other.mod_revision)
        self.assertEqual(meta_k.mod_revision, modified + 1)

    @kc.time_limit(30)
    def test_transaction_with_one_false_compare_runs_the_failure_branch(self):
        k, other = self.key("t"), self.key("t-other")
        rev = self.etcd.put(k, "a").header.revision
        tx = self.etcd.transactions
        for false_compare in [tx.value(k) == "b", tx.version(k) == 2, tx.create(k) == rev + 1,
                              tx.mod(k) < rev, tx.create(self.key("absent")) > 0]:
            with self.subTest(compare=repr(false_compare)):
                succeeded, responses = self.etcd.transaction(
                    compare=[tx.value(k) == "a", false_compare],
                    success=[tx.put(k, "success-branch")],
                    failure=[tx.put(other, "failure-branch"), tx.get(k)])
                self.assertFalse(succeeded)
                self.assertEqual(len(responses), 2)
                self.assertEqual([v for v, _ in responses[1]], [b"a"])
                self.assertEqual(self.etcd.get(k)[0], b"a")
                self.assertEqual(self.etcd.get(other)[0], b"failure-branch")
                self.etcd.delete(other)

    @kc.time_limit(30)
    def test_nested_transaction_runs_the_inner_branch_its_compares_pick(self):
        k = self.key("n")
        self.etcd.put(k, "outer")
        tx = self.etcd.transactions
        succeeded, responses = self.etcd.transaction(
            compare=[tx.value(k) == "outer"],
            success=[tx.txn(compare=[tx.value(k) == "inner"],
                            success=[tx.put(k, "inner-success")],
                            failure=[tx.put(k, "inner-failure")])],
            failure=[])
        self.assertTrue(succeeded)
        self.assertFalse(responses[0].response_txn.succeeded)
        self.assertEqual(self.etcd.get(k)[0], b"inner-failure")

    # ---- Watch ----

    @kc.time_limit(30)
    def test_watch_callback_sees_puts_and_deletes_in_order_until_cancelled(self):
        k = self.key("w")
        responses = queue.Queue()
        watch_id = self.etcd.add_watch_callback(k, responses.put)
        self.addCleanup(self.etcd.cancel_watch, watch_id)
        # Earlier tests' watchers may still be closing: the count can only fall meanwhile.
        watchers_open = keel_watchers(self.member)
        if SERVER == "keel":
            self.assertGreaterEqual(watchers_open, 1)

        revisions = [self.etcd2.put(k, "1").header.revision,
                     self.etcd2.put(self.key("w-not-watched"), "x").header.revision,
                     self.etcd2.put(k, "2").header.revision,
                     self.etcd2.delete(k, return_response=True).header.revision]
        events = []
        deadline = time.monotonic() + 10
        while len(events) < 3:
            response = responses.get(timeout=max(0.0, deadline - time.monotonic()))
            self.assertNotIsInstance(response, Exception)
            events.extend(response.events)
        self.assertEqual([describe(e) for e in events],
                         [("PUT", k, "1"), ("PUT", k, "2"), ("DELETE", k, "")])
        self.assertEqual([e.mod_revision for e in events],
                         [revisions[0], revisions[2], revisions[3]])
        self.assertEqual([e.version for e in events], [1, 2, 0])

        self.etcd.cancel_watch(watch_id)
        # The member drops the watcher (keel's gauge; etcd has no stable equivalent).
        if SERVER == "keel":
            kc.wait_for(lambda: keel_watchers(self.member) <= watchers_open - 1, 5,
                        what="the cancelled watcher closed on the member")
        self.etcd2.put(k, "after-cancel")
        time.sleep(0.3)
        self.assertTrue(responses.empty(), "a response after cancel: %r" % responses.queue)

    @kc.time_limit(30)
    def test_watch_prefix_iterator_yields_events_in_order_and_ends_when_cancelled(self):
        prefix = self.key("wp/")
        iterator, cancel = self.etcd.watch_prefix(prefix)
        collector = EventCollector(iterator)
        self.addCleanup(cancel)
        expected, present = [], set()
        for i in range(20):
            key = prefix + "k%02d" % (i % 7)
            if i % 5 == 4:
                self.etcd2.delete(key)
                if key in present:  # deleting an absent key is no event
                    expected.append(("DELETE", key, ""))
                present.discard(key)
            else:
                self.etcd2.put(key, "v%d" % i)
                expected.append(("PUT", key, "v%d" % i))
                present.add(key)
        self.etcd2.put(self.key("wp-outside"), "x")
        self.etcd2.put(prefix + "last", "x")
        expected.append(("PUT", prefix + "last", "x"))
        events = collector.take(len(expected), 10)
        self.assertEqual([describe(e) for e in events], expected)
        revisions = [e.mod_revision for e in events]
        self.assertEqual(revisions, sorted(revisions))
        cancel()
        self.assertTrue(collector.ended.wait(5), "the iterator did not end after cancel()")
        self.assertIsNone(collector.error)

    @kc.time_limit(30)
    def test_watch_from_a_past_revision_replays_history_with_prev_kv(self):
        k = self.key("h")
        first = self.etcd2.put(k, "1").header.revision
        self.etcd2.put(k, "2")
        self.etcd2.delete(k)
        iterator, cancel = self.etcd.watch(k, start_revision=first, prev_kv=True)
        collector = EventCollector(iterator)
        self.addCleanup(cancel)
        events = collector.take(3, 10)
        self.assertEqual([describe(e) for e in events],
                         [("PUT", k, "1"), ("PUT", k, "2"), ("DELETE", k, "")])
        self.assertEqual([e.mod_revision for e in events], [first, first + 1, first + 2])
        self.assertEqual(events[1].prev_value, b"1")
        self.assertEqual(events[2].prev_value, b"2")
        self.etcd2.put(k, "3")
        self.assertEqual(describe(collector.take(1, 10)[0]), ("PUT", k, "3"))

    # ---- Leases ----

    @kc.time_limit(30)
    def test_lease_reports_its_ttl_and_keys_and_its_revoke_deletes_them(self):
        lease = self.etcd.lease(10)
        self.assertNotEqual(lease.id, 0)
        self.assertEqual(lease.ttl, 10)
        k1, k2 = self.key("l1"), self.key("l2")
        self.etcd.put(k1, "a", lease=lease)
        self.etcd.put(k2, "b", lease=lease.id)
        self.assertEqual(self.etcd.get(k1)[1].lease_id, lease.id)
        self.assertEqual(sorted(lease.keys), [k1.encode(), k2.encode()])
        self.assertEqual(lease.granted_ttl, 10)
        self.assertTrue(0 < lease.remaining_ttl <= 10, lease.remaining_ttl)

        lease.revoke()
        self.assertEqual(self.etcd.get(k1), (None, None))
        self.assertEqual(self.etcd.get(k2), (None, None))
        self.assertEqual(self.etcd.get_lease_info(lease.id).TTL, -1)
        with self.assertRaises(grpc.RpcError) as raised:
            self.etcd.revoke_lease(lease.id)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(raised.exception.details(), "etcdserver: requested lease not found")

    @kc.time_limit(30)
    def test_lease_refresh_renews_the_full_ttl_and_ends_its_keepalive_stream(self):
        lease = self.etcd.lease(10)
        time.sleep(1.2)
        self.assertLessEqual(lease.remaining_ttl, 9)
        # refresh() opens a LeaseKeepAlive stream, sends one request, half-closes it and
        # reads to the end: etcd's leaseKeepAlive answers each request before its next
        # Recv, and returns (status OK) when that Recv sees the client's EOF, so every
        # refresh gets exactly its one answer. Many refreshes, to catch a race between
        # the answer and the end of the stream.
        for attempt in range(20):
            try:
                refreshed = lease.refresh()
            except etcd3.exceptions.ConnectionTimeoutError:
                self.fail("LeaseKeepAlive: the server did not end the stream within %ss of "
                          "the client half-closing it (etcd returns OK at the client's EOF)"
                          % CALL_TIMEOUT_S)
            # A keep-alive is answered from the leader once the renewal holds.
            self.assertEqual([(r.ID, r.TTL) for r in refreshed], [(lease.id, 10)],
                             "refresh #%d: the stream ended without its one answer" % attempt)
        self.assertGreaterEqual(lease.remaining_ttl, 9)
        lease.revoke()
        # etcd answers a keep-alive for a lease that is gone with TTL 0, not an error.
        for attempt in range(5):
            try:
                answers = [(r.ID, r.TTL) for r in lease.refresh()]
            except etcd3.exceptions.ConnectionTimeoutError:
                self.fail("LeaseKeepAlive of a revoked lease: the stream did not end")
            self.assertEqual(answers, [(lease.id, 0)],
                             "refresh #%d of a revoked lease: not answered TTL 0" % attempt)

    @kc.time_limit(30)
    def test_lease_expiry_deletes_its_keys_after_the_ttl_and_not_before(self):
        before_grant = time.monotonic()
        lease = self.etcd.lease(1)
        # etcd raises a TTL below the minimum to the minimum.
        self.assertEqual(lease.ttl, LEASE_TTL_MIN_S)
        k = self.key("e")
        self.etcd.put(k, "x", lease=lease)
        self.etcd.put(self.key("e-unleased"), "y")
        gone = kc.wait_for(lambda: self.etcd2.get(k) == (None, None) and time.monotonic(),
                           LEASE_TTL_MIN_S + 8, interval=0.1, what="the leased key expired")
        self.assertGreaterEqual(gone - before_grant, LEASE_TTL_MIN_S,
                                "the key went before its lease's TTL")
        self.assertEqual(self.etcd.get_lease_info(lease.id).TTL, -1)
        self.assertEqual(self.etcd.get(self.key("e-unleased"))[0], b"y")

    # ---- Lock recipe ----

    @kc.time_limit(40)
    def test_lock_second_client_acquires_only_after_the_first_releases(self):
        name = type(self).__name__ + "-lock"
        first = self.etcd.lock(name, ttl=10)
        self.assertTrue(first.acquire(timeout=0))
        self.assertTrue(first.is_acquired())

        second = self.etcd2.lock(name, ttl=10)
        result = []
        waiter = threading.Thread(target=lambda: result.append(acquire_waiting(second, 20)),
                                  daemon=True)
        waiter.start()
        time.sleep(1.0)
        self.assertEqual(result, [], "the second client acquired a held lock")
        self.assertFalse(second.is_acquired())
        self.assertTrue(first.is_acquired())

        released_at = time.monotonic()
        self.assertTrue(first.release())
        waiter.join(10)
        self.assertEqual(result, [True], "the second client did not get the released lock")
        self.assertLess(time.monotonic() - released_at, 5)
        self.assertTrue(second.is_acquired())
        self.assertFalse(first.is_acquired())
        self.assertFalse(first.release())  # no longer its lock
        self.assertTrue(second.release())
        self.assertFalse(second.is_acquired())

    @kc.time_limit(40)
    def test_lock_of_a_holder_that_stops_refreshing_passes_on_after_its_ttl(self):
        name = type(self).__name__ + "-abandoned"
        before_grant = time.monotonic()
        holder = self.etcd.lock(name, ttl=LEASE_TTL_MIN_S)
        self.assertTrue(holder.acquire(timeout=0))
        successor = self.etcd2.lock(name, ttl=10)
        self.assertFalse(successor.acquire(timeout=0))
        self.assertTrue(acquire_waiting(successor, LEASE_TTL_MIN_S + 10))
        self.assertGreaterEqual(time.monotonic() - before_grant, LEASE_TTL_MIN_S,
                                "the lock passed on before its holder's lease expired")
        self.assertTrue(successor.is_acquired())
        self.assertFalse(holder.is_acquired())
        self.assertTrue(successor.release())


class OneMember(ClientLibraryContract, unittest.TestCase):
    """Both clients on the only member."""

    @classmethod
    def setUpClass(cls):
        if etcd3 is None:
            return
        cls.cluster = kc.start_cluster(1, kind=SERVER)
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.member = cls.other = cls.cluster.members[0]


class ThreeMembersThroughAFollower(ClientLibraryContract, unittest.TestCase):
    """The main client on a follower; the second client on the leader."""

    @classmethod
    def setUpClass(cls):
        if etcd3 is None:
            return
        cls.cluster = kc.start_cluster(3, kind=SERVER)
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.other = kc.wait_for_leader(cls.cluster)
        cls.member = next(m for m in cls.cluster.members if m is not cls.other)


if __name__ == "__main__":
    unittest.main()
