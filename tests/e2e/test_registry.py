#!/usr/bin/python3
"""keelctl, keel's registry CLI (net/client/keelctl.cc over net/client/registry.h), end to
end on 3-member keeld clusters: issue 6's e2e tests.

    KEELD=build-dev/net/keeld /usr/bin/python3 -m unittest tests/e2e/test_registry.py

KEELCTL names keelctl (default: client/keelctl next to KEELD, so build/net/client/keelctl
under scripts/test). KEEL_E2E_KIND=etcd runs the same tests against etcd 3.4: the check
that what they expect of the server is etcd's behaviour.

What keelctl prints (keelctl.cc):
    register: "registered <key> lease <hex>", "re-registered lease <hex> (lease <hex> was
              lost)" after a recovery, "deregistered <key>" after SIGINT/SIGTERM (exit 0).
    discover: one line per instance, "<id> <addr> [version=..] weight=N [zone=..]
              [tags=..] [k=v...]", sorted by id; with --watch then "# watching from
              revision N" and each change: "+ <line>", "~ <line>", "- <id> <addr>",
              "# listed again at revision N" after a compaction passed the watch.
    services: "<service> <count>".
    Exit codes: 0 done, 1 failed, 2 bad usage.

Most tests share one cluster, each with services of its own; the tests that kill or stop
a member start a cluster of their own. Registrars use a 3 s lease (etcd's minimum is 2 s)
so that expiry takes seconds.

A gap in a watch is made deterministic by freezing the discover process (SIGSTOP) before
its member stops, and changing the registry only once that member has ended its watch
streams: the discover can then learn of those changes only by resuming elsewhere. With a
compaction past its last revision in the gap, it must list again.
"""

import base64
import json
import os
import re
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keel_cluster as kc  # noqa: E402

SERVER = kc.KIND

TTL_S = 3
EXPIRY_SLACK_S = 2     # a killed registrar's instance goes within ttl + 2 s (issue 6)
REVOKE_WITHIN_S = 1    # a SIGTERMed registrar's key goes within 1 s
READY_TIMEOUT_S = 20   # until a registrar prints "registered", a discover its listing
LINE_TIMEOUT_S = 10    # until a change made shows in a discover --watch
QUIET_S = 1.0          # how long "nothing more" is watched for
# A member's exit code after SIGTERM: etcd 3.4 re-raises the signal (killed by SIGTERM).
STOPPED_EXIT = 0 if SERVER == "keel" else -signal.SIGTERM

REGISTERED = re.compile(r"^registered (\S+) lease ([0-9a-f]+)$")
RE_REGISTERED = re.compile(r"^re-registered lease ([0-9a-f]+) \(lease ([0-9a-f]+) was lost\)$")
WATCHING = re.compile(r"^# watching from revision (\d+)$")
RELISTED = re.compile(r"^# listed again at revision (\d+)$")


def instance_key(service, instance_id):
    return "/services/%s/instances/%s" % (service, instance_id)


def line(instance_id, addr, version=None, weight=1, zone=None, tags=None, **meta):
    """An instance as keelctl discover prints it."""
    out = "%s %s" % (instance_id, addr)
    if version is not None:
        out += " version=%s" % version
    out += " weight=%d" % weight
    if zone is not None:
        out += " zone=%s" % zone
    if tags is not None:
        out += " tags=%s" % tags
    for k in sorted(meta):
        out += " %s=%s" % (k, meta[k])
    return out


class Registrar:
    """A running `keelctl register`. Reads its stdout as asked (take, wait_registered) and
    follows its lease through "registered" and "re-registered" lines."""

    def __init__(self, stream, service, instance_id, addr):
        self.stream = stream
        self.service = service
        self.id = instance_id
        self.addr = addr
        self.key = instance_key(service, instance_id)
        self.lines = []
        self.lease = None       # the lease its key is bound to now (int), once registered
        self.recoveries = 0     # "re-registered" lines seen

    @property
    def registered(self):
        return self.lease is not None

    def _note(self, lines):
        for text in lines:
            self.lines.append(text)
            m = REGISTERED.match(text)
            if m and m.group(1) == self.key:
                self.lease = int(m.group(2), 16)
            m = RE_REGISTERED.match(text)
            if m:
                self.lease = int(m.group(1), 16)
                self.recoveries += 1

    def take(self, timeout=0.01):
        """The stdout lines printed so far (waiting at most `timeout` for the first)."""
        got = self.stream.read_lines(1000, timeout)
        self._note(got)
        return got

    def wait_registered(self, timeout=READY_TIMEOUT_S):
        if not self.registered:
            self._note(self.stream.read_until(lambda text: REGISTERED.match(text) is not None,
                                              timeout))
        return self


