#!/usr/bin/python3
"""The registry layout against real clients: a Go program written as the seed's §3
registration and discovery code with etcd 3.4's clientv3 (tests/e2e/go/), and etcdctl
3.4, on a 3-member keeld cluster.

    KEELD=build-dev/net/keeld /usr/bin/python3 -m unittest tests/e2e/test_go_interop.py

The Go program is built once per run, offline, by tests/e2e/go/build.sh into e2e-go/
of the build directory that holds KEELD (or KEEL_GO_INTEROP_BIN). The tests skip only if
`go` is missing (Debian's golang-go; scripts/setup installs it). KEEL_E2E_KIND=etcd runs
them against etcd 3.4: the check that what they expect is etcd's behaviour.

Layout: RegistryInterop holds the cluster and the client-neutral helpers (start a
registrar and wait for its ready line, read the registry with etcdctl, wait for a key to
go); GoClientv3Interop adds the Go program. Another client's checks (keelctl) go in a
class of their own on RegistryInterop, with a registrar command and ready line of their
own.
"""

import base64
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keel_cluster as kc  # noqa: E402

SERVER = kc.KIND
HERE = os.path.dirname(os.path.abspath(__file__))
GO_BUILD = os.path.join(HERE, "go", "build.sh")
GO_BIN = os.environ.get("KEEL_GO_INTEROP_BIN") or os.path.join(
    os.path.dirname(os.path.dirname(kc.KEELD)), "e2e-go", "registry_interop")
GO_BUILD_TIMEOUT_S = 400  # cold, on a busy 2-core machine; warm it only links (~3 s)

# A short lease keeps the expiry tests short; etcd's minimum TTL is 2 s.
SHORT_TTL_S = 3
# How long a killed registrar's instance may outlive its lease (the brief's ttl + 2 s).
EXPIRY_SLACK_S = 2
# How long a revoked (SIGTERM) registration may linger.
REVOKE_WITHIN_S = 1
READY_TIMEOUT_S = 20  # until a registrar prints its ready line / a watcher its list

REGISTERED = re.compile(r"^registered (\S+) lease ([0-9a-f]{16})$")


def instance_key(service, instance_id):
    return "/services/%s/instances/%s" % (service, instance_id)


@functools.lru_cache(maxsize=None)
def go_program():
    """The built Go program's path (built on the first call); SkipTest if `go` is missing,
    AssertionError if the build fails."""
    if shutil.which("go") is None:
        raise unittest.SkipTest("`go` is not installed (Debian's golang-go, which scripts/setup installs)")
    started = time.monotonic()
    p = subprocess.run(["bash", GO_BUILD, GO_BIN], capture_output=True, text=True,
                       timeout=GO_BUILD_TIMEOUT_S)
    if p.returncode != 0:
        raise AssertionError("%s %s failed (%d):\n%s%s"
                             % (GO_BUILD, GO_BIN, p.returncode, p.stdout, p.stderr))
    print("built %s in %.1fs" % (GO_BIN, time.monotonic() - started), file=sys.stderr)
    return GO_BIN


class Registration:
    """A running registrar: its process (a kc.ProcessStream), the key it registered and
    its lease id (hex, as printed)."""

    def __init__(self, stream, key, lease_hex):
        self.stream = stream
        self.key = key
        self.lease_hex = lease_hex

    @property
    def lease_id(self):
        return int(self.lease_hex, 16)


