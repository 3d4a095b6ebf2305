"""Start and stop real keeld members (and etcd 3.4) for the end-to-end tests.

Every server listens on 127.0.0.1, on ports picked free by the test, with its data in a
temporary directory; every process a test starts is stopped by that test (SIGTERM, then
SIGKILL after a grace period), also when the test fails.
"""

import functools
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

# KEEL_E2E_KIND=etcd runs the e2e tests against Debian's etcd 3.4 instead of keeld: the
# check that what they expect is etcd's behaviour.
KIND = os.environ.get("KEEL_E2E_KIND", "keel")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEELD = os.environ.get("KEELD", os.path.join(ROOT, "build", "net", "keeld"))
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def free_ports(n):
    """n distinct ports that were free a moment ago (bound then released)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def etcdctl(endpoints, *args, stdin=None, timeout=20, check=True, env_extra=None):
    """Runs etcdctl 3.4 (API v3) and returns (returncode, stdout, stderr)."""
    env = dict(os.environ, ETCDCTL_API="3")
    if env_extra:
        env.update(env_extra)
    cmd = [ETCDCTL, "--endpoints=" + ",".join(endpoints), "--command-timeout=10s", *args]
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError("%s failed (%d):\nstdout: %s\nstderr: %s"
                             % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    return p.returncode, p.stdout, p.stderr


class Member:
    def __init__(self, name, client_port, peer_port, metrics_port, data_dir, log_path):
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.metrics_port = metrics_port
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc = None

    @property
    def endpoint(self):
        return "127.0.0.1:%d" % self.client_port

    @property
    def peer_url(self):
        return "http://127.0.0.1:%d" % self.peer_port

    @property
    def client_url(self):
        return "http://127.0.0.1:%d" % self.client_port

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""


class Cluster:
    """n keeld members (or etcd members, kind="etcd") on loopback."""

    def __init__(self, n=1, kind="keel", extra_flags=(), token="keel-e2e"):
        self.kind = kind
        self.extra_flags = list(extra_flags)
        self.token = token
        self.dir = tempfile.mkdtemp(prefix="keel-e2e-%s-" % kind)
        ports = free_ports(3 * n)
        self.members = []
        for i in range(n):
            name = "n%d" % (i + 1)
            self.members.append(Member(name, ports[3 * i], ports[3 * i + 1], ports[3 * i + 2],
                                       os.path.join(self.dir, name + ".data"),
                                       os.path.join(self.dir, name + ".log")))

    @property
    def endpoints(self):
        return [m.endpoint for m in self.members]

    def initial_cluster(self):
        return ",".join("%s=%s" % (m.name, m.peer_url) for m in self.members)

    def command(self, m):
        binary = KEELD if self.kind == "keel" else ETCD
        cmd = [binary,
               "--name", m.name,
               "--data-dir", m.data_dir,
               "--listen-client-urls", m.client_url,
               "--advertise-client-urls", m.client_url,
               "--listen-peer-urls", m.peer_url,
               "--initial-advertise-peer-urls", m.peer_url,
               "--initial-cluster", self.initial_cluster(),
               "--initial-cluster-token", self.token,
               "--initial-cluster-state", "new",
               "--listen-metrics-urls", "http://127.0.0.1:%d" % m.metrics_port]
        if self.kind == "etcd":
            cmd += ["--logger", "zap", "--log-outputs", m.log_path + ".zap"]
        return cmd + self.extra_flags

    def start_member(self, m):
        log = open(m.log_path, "ab")
        m.proc = subprocess.Popen(self.command(m), stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        log.close()

    def start(self, timeout=15):
        for m in self.members:
            self.start_member(m)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=15, members=None):
        """Until every (running) member answers a linearizable read."""
        members = members or [m for m in self.members if m.running()]
        deadline = time.time() + timeout
        for m in members:
            while True:
                if not m.running():
                    raise AssertionError("%s exited (%s):\n%s" % (m.name, m.proc.returncode, m.log()[-3000:]))
                rc, _, _ = etcdctl([m.endpoint], "get", "ready-probe", check=False, timeout=10)
                if rc == 0:
                    break
                if time.time() > deadline:
                    raise AssertionError("%s not ready in %ss:\n%s" % (m.name, timeout, m.log()[-3000:]))
                time.sleep(0.1)

    def leader(self):
        """The member that says it leads (via etcdctl endpoint status), or None."""
        for m in self.members:
            if not m.running():
                continue
            rc, out, _ = etcdctl([m.endpoint], "endpoint", "status", "-w", "json", check=False)
            if rc != 0:
                continue
            for s in json.loads(out):
                st = s["Status"]
                # etcdctl's JSON omits a zero field: no "leader" while there is none.
                if st.get("leader") == st["header"]["member_id"]:
                    return m
        return None

    def kill(self, m, sig=signal.SIGKILL):
        if m.running():
            m.proc.send_signal(sig)
            m.proc.wait(timeout=30)

    def stop_member(self, m, grace=10):
        """SIGTERM, then SIGKILL after `grace` seconds. Returns the exit code."""
        if m.proc is None:
            return None
        if m.proc.poll() is None:
            m.proc.send_signal(signal.SIGTERM)
            try:
                m.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait()
        return m.proc.returncode

    def stop(self):
        codes = {}
        for m in self.members:
            codes[m.name] = self.stop_member(m)
        return codes

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()
        return False


# Helpers for the etcdctl and differential tests (tests/e2e/test_etcdctl.py,
# tests/e2e/test_differential.py).

def start_cluster(n=1, kind="keel", timeout=20, **kwargs):
    """A started Cluster; if it fails to start, its processes and temp dir are gone too."""
    cluster = Cluster(n, kind=kind, **kwargs)
    try:
        cluster.start(timeout)
    except BaseException:
        cluster.cleanup()
        raise
    return cluster


def wait_for_leader(cluster, timeout=10):
    """The member that leads, polling until one says so or `timeout` seconds pass."""
    deadline = time.time() + timeout
    while True:
        m = cluster.leader()
        if m is not None:
            return m
        if time.time() > deadline:
            raise AssertionError("no leader within %ss" % timeout)
        time.sleep(0.1)


def etcdctl_json(endpoints, *args, **kwargs):
    """etcdctl ... -w json, parsed."""
    _, out, _ = etcdctl(endpoints, *args, "-w", "json", **kwargs)
    return json.loads(out)


class TimeLimitExceeded(AssertionError):
    pass


def time_limit(seconds):
    """Decorates a test method: it fails (TimeLimitExceeded) after `seconds` of wall time.

    Uses SIGALRM, so only for code on the main thread (as unittest runs tests). A
    subprocess.run interrupted this way kills its child before the exception propagates.
    """
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            def on_alarm(signum, frame):
                raise TimeLimitExceeded("%s: over its time limit of %ss" % (fn.__name__, seconds))
            previous = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, seconds)
            try:
                return fn(*args, **kwargs)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
        return wrapper
    return decorate


class EtcdctlStream:
    """A long-running etcdctl (watch, lease keep-alive) whose stdout is read line by line.

    Lines are read with deadlines, never a blocking read; stop() ends the process
    (SIGTERM, then SIGKILL) and is safe to call twice, so register it with addCleanup.
    """

    def __init__(self, endpoints, *args, env_extra=None):
        env = dict(os.environ, ETCDCTL_API="3")
        if env_extra:
            env.update(env_extra)
        self._start([ETCDCTL, "--endpoints=" + ",".join(endpoints), *args], env)

    def _start(self, cmd, env):
        """Starts `cmd` with pumps for its stdout lines and its stderr."""
        self.cmd = [str(a) for a in cmd]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)
        self._lines = queue.Queue()
        self._stderr = []
        self._threads = [threading.Thread(target=self._pump_stdout, daemon=True),
                         threading.Thread(target=self._pump_stderr, daemon=True)]
        for t in self._threads:
            t.start()

    def _pump_stdout(self):
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)  # EOF

    def _pump_stderr(self):
        for line in self.proc.stderr:
            self._stderr.append(line)

    def read_lines(self, n, timeout):
        """Up to n stdout lines: fewer if etcdctl exits or `timeout` seconds pass first."""
        deadline = time.time() + timeout
        out = []
        while len(out) < n:
            remaining = deadline - time.time()
            if remaining <= 0:
                break
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                self._lines.put(None)  # later reads see EOF too
                break
            out.append(line)
        return out

    def read_until(self, predicate, timeout):
        """Stdout lines up to and including the first for which predicate(line) holds.

        Raises AssertionError (with what was read) if etcdctl exits or `timeout` passes first.
        """
        deadline = time.time() + timeout
        out = []
        while True:
            got = self.read_lines(1, max(0.0, deadline - time.time()))
            if not got:
                raise AssertionError("%s: no matching line within %ss; read %r; stderr %r"
                                     % (" ".join(self.cmd), timeout, out, self.stderr()))
            out.append(got[0])
            if predicate(got[0]):
                return out

    def stderr(self):
        return "".join(self._stderr)

    def running(self):
        return self.proc.poll() is None

    def stop(self, grace=5):
        """Ends etcdctl and returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(timeout=grace)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if not any(t.is_alive() for t in self._threads):
                pipe.close()
        return self.proc.returncode