class RegistryTest(unittest.TestCase):
    MEMBERS = 3
    cluster = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        kc.require_keelctl()
        cls.cluster = kc.start_cluster(cls.MEMBERS, kind=SERVER)

    @classmethod
    def tearDownClass(cls):
        if cls.cluster is not None:
            cls.cluster.cleanup()
            cls.cluster = None
        super().tearDownClass()

    def own_cluster(self):
        """A cluster for this test alone (it kills or stops a member). Its cleanup is added
        first, so it runs last: after the test's processes stopped."""
        self.cluster = kc.start_cluster(self.MEMBERS, kind=SERVER)
        self.addCleanup(self.cluster.cleanup)
        return self.cluster

    @property
    def endpoints(self):
        return self.cluster.endpoints

    def live(self):
        """The endpoints of the members that run."""
        return [m.endpoint for m in self.cluster.members if m.running()]

    # Processes.

    def start_process(self, cmd):
        stream = kc.ProcessStream(cmd)
        self.addCleanup(stream.stop)
        # A stopped (SIGSTOP) process acts on SIGTERM only once continued; cleanups run
        # last-added first, so this runs before stop().
        self.addCleanup(stream.signal, signal.SIGCONT)
        return stream

    def start_registrar(self, service, instance_id, addr, ttl=TTL_S, meta=(), endpoints=None):
        args = ["register", service, addr, "--id", instance_id, "--ttl", ttl]
        for m in meta:
            args += ["--meta", m]
        stream = self.start_process(kc.keelctl_cmd(endpoints or self.endpoints, *args))
        return Registrar(stream, service, instance_id, addr)

    def register(self, *args, **kwargs):
        return self.start_registrar(*args, **kwargs).wait_registered()

    def register_all(self, specs, **kwargs):
        """Registrars for (service, id, addr[, meta]) tuples, started together; returns
        once each printed "registered"."""
        regs = [self.start_registrar(*spec[:3], meta=spec[3] if len(spec) > 3 else (), **kwargs)
                for spec in specs]
        for r in regs:
            r.wait_registered()
        return regs

    def discover(self, service, endpoints=None):
        """The stdout lines of a one-shot `keelctl discover`."""
        rc, out, err = kc.keelctl(endpoints or self.live(), "discover", service)
        self.assertEqual(rc, 0, err)
        return out.splitlines()

    def start_watch(self, service, endpoints=None):
        """A `keelctl discover --watch`: (stream, listed lines, the revision it watches from)."""
        stream = self.start_process(kc.keelctl_cmd(endpoints or self.endpoints, "discover",
                                                   service, "--watch"))
        lines = stream.read_until(lambda text: WATCHING.match(text) is not None, READY_TIMEOUT_S)
        return stream, lines[:-1], int(WATCHING.match(lines[-1]).group(1))

    def expect_lines(self, stream, expected, timeout=LINE_TIMEOUT_S):
        """The next len(expected) stdout lines are `expected`."""
        got = stream.read_lines(len(expected), timeout)
        self.assertEqual(got, expected, "stderr: %s" % stream.stderr())

    def expect_quiet(self, stream, seconds=QUIET_S):
        got = stream.read_lines(1, seconds)
        self.assertEqual(got, [], "unexpected output; stderr: %s" % stream.stderr())

    def stop_attached_member(self, member):
        """SIGTERMs `member` and returns once it has ended its watch streams. It finishes
        stopping later: gRPC's graceful shutdown waits (up to 7 s) for a frozen client."""
        member.proc.send_signal(signal.SIGTERM)

        def streams_closed():
            if not member.running():
                return True
            try:
                return kc.watch_stream_count(member) == 0
            except (AssertionError, OSError):
                return False
        kc.wait_for(streams_closed, 10, interval=0.02, what="%s's watch streams closed" % member.name)

    # The registry as etcdctl sees it.

    def etcdctl(self, *args, **kwargs):
        return kc.etcdctl(self.live(), *args, **kwargs)

    def registry(self, service):
        """{key: (value text, lease id)} under /services/{service}/."""
        out = kc.etcdctl_json(self.live(), "get", "--prefix", "/services/%s/" % service)
        return {base64.b64decode(kv["key"]).decode():
                (base64.b64decode(kv.get("value", "")).decode(), kv.get("lease", 0))
                for kv in out.get("kvs", [])}

    def revision(self):
        return kc.etcdctl_json(self.live(), "get", "revision-probe")["header"]["revision"]

    def key_exists(self, key):
        _, out, _ = self.etcdctl("get", key, "--keys-only")
        return out.strip() != ""

    def wait_key_gone(self, key, timeout, since):
        """Seconds from `since` until `key` is gone; fails past `timeout`."""
        kc.wait_for(lambda: not self.key_exists(key), timeout=timeout - (time.monotonic() - since),
                    interval=0.05, what="%s deleted" % key)
        return time.monotonic() - since

    def leases_with_keys(self):
        """{lease id: [keys]} of every lease the cluster holds."""
        out = kc.etcdctl_json(self.live(), "lease", "list")
        result = {}
        for lease in out.get("leases", []) or []:
            ttl = kc.etcdctl_json(self.live(), "lease", "timetolive", "--keys", "%x" % lease["id"])
            if ttl.get("ttl", -1) == -1:
                continue  # gone between the list and now
            result[lease["id"]] = sorted(base64.b64decode(k).decode() for k in ttl.get("keys", []) or [])
        return result

    def put_instance(self, service, instance_id, value):
        """An instance (or anything) put by etcdctl without a lease; deleted when the test ends."""
        key = instance_key(service, instance_id)
        self.etcdctl("put", key, value if isinstance(value, str) else json.dumps(value))
        self.addCleanup(lambda: kc.etcdctl(self.live(), "del", key, check=False))
        return key