class RegistryInterop(unittest.TestCase):
    """A 3-member cluster (keeld, or etcd 3.4 with KEEL_E2E_KIND=etcd) shared by a class's
    tests; each test uses services of its own, so tests do not see each other's
    instances."""

    MEMBERS = 3
    cluster = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.cluster = kc.start_cluster(cls.MEMBERS, kind=SERVER)

    @classmethod
    def tearDownClass(cls):
        if cls.cluster is not None:
            cls.cluster.cleanup()
            cls.cluster = None
        super().tearDownClass()

    @property
    def endpoints(self):
        return self.cluster.endpoints

    # Processes.

    def start_process(self, cmd):
        """A kc.ProcessStream of `cmd`, stopped (SIGTERM, then SIGKILL) when the test ends."""
        stream = kc.ProcessStream(cmd)
        self.addCleanup(stream.stop)
        return stream

    def start_registrar(self, cmd, ready=REGISTERED, timeout=READY_TIMEOUT_S):
        """Runs a registrar command and waits for its ready line, matched by the regex
        `ready` whose groups are (key, lease id in hex). Returns a Registration."""
        stream = self.start_process(cmd)
        lines = stream.read_until(lambda line: ready.match(line) is not None, timeout)
        m = ready.match(lines[-1])
        return Registration(stream, m.group(1), m.group(2))

    # The registry as etcdctl sees it.

    def etcdctl(self, *args, **kwargs):
        return kc.etcdctl(self.endpoints, *args, **kwargs)

    def registry(self, service):
        """{key: (value text, lease id)} under /services/{service}/, read with etcdctl."""
        out = kc.etcdctl_json(self.endpoints, "get", "--prefix", "/services/%s/" % service)
        return {base64.b64decode(kv["key"]).decode(): (base64.b64decode(kv.get("value", "")).decode(),
                                                       kv.get("lease", 0))
                for kv in out.get("kvs", [])}

    def revision(self):
        return kc.etcdctl_json(self.endpoints, "get", "revision-probe")["header"]["revision"]

    def key_exists(self, key):
        _, out, _ = self.etcdctl("get", key, "--keys-only")
        return out.strip() != ""

    def wait_key_gone(self, key, timeout, since=None):
        """Seconds from `since` (default: now) until `key` is gone; fails past `timeout`."""
        since = time.monotonic() if since is None else since
        kc.wait_for(lambda: not self.key_exists(key), timeout=timeout - (time.monotonic() - since),
                    interval=0.05, what="%s deleted" % key)
        return time.monotonic() - since

    def etcdctl_register(self, service, instance_id, addr, ttl=60):
        """An instance put by etcdctl bound to a lease of its own; returns the lease id (hex)."""
        _, out, _ = self.etcdctl("lease", "grant", str(ttl))
        m = re.match(r"lease ([0-9a-f]+) granted", out)
        self.assertIsNotNone(m, out)
        # Revoked when the test ends, so no expiry changes the revision in a later test.
        self.addCleanup(self.etcdctl, "lease", "revoke", m.group(1), check=False)
        value = json.dumps({"addr": addr, "version": "1.0"})
        self.etcdctl("put", "--lease=" + m.group(1), instance_key(service, instance_id), value)
        return m.group(1)