# Helpers for the client-library and failover tests (tests/e2e/test_python_etcd3.py,
# tests/e2e/test_failover.py).

def wait_for(predicate, timeout, interval=0.05, what="condition"):
    """Polls predicate() until it returns a true value (returned) or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("%s not reached within %ss" % (what, timeout))
        time.sleep(interval)


def http_get(url, timeout=5):
    """(status, body text) of an HTTP GET; error statuses are returned, not raised."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metrics_url(member):
    """The base URL of a member's --listen-metrics-urls (/health, /metrics)."""
    return "http://127.0.0.1:%d" % member.metrics_port


def quiet_etcd3_watch_thread_exits():
    """python3-etcd3 0.12's watch thread dies with a ValueError once its client is closed:
    the library's way to stop, not a test failure. Silences exactly that."""
    default_hook = threading.excepthook

    def hook(args):
        if (args.exc_type is ValueError and args.thread is not None
                and args.thread.name.startswith("etcd3_watch_")):
            return
        default_hook(args)
    threading.excepthook = hook


# Helpers for the registry interop tests (tests/e2e/test_go_interop.py).

class ProcessStream(EtcdctlStream):
    """Any long-running command (a registrar, a discover --watch) read line by line:
    EtcdctlStream's deadline reads and stop(), for a command line given whole."""

    def __init__(self, cmd, env=None):  # pylint: disable=super-init-not-called
        self._start(cmd, env)

    def signal(self, sig):
        """Sends `sig` if the process still runs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout):
        """The exit code, waiting up to `timeout` s (subprocess.TimeoutExpired past it)."""
        return self.proc.wait(timeout=timeout)


# Helpers for keelctl, keel's registry CLI (tests/e2e/test_registry.py and
# tests/e2e/test_go_interop.py's KeelctlInterop).

# The keelctl built next to KEELD (build/net/keeld -> build/net/client/keelctl).
KEELCTL = os.environ.get("KEELCTL") or os.path.join(os.path.dirname(KEELD), "client", "keelctl")


def keelctl_cmd(endpoints, *args):
    """keelctl's command line: `keelctl --endpoints a,b,c ARGS...`."""
    return [KEELCTL, "--endpoints", ",".join(endpoints), *[str(a) for a in args]]


def keelctl(endpoints, *args, timeout=30):
    """Runs keelctl to its end: (returncode, stdout, stderr)."""
    p = subprocess.run(keelctl_cmd(endpoints, *args), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def require_keelctl():
    """AssertionError naming the path (and how to build it) if there is no keelctl."""
    if not os.access(KEELCTL, os.X_OK):
        raise AssertionError("no keelctl at %s (KEELCTL; built by `ninja -C <build dir> "
                             "net/client/keelctl`)" % KEELCTL)


def watch_stream_count(member):
    """Watch streams open on `member`, from its /metrics (keeld's keel_watch_streams,
    etcd's etcd_debugging_mvcc_watch_stream_total)."""
    status, body = http_get(metrics_url(member) + "/metrics")
    if status != 200:
        raise AssertionError("%s /metrics: HTTP %d" % (member.name, status))
    for name in ("keel_watch_streams", "etcd_debugging_mvcc_watch_stream_total"):
        for line in body.splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
    raise AssertionError("%s /metrics has no watch stream gauge" % member.name)