class KeelctlRegistry(RegistryTest):

    @kc.time_limit(40)
    def test_three_registrars_are_listed_by_discover_and_counted_by_services(self):
        regs = self.register_all([
            ("trio", "t1", "10.0.0.1:8080", ["version=1.0", "zone=az1"]),
            ("trio", "t2", "10.0.0.2:8080", ["weight=5", "tags=a,b"]),
            ("trio", "t3", "[2001:db8::3]:8080", ["owner=team-x"]),
        ])
        self.assertEqual(self.discover("trio"), [
            line("t1", "10.0.0.1:8080", version="1.0", zone="az1"),
            line("t2", "10.0.0.2:8080", weight=5, tags="a,b"),
            line("t3", "[2001:db8::3]:8080", owner="team-x"),
        ])

        rc, out, err = kc.keelctl(self.endpoints, "services")
        self.assertEqual(rc, 0, err)
        self.assertIn("trio 3", out.splitlines())

        # Each under the lease its registrar printed: one key per instance, a lease each.
        got = self.registry("trio")
        self.assertEqual(sorted(got), [r.key for r in regs])
        for r in regs:
            value, lease = got[r.key]
            self.assertEqual(json.loads(value)["addr"], r.addr)
            self.assertEqual(lease, r.lease, r.key)
        self.assertEqual(len({r.lease for r in regs}), 3)
        _, out, _ = self.etcdctl("lease", "timetolive", "%x" % regs[0].lease)
        self.assertRegex(out, r"granted with TTL\(%ds\)" % TTL_S)

    @kc.time_limit(40)
    def test_a_killed_registrar_is_reported_removed_within_ttl_plus_2s(self):
        regs = self.register_all([("kill9", "k%d" % i, "10.0.1.%d:8080" % i) for i in (1, 2, 3)])
        watch, listed, _ = self.start_watch("kill9")
        self.assertEqual(listed, [line(r.id, r.addr) for r in regs])

        killed = time.monotonic()
        regs[1].stream.signal(signal.SIGKILL)
        got = watch.read_lines(1, TTL_S + EXPIRY_SLACK_S)
        took = time.monotonic() - killed
        self.assertEqual(got, ["- k2 10.0.1.2:8080"],
                         "no removal within ttl + %ds of the kill; stderr: %s"
                         % (EXPIRY_SLACK_S, watch.stderr()))
        print("killed registrar's removal reported after %.2fs (ttl %ds)" % (took, TTL_S),
              file=sys.stderr)

        # The others stay: their leases are renewed past their TTL, nothing else removed.
        self.expect_quiet(watch)
        self.assertEqual(self.discover("kill9"), [line(r.id, r.addr) for r in (regs[0], regs[2])])
        self.assertEqual(sorted(self.registry("kill9")), [regs[0].key, regs[2].key])
        for r in (regs[0], regs[2]):
            self.assertTrue(r.stream.running(), r.stream.stderr())

    @kc.time_limit(40)
    def test_sigterm_deregisters_at_once_and_exits_0(self):
        # A long TTL: the key can only go this fast by the registrar's revoke.
        reg = self.register("term", "s1", "10.0.3.1:8080", ttl=30)
        watch, listed, _ = self.start_watch("term")
        self.assertEqual(listed, [line("s1", "10.0.3.1:8080")])

        stopped = time.monotonic()
        reg.stream.signal(signal.SIGTERM)
        took = self.wait_key_gone(reg.key, REVOKE_WITHIN_S, since=stopped)
        print("SIGTERMed registrar's key gone after %.2fs" % took, file=sys.stderr)
        self.assertEqual(reg.stream.wait(10), 0, reg.stream.stderr())
        self.assertEqual(reg.take(5), ["deregistered %s" % reg.key])
        self.expect_lines(watch, ["- s1 10.0.3.1:8080"])
        _, out, _ = self.etcdctl("lease", "timetolive", "%x" % reg.lease)
        self.assertIn("already expired", out)

    @kc.time_limit(40)
    def test_non_json_and_out_of_layout_values_are_skipped_with_a_warning(self):
        self.put_instance("payment", "good", {"addr": "10.0.0.1:8080"})
        self.put_instance("payment", "x", "not json")
        self.put_instance("payment", "noaddr", {"version": "1.0"})
        self.put_instance("payment", "badweight", {"addr": "10.0.0.9:8080", "weight": "heavy"})
        self.etcdctl("put", "/services/payment/stray", "outside the layout")
        self.addCleanup(lambda: kc.etcdctl(self.live(), "del", "/services/payment/stray", check=False))

        rc, out, err = kc.keelctl(self.endpoints, "discover", "payment")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.splitlines(), [line("good", "10.0.0.1:8080")])
        for bad in ("x", "noaddr", "badweight"):
            self.assertIn("skipped %s" % instance_key("payment", bad), err)
        self.assertRegex(err, r"skipped /services/payment/instances/x: .*not JSON")

        rc, out, err = kc.keelctl(self.endpoints, "services")
        self.assertEqual(rc, 0, err)
        self.assertIn("payment 1", out.splitlines())
        self.assertIn("keelctl: 4 keys under /services/ are not valid instances", err)

        # Under --watch too: a bad value is skipped (stderr), one overwriting an instance
        # removes it, and the watch goes on.
        watch, listed, _ = self.start_watch("payment")
        self.assertEqual(listed, [line("good", "10.0.0.1:8080")])
        self.put_instance("payment", "y", "{broken")
        self.etcdctl("put", instance_key("payment", "good"), "garbage")
        self.put_instance("payment", "z", {"addr": "10.0.0.3:8080", "version": "2"})
        self.expect_lines(watch, ["- good 10.0.0.1:8080", "+ " + line("z", "10.0.0.3:8080", version="2")])
        self.assertIn("skipped %s" % instance_key("payment", "y"), watch.stderr())
        self.assertIn("skipped %s" % instance_key("payment", "good"), watch.stderr())
        self.assertTrue(watch.running(), watch.stderr())
        watch.signal(signal.SIGTERM)
        self.assertEqual(watch.wait(10), 0, watch.stderr())

    @kc.time_limit(40)
    def test_usage_errors_exit_2(self):
        for args in (
            [],                                                   # no subcommand
            ["bogus"],                                            # no such subcommand
            ["register", "payment"],                              # no address
            ["register", "payment", "10.0.0.1:8080", "--ttl", "0"],
            ["register", "payment", "10.0.0.1:8080", "--ttl", "ten"],
            ["register", "payment", "10.0.0.1:8080", "--bogus"],
            ["discover"],                                         # no service
            ["services", "extra"],
        ):
            rc, out, err = kc.keelctl(self.endpoints, *args)
            self.assertEqual(rc, 2, "keelctl %s: exit %d, stderr %r" % (args, rc, err))
            self.assertEqual(out, "", args)
            self.assertNotEqual(err.strip(), "", args)
        rc, out, _ = kc.keelctl(self.endpoints, "register", "--help")
        self.assertEqual(rc, 0)
        self.assertIn("--ttl", out)
        self.assertEqual(self.registry("payment"), {})

    @kc.time_limit(40)
    def test_invalid_service_names_addresses_and_metadata_exit_2_and_register_nothing(self):
        # Bad arguments, found before any call to the cluster: bad usage (exit 2), as
        # keelctl's own --ttl 0 is; never a crash, nothing written.
        wrong = []
        for args, message in (
            (["discover", ""], "service name is empty"),
            (["discover", "pay/ment"], "pay/ment"),
            (["register", "", "10.0.0.1:8080"], "service name is empty"),
            (["register", "payment", "not-an-address"], "not-an-address"),
            (["register", "payment", "10.0.0.1:0"], "10.0.0.1:0"),
            (["register", "payment", "10.0.0.1:70000"], "10.0.0.1:70000"),
            (["register", "payment", "10.0.0.1:8080", "--id", "a b"], "instance id"),
            (["register", "payment", "10.0.0.1:8080", "--meta", "weight=heavy"], "heavy"),
            (["register", "payment", "10.0.0.1:8080", "--meta", "novalue"], "novalue"),
            (["discover", "payment", "--pick", "best"], "--pick"),
        ):
            rc, out, err = kc.keelctl(self.endpoints, *args, timeout=10)
            self.assertGreaterEqual(rc, 0, "keelctl %s died of signal %d: %s" % (args, -rc, err))
            self.assertEqual(out, "", args)
            self.assertIn(message, err, args)
            if rc != 2:
                wrong.append("keelctl %s: exit %d, stderr %r" % (" ".join(map(repr, args)), rc, err))
        self.assertEqual(self.registry("payment"), {})
        self.assertEqual(wrong, [], "bad arguments must exit 2 (bad usage):\n" + "\n".join(wrong))

    @kc.time_limit(40)
    def test_an_unreachable_cluster_fails_with_exit_1(self):
        (port,) = kc.free_ports(1)
        nowhere = ["127.0.0.1:%d" % port]
        for args in (["discover", "payment"], ["services"],
                     ["register", "payment", "10.0.0.1:8080", "--ttl", "3"]):
            with self.subTest(args=args):
                started = time.monotonic()
                rc, out, err = kc.keelctl(nowhere, "--dial-timeout", "500", "--command-timeout",
                                          "1500", *args, timeout=20)
                self.assertEqual(rc, 1, "keelctl %s: exit %d (stderr %r)" % (args, rc, err))
                self.assertEqual(out, "")
                self.assertRegex(err, r"^keelctl: ")
                self.assertLess(time.monotonic() - started, 15, args)