class GoClientv3Interop(RegistryInterop):
    """tests/e2e/go/registry_interop.go (etcd 3.4's clientv3, seed §3) against the cluster."""

    @classmethod
    def setUpClass(cls):
        cls.go = go_program()  # before the cluster: a skip or a failed build starts nothing
        super().setUpClass()

    def go_register(self, service, instance_id, addr, ttl=10, version=None):
        cmd = [self.go, "register", "--endpoints", ",".join(self.endpoints), "--service", service,
               "--id", instance_id, "--addr", addr, "--ttl", str(ttl)]
        if version is not None:
            cmd += ["--version", version]
        return self.start_registrar(cmd)

    def go_discover_cmd(self, service, *extra, endpoints=None):
        return [self.go, "discover", "--endpoints", ",".join(endpoints or self.endpoints),
                "--service", service, *extra]

    def go_discover(self, service):
        """(instance lines, listed revision) of a one-shot discover."""
        p = subprocess.run(self.go_discover_cmd(service), capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = p.stdout.splitlines()
        self.assertTrue(lines and lines[-1].startswith("listed "), p.stdout)
        return lines[:-1], int(lines[-1].split()[1])

    @kc.time_limit(60)
    def test_go_registered_instance_is_visible_to_etcdctl(self):
        reg = self.go_register("payment", "payment-10.0.0.1:8080", "10.0.0.1:8080", ttl=10)
        key = instance_key("payment", "payment-10.0.0.1:8080")
        self.assertEqual(reg.key, key)

        _, out, _ = self.etcdctl("get", "--prefix", "/services/payment/")
        self.assertEqual(out.splitlines(), [key, '{"addr":"10.0.0.1:8080","version":"1.0"}'])
        value, lease = self.registry("payment")[key]
        self.assertEqual(json.loads(value), {"addr": "10.0.0.1:8080", "version": "1.0"})
        self.assertEqual(lease, reg.lease_id)

        _, out, _ = self.etcdctl("lease", "timetolive", "--keys", reg.lease_hex)
        m = re.match(r"lease %s granted with TTL\((\d+)s\), remaining\((\d+)s\), attached keys\(\[(.*)\]\)"
                     % reg.lease_hex, out.strip())
        self.assertIsNotNone(m, out)
        self.assertEqual(int(m.group(1)), 10)
        self.assertLessEqual(int(m.group(2)), 10)
        self.assertEqual(m.group(3), key)

    @kc.time_limit(60)
    def test_go_discover_lists_instances_put_by_etcdctl(self):
        self.etcdctl_register("list", "b", "10.0.0.2:8080")
        self.etcdctl_register("list", "a", "10.0.0.1:8080")
        # Not an instance record: discover skips it (with a warning), as it would
        # anything another writer left under the prefix.
        self.etcdctl("put", instance_key("list", "junk"), "not json")
        rev = self.revision()

        instances, listed = self.go_discover("list")
        self.assertEqual(instances, ["instance a 10.0.0.1:8080", "instance b 10.0.0.2:8080"])
        self.assertEqual(listed, rev)

    @kc.time_limit(90)
    def test_go_discover_watch_reports_etcdctl_put_and_delete(self):
        self.etcdctl_register("watched", "a", "10.0.0.1:8080")
        lease_b = self.etcdctl_register("watched", "b", "10.0.0.2:8080")

        watch = self.start_process(self.go_discover_cmd("watched", "--watch", "--for", "60s"))
        lines = watch.read_until(lambda line: line.startswith("listed "), READY_TIMEOUT_S)
        self.assertEqual(lines[:-1], ["instance a 10.0.0.1:8080", "instance b 10.0.0.2:8080"])

        self.etcdctl_register("watched", "c", "10.0.0.3:8080")
        self.assertEqual(watch.read_lines(1, 10), ["put c 10.0.0.3:8080"])
        self.etcdctl("del", instance_key("watched", "a"))
        self.assertEqual(watch.read_lines(1, 10), ["delete a"])
        # A revoked lease deletes its keys: the watcher sees that as a delete too.
        self.etcdctl("lease", "revoke", lease_b)
        self.assertEqual(watch.read_lines(1, 10), ["delete b"])

        watch.signal(signal.SIGTERM)
        self.assertEqual(watch.wait(10), 0, watch.stderr())

    @kc.time_limit(60)
    def test_go_discover_watch_ends_after_for(self):
        started = time.monotonic()
        p = subprocess.run(self.go_discover_cmd("idle", "--watch", "--for", "1s"),
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = p.stdout.splitlines()
        self.assertEqual(len(lines), 1, p.stdout)
        self.assertRegex(lines[0], r"^listed \d+$")
        self.assertLessEqual(int(lines[0].split()[1]), self.revision())
        self.assertLess(time.monotonic() - started, 10)

    @kc.time_limit(90)
    def test_go_registrar_seen_by_go_discover_watch(self):
        watch = self.start_process(self.go_discover_cmd("both", "--watch", "--for", "60s"))
        watch.read_until(lambda line: line.startswith("listed "), READY_TIMEOUT_S)

        reg = self.go_register("both", "i1", "10.0.0.1:9000", ttl=10, version="2.1")
        self.assertEqual(watch.read_lines(1, 10), ["put i1 10.0.0.1:9000"])
        self.assertEqual(json.loads(self.registry("both")[reg.key][0]),
                         {"addr": "10.0.0.1:9000", "version": "2.1"})
        instances, _ = self.go_discover("both")
        self.assertEqual(instances, ["instance i1 10.0.0.1:9000"])

        reg.stream.signal(signal.SIGTERM)
        self.assertEqual(watch.read_lines(1, 10), ["delete i1"])
        self.assertEqual(reg.stream.wait(10), 0, reg.stream.stderr())

    @kc.time_limit(90)
    def test_go_registrar_killed_expires_within_ttl_plus_2s(self):
        reg = self.go_register("killed", "i1", "10.0.0.1:8080", ttl=SHORT_TTL_S)
        # Kept alive well past its TTL while the registrar runs.
        time.sleep(SHORT_TTL_S + 1.5)
        self.assertTrue(self.key_exists(reg.key), "%s expired while its registrar ran" % reg.key)

        killed = time.monotonic()
        reg.stream.signal(signal.SIGKILL)
        reg.stream.wait(10)
        took = self.wait_key_gone(reg.key, SHORT_TTL_S + EXPIRY_SLACK_S, since=killed)
        print("killed registrar's key gone after %.2fs (ttl %ds)" % (took, SHORT_TTL_S), file=sys.stderr)
        _, out, _ = self.etcdctl("lease", "timetolive", reg.lease_hex)
        self.assertIn("already expired", out)

    @kc.time_limit(60)
    def test_go_registrar_sigterm_revokes_at_once(self):
        reg = self.go_register("stopped", "i1", "10.0.0.1:8080", ttl=30)
        self.assertTrue(self.key_exists(reg.key))

        stopped = time.monotonic()
        reg.stream.signal(signal.SIGTERM)
        self.assertEqual(reg.stream.wait(10), 0, reg.stream.stderr())
        self.wait_key_gone(reg.key, REVOKE_WITHIN_S, since=stopped)
        self.assertEqual(reg.stream.read_lines(1, 5), ["revoked %s lease %s" % (reg.key, reg.lease_hex)])
        _, out, _ = self.etcdctl("lease", "timetolive", reg.lease_hex)
        self.assertIn("already expired", out)

    @kc.time_limit(120)
    def test_go_registration_and_watch_survive_leader_kill(self):
        # A cluster of its own: this test kills a member.
        self.cluster = kc.start_cluster(self.MEMBERS, kind=SERVER)
        self.addCleanup(self.cluster.cleanup)  # runs last: after the processes stop
        reg = self.go_register("failover", "i1", "10.0.0.1:8080", ttl=SHORT_TTL_S)
        watch = self.start_process(self.go_discover_cmd("failover", "--watch", "--for", "90s"))
        watch.read_until(lambda line: line.startswith("listed "), READY_TIMEOUT_S)

        leader = kc.wait_for_leader(self.cluster)
        self.cluster.kill(leader)
        kc.wait_for_leader(self.cluster, timeout=15)
        # Past two TTLs: the registrar's keepalive moved to a live member.
        time.sleep(2 * SHORT_TTL_S + 1)
        live = [m.endpoint for m in self.cluster.members if m.running()]
        self.assertTrue(reg.stream.running(), reg.stream.stderr())
        out = kc.etcdctl_json(live, "get", reg.key)
        self.assertEqual([kv.get("lease") for kv in out.get("kvs", [])], [reg.lease_id],
                         "%s lost after the leader was killed" % reg.key)
        # The watcher, too, goes on through a live member.
        kc.etcdctl(live, "put", instance_key("failover", "i2"), '{"addr":"10.0.0.2:8080"}')
        self.assertEqual(watch.read_lines(1, 15), ["put i2 10.0.0.2:8080"])

    @kc.time_limit(60)
    def test_go_unreachable_cluster_fails_clearly(self):
        (port,) = kc.free_ports(1)
        p = subprocess.run(self.go_discover_cmd("x", "--dial-timeout", "1s",
                                                endpoints=["127.0.0.1:%d" % port]),
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stdout, "")
        self.assertIn("registry_interop: discover: cannot connect to 127.0.0.1:%d" % port, p.stderr)


# keelctl prints its lease in hex without leading zeros.
KEELCTL_REGISTERED = re.compile(r"^registered (\S+) lease ([0-9a-f]+)$")
KEELCTL_WATCHING = re.compile(r"^# watching from revision \d+$")


class KeelctlInterop(RegistryInterop):
    """keelctl (net/client/keelctl.cc, KEELCTL) against the cluster: what it registers is
    what etcdctl and the Go program (seed §3) read; what they register, it discovers."""

    @classmethod
    def setUpClass(cls):
        kc.require_keelctl()  # before the cluster: a missing binary starts nothing
        super().setUpClass()

    def keelctl_register(self, service, addr, *extra):
        return self.start_registrar(kc.keelctl_cmd(self.endpoints, "register", service, addr, *extra),
                                    ready=KEELCTL_REGISTERED)

    def keelctl_discover(self, service):
        rc, out, err = kc.keelctl(self.endpoints, "discover", service)
        self.assertEqual(rc, 0, err)
        return out.splitlines()

    def keelctl_watch(self, service):
        """A `keelctl discover --watch` and the instances it listed."""
        stream = self.start_process(kc.keelctl_cmd(self.endpoints, "discover", service, "--watch"))
        lines = stream.read_until(lambda text: KEELCTL_WATCHING.match(text) is not None, READY_TIMEOUT_S)
        return stream, lines[:-1]

    def go_cmd(self, subcommand, service, *extra):
        return [go_program(), subcommand, "--endpoints", ",".join(self.endpoints),
                "--service", service, *extra]

    @kc.time_limit(60)
    def test_keelctl_registered_instance_is_visible_to_etcdctl(self):
        # The example, the instance id left to its default (service-addr).
        reg = self.keelctl_register("payment", "10.0.0.1:8080", "--ttl", "10", "--meta", "version=1.0")
        key = instance_key("payment", "payment-10.0.0.1:8080")
        self.assertEqual(reg.key, key)

        _, out, _ = self.etcdctl("get", "--prefix", "/services/payment/")
        lines = out.splitlines()
        self.assertEqual(len(lines), 2, out)
        self.assertEqual(lines[0], key)
        value = json.loads(lines[1])
        self.assertEqual((value["addr"], value["version"]), ("10.0.0.1:8080", "1.0"), lines[1])
        self.assertEqual(self.registry("payment")[key][1], reg.lease_id)

        _, out, _ = self.etcdctl("lease", "timetolive", "--keys", reg.lease_hex)
        m = re.search(r"granted with TTL\((\d+)s\), remaining\((\d+)s\), attached keys\(\[(.*)\]\)", out)
        self.assertIsNotNone(m, out)
        self.assertEqual(int(m.group(1)), 10)
        self.assertEqual(m.group(3), key)

        reg.stream.signal(signal.SIGTERM)
        self.assertEqual(reg.stream.wait(10), 0, reg.stream.stderr())
        self.assertEqual(reg.stream.read_lines(1, 5), ["deregistered " + key])
        self.assertEqual(self.registry("payment"), {})

    @kc.time_limit(120)
    def test_keelctl_registered_instance_is_seen_by_go_discover_and_watch(self):
        watch = self.start_process(self.go_cmd("discover", "togo", "--watch", "--for", "60s"))
        self.assertEqual(watch.read_until(lambda text: text.startswith("listed "), READY_TIMEOUT_S)[:-1], [])

        reg = self.keelctl_register("togo", "10.0.0.1:9000", "--id", "i1", "--ttl", "10",
                                    "--meta", "version=3.0", "--meta", "zone=az1")
        self.assertEqual(watch.read_lines(1, 10), ["put i1 10.0.0.1:9000"], watch.stderr())
        p = subprocess.run(self.go_cmd("discover", "togo"), capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.splitlines()[:-1], ["instance i1 10.0.0.1:9000"])

        reg.stream.signal(signal.SIGTERM)
        self.assertEqual(watch.read_lines(1, 10), ["delete i1"], watch.stderr())
        self.assertEqual(reg.stream.wait(10), 0, reg.stream.stderr())

    @kc.time_limit(120)
    def test_go_registered_instance_appears_in_keelctl_discover_and_watch(self):
        go = go_program()  # first: a skip starts nothing
        watch, listed = self.keelctl_watch("fromgo")
        self.assertEqual(listed, [])

        reg = self.start_registrar([go, "register", "--endpoints", ",".join(self.endpoints),
                                    "--service", "fromgo", "--id", "i1", "--addr", "10.0.0.2:9000",
                                    "--ttl", "10", "--version", "2.1"])
        self.assertEqual(watch.read_lines(1, 10), ["+ i1 10.0.0.2:9000 version=2.1 weight=1"],
                         watch.stderr())
        self.assertEqual(self.keelctl_discover("fromgo"), ["i1 10.0.0.2:9000 version=2.1 weight=1"])
        rc, out, err = kc.keelctl(self.endpoints, "services")
        self.assertEqual(rc, 0, err)
        self.assertIn("fromgo 1", out.splitlines())

        reg.stream.signal(signal.SIGTERM)  # the Go program revokes its lease
        self.assertEqual(watch.read_lines(1, 10), ["- i1 10.0.0.2:9000"], watch.stderr())
        self.assertEqual(reg.stream.wait(10), 0, reg.stream.stderr())
        self.assertEqual(watch.read_lines(1, 1), [])
        self.assertEqual(watch.stderr(), "")


if __name__ == "__main__":
    unittest.main()