class KeelctlFailover(RegistryTest):
    """Tests that kill or stop a member: each on a cluster of its own."""

    @classmethod
    def setUpClass(cls):
        kc.require_keelctl()  # no shared cluster

    @classmethod
    def tearDownClass(cls):
        pass

    @kc.time_limit(60)
    def test_leader_killed_during_registration_loses_no_instance_and_duplicates_none(self):
        cluster = self.own_cluster()
        leader = kc.wait_for_leader(cluster)
        followers = [m for m in cluster.members if m is not leader]
        # A watcher on a follower, there from the start: it must see each instance come
        # once and none go.
        watch, listed, _ = self.start_watch(
            "lk", endpoints=[followers[0].endpoint, followers[1].endpoint, leader.endpoint])
        self.assertEqual(listed, [])

        def endpoints_for(i):  # each registrar starts on another member; some on the leader
            eps = self.endpoints
            return eps[i % len(eps):] + eps[:i % len(eps)]

        ids = ["l%d" % i for i in range(6)]
        specs = [("lk", ids[i], "10.0.4.%d:8080" % i) for i in range(6)]
        # Wave 1, then wave 2 and the kill as soon as wave 1's first registration is in:
        # registrations in flight and not yet started when the leader dies.
        regs = [self.start_registrar(*specs[i], endpoints=endpoints_for(i)) for i in range(3)]

        def any_registered():
            for r in regs:
                r.take()
            return any(r.registered for r in regs)
        kc.wait_for(any_registered, READY_TIMEOUT_S, interval=0.005, what="a first registration")
        regs += [self.start_registrar(*specs[i], endpoints=endpoints_for(i)) for i in range(3, 6)]
        cluster.kill(leader)
        killed = time.monotonic()
        print("leader %s killed; %s not seen registered before" % (
            leader.name, [r.id for r in regs if not r.registered]), file=sys.stderr)

        kc.wait_for_leader(cluster, timeout=15)
        for r in regs:  # no instance lost: each registers (and goes on running)
            r.wait_registered()
        print("all registered %.2fs after the kill" % (time.monotonic() - killed), file=sys.stderr)

        def check(when):
            for r in regs:
                r.take()
                self.assertTrue(r.stream.running(), "%s exited %s: %s"
                                % (r.id, r.stream.proc.returncode, r.stream.stderr()))
            got = self.registry("lk")
            self.assertEqual(sorted(got), sorted(r.key for r in regs), when)
            for r in regs:
                self.assertEqual(got[r.key][1], r.lease, "%s %s: bound to another lease than its "
                                 "registrar's; lines %r" % (when, r.key, r.lines))
            # None duplicated: each id once in a listing, each lease holds one key.
            self.assertEqual(self.discover("lk"), [line(i, a) for _, i, a in specs], when)
            for lease, keys in self.leases_with_keys().items():
                if keys:
                    self.assertEqual(len(keys), 1, "%s: lease %x holds %s" % (when, lease, keys))
                    owner = [r for r in regs if r.key == keys[0]]
                    self.assertTrue(owner, "%s: lease %x holds %s" % (when, lease, keys))
                    self.assertEqual(owner[0].lease, lease, when)

        check("after the re-election")
        # They survive: still there, renewed, after two TTLs.
        time.sleep(2 * TTL_S)
        check("two TTLs later")
        # A lease granted twice (its first answer lost with the leader) holds no key and
        # expires by its TTL: then only the registrars' leases are left.
        kc.wait_for(lambda: set(self.leases_with_keys()) == {r.lease for r in regs},
                    TTL_S + 3, interval=0.5, what="only the registrars' leases left")

        # The watcher saw each instance come once and none go (a re-put is a "~").
        changes = watch.read_lines(1000, 0.5)
        added = sorted(text.split()[1] for text in changes if text.startswith("+ "))
        self.assertEqual(added, ids, changes)
        self.assertEqual([text for text in changes if not text.startswith(("+ ", "~ "))], [],
                         "stderr: %s" % watch.stderr())
        print("recoveries: %s; watch lines: %d" % ({r.id: r.recoveries for r in regs}, len(changes)),
              file=sys.stderr)

    @kc.time_limit(60)
    def test_discover_watch_resumes_on_another_member_without_missing_a_change(self):
        cluster = self.own_cluster()
        attached = kc.wait_for_leader(cluster)  # the leader: its stop hands leadership over
        others = [m for m in cluster.members if m is not attached]
        via = [m.endpoint for m in others]       # every change goes through the others

        r1, r2 = self.register_all([("resume", "i1", "10.0.5.1:8080"),
                                    ("resume", "i2", "10.0.5.2:8080")], ttl=10, endpoints=via)
        watch, listed, _ = self.start_watch("resume", endpoints=[attached.endpoint] + via)
        self.assertEqual(listed, [line("i1", "10.0.5.1:8080"), line("i2", "10.0.5.2:8080")])
        kc.wait_for(lambda: kc.watch_stream_count(attached) == 1, 5, what="the watch on %s" % attached.name)
        self.assertEqual([kc.watch_stream_count(m) for m in others], [0, 0])

        r3 = self.register("resume", "i3", "10.0.5.3:8080", ttl=10, endpoints=via)
        self.expect_lines(watch, ["+ " + line("i3", "10.0.5.3:8080")])

        # The gap: discover is frozen while its member stops (its stream ended) and the
        # registry changes; it can only resume, on another member, after.
        watch.signal(signal.SIGSTOP)
        self.stop_attached_member(attached)
        r1.stream.signal(signal.SIGTERM)  # i1 deregistered
        self.assertEqual(r1.stream.wait(10), 0, r1.stream.stderr())
        self.register("resume", "i4", "10.0.5.4:8080", ttl=10, endpoints=via)
        # i2 registered again by another registrar: its value changes.
        self.register("resume", "i2", "10.0.5.2:8080", ttl=10, meta=["version=2"], endpoints=via)
        gap_changes = ["- i1 10.0.5.1:8080", "+ " + line("i4", "10.0.5.4:8080"),
                       "~ " + line("i2", "10.0.5.2:8080", version="2")]
        watch.signal(signal.SIGCONT)
        self.assertEqual(attached.proc.wait(15), STOPPED_EXIT, attached.log()[-2000:])

        # After the gap.
        r5 = self.register("resume", "i5", "10.0.5.5:8080", ttl=10, endpoints=via)
        r3.stream.signal(signal.SIGTERM)
        self.assertEqual(r3.stream.wait(10), 0, r3.stream.stderr())
        after = ["+ " + line("i5", "10.0.5.5:8080"), "- i3 10.0.5.3:8080"]

        # Every change once, in order, nothing else.
        self.expect_lines(watch, gap_changes + after, timeout=15)
        self.expect_quiet(watch)
        self.assertTrue(watch.running(), watch.stderr())
        self.assertEqual(sum(kc.watch_stream_count(m) for m in others), 1)
        self.assertEqual(self.discover("resume", endpoints=via),
                         [line("i2", "10.0.5.2:8080", version="2"), line("i4", "10.0.5.4:8080"),
                          line(r5.id, r5.addr)])

    @kc.time_limit(60)
    def test_discover_watch_lists_again_when_compaction_passed_it(self):
        cluster = self.own_cluster()
        leader = kc.wait_for_leader(cluster)
        attached = next(m for m in cluster.members if m is not leader)
        via = [m.endpoint for m in cluster.members if m is not attached]

        self.put_instance("compacted", "a", {"addr": "10.0.6.1:8080"})
        self.put_instance("compacted", "b", {"addr": "10.0.6.2:8080", "version": "1"})
        watch, listed, _ = self.start_watch("compacted", endpoints=[attached.endpoint] + via)
        self.assertEqual(listed, [line("a", "10.0.6.1:8080"), line("b", "10.0.6.2:8080", version="1")])
        self.put_instance("compacted", "c", {"addr": "10.0.6.3:8080"})
        self.expect_lines(watch, ["+ " + line("c", "10.0.6.3:8080")])

        # Frozen, its member gone; changes, then a compaction past everything it saw: it
        # cannot resume from where it was, so it lists again and reports the differences.
        watch.signal(signal.SIGSTOP)
        self.stop_attached_member(attached)
        self.etcdctl("del", instance_key("compacted", "a"))
        self.put_instance("compacted", "b", {"addr": "10.0.6.2:8080", "version": "2"})
        self.put_instance("compacted", "d", {"addr": "10.0.6.4:8080"})
        self.put_instance("compacted", "e", {"addr": "10.0.6.5:8080"})  # comes and goes: unseen
        self.etcdctl("del", instance_key("compacted", "e"))
        rev = self.revision()
        self.etcdctl("compaction", "--physical", str(rev))
        watch.signal(signal.SIGCONT)
        self.assertEqual(attached.proc.wait(15), STOPPED_EXIT, attached.log()[-2000:])

        got = watch.read_until(lambda text: RELISTED.match(text) is not None, 15)
        self.assertEqual(int(RELISTED.match(got[-1]).group(1)), rev)
        self.assertEqual(sorted(got[:-1]), sorted([
            "- a 10.0.6.1:8080",
            "~ " + line("b", "10.0.6.2:8080", version="2"),
            "+ " + line("d", "10.0.6.4:8080"),
        ]), "stderr: %s" % watch.stderr())

        # Then it watches from the listing on.
        self.put_instance("compacted", "f", {"addr": "10.0.6.6:8080"})
        self.expect_lines(watch, ["+ " + line("f", "10.0.6.6:8080")])
        self.expect_quiet(watch)
        self.assertTrue(watch.running(), watch.stderr())


if __name__ == "__main__":
    unittest.main()
