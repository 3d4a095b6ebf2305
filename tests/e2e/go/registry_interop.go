// registry_interop: the seed's §3 service registration (3.1) and discovery (3.2), written
// with etcd 3.4's Go client, as a user of an etcd-backed registry would write them. The
// e2e tests (tests/e2e/test_go_interop.py) run it against keeld to show that keel's
// registry layout and etcd v3 API serve such programs unchanged.
//
// Built offline in GOPATH mode from Debian's golang-etcd-server-dev (etcd 3.4.23) by
// tests/e2e/go/build.sh. etcd 3.4's client lives at go.etcd.io/etcd/clientv3; the seed
// imports etcd 3.5's path, go.etcd.io/etcd/client/v3, whose API used here is the same.
//
//	registry_interop register --endpoints a,b,c --service payment --id ID \
//	    --addr 10.0.0.1:8080 --ttl 10 [--version 1.0]
//	registry_interop discover --endpoints a,b,c --service payment [--watch] [--for 5s]
//
// Output (stdout, one line per fact, each written at once):
//
//	register: "registered <key> lease <16 hex digits>", then on SIGINT/SIGTERM
//	          "revoked <key> lease <hex>" after the lease is revoked.
//	discover: "instance <id> <addr>" per instance, sorted by id, then "listed <revision>";
//	          with --watch, "put <id> <addr>" / "delete <id>" per event until --for
//	          elapses or SIGINT/SIGTERM.
//
// Errors go to stderr prefixed "registry_interop:"; the exit code is 0 on success, 1 on a
// failure (unreachable cluster, a call that failed or timed out, a lost lease, a canceled
// watch), 2 on bad usage.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3" // etcd 3.5+: "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

const prog = "registry_interop"

// instance is the JSON value stored under /services/{service}/instances/{id} (seed §3.1).
type instance struct {
	Addr    string `json:"addr"`
	Version string `json:"version,omitempty"`
}

// common holds the flags both subcommands take.
type common struct {
	endpoints   string
	service     string
	dialTimeout time.Duration
	callTimeout time.Duration
}

func (c *common) bind(fs *flag.FlagSet) {
	fs.StringVar(&c.endpoints, "endpoints", "127.0.0.1:2379", "comma-separated etcd v3 endpoints (host:port or http://host:port)")
	fs.StringVar(&c.service, "service", "", "service name (required)")
	fs.DurationVar(&c.dialTimeout, "dial-timeout", 5*time.Second, "timeout for connecting to the cluster")
	fs.DurationVar(&c.callTimeout, "timeout", 5*time.Second, "timeout of each request (grant, put, get, revoke)")
}

func (c *common) check() error {
	if c.service == "" || strings.Contains(c.service, "/") {
		return fmt.Errorf("--service must be a non-empty name without '/' (got %q)", c.service)
	}
	if c.endpointList() == nil {
		return errors.New("--endpoints must name at least one endpoint")
	}
	if c.dialTimeout <= 0 || c.callTimeout <= 0 {
		return errors.New("--dial-timeout and --timeout must be positive")
	}
	return nil
}

func (c *common) endpointList() []string {
	var eps []string
	for _, ep := range strings.Split(c.endpoints, ",") {
		if ep = strings.TrimSpace(ep); ep != "" {
			eps = append(eps, ep)
		}
	}
	return eps
}

// prefix is the directory of the service's instances (seed §3.2).
func (c *common) prefix() string {
	return fmt.Sprintf("/services/%s/instances/", c.service)
}

// connect dials the cluster, failing after --dial-timeout if no endpoint answers
// (grpc.WithBlock, as etcdctl does; without it clientv3.New returns at once and only the
// first request fails).
func (c *common) connect() (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   c.endpointList(),
		DialTimeout: c.dialTimeout,
		DialOptions: []grpc.DialOption{grpc.WithBlock()},
	})
	if err != nil {
		return nil, fmt.Errorf("cannot connect to %s within %s: %v", c.endpoints, c.dialTimeout, err)
	}
	return cli, nil
}

func (c *common) callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), c.callTimeout)
}

// say writes one line to stdout at once: os.Stdout is unbuffered in Go, so each line is
// one write(2) and a reader of the pipe sees it as soon as it is printed.
func say(format string, args ...interface{}) {
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

func warn(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, prog+": "+format+"\n", args...)
}

func fail(format string, args ...interface{}) int {
	warn(format, args...)
	return 1
}

// signals delivers SIGINT and SIGTERM (the registrar's and the watcher's way to stop).
func signals() chan os.Signal {
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	return ch
}

// register: seed §3.1 (Grant, Put with the lease, KeepAlive), then keeps the lease alive
// until a signal and revokes it, so the instance disappears at once instead of after ttl.
func register(args []string) int {
	fs := flag.NewFlagSet(prog+" register", flag.ContinueOnError)
	var c common
	c.bind(fs)
	id := fs.String("id", "", "instance id (required), e.g. service-payment-10.0.0.1:8080")
	addr := fs.String("addr", "", "instance address host:port (required)")
	ttl := fs.Int64("ttl", 10, "lease TTL in seconds")
	version := fs.String("version", "1.0", "instance version, stored in the JSON value")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := c.check(); err != nil {
		warn("register: %v", err)
		return 2
	}
	if *id == "" || *addr == "" || *ttl <= 0 {
		warn("register: --id and --addr are required and --ttl must be positive")
		return 2
	}
	value, err := json.Marshal(instance{Addr: *addr, Version: *version})
	if err != nil {
		return fail("register: encoding the instance: %v", err)
	}
	key := c.prefix() + *id

	sigs := signals()
	cli, err := c.connect()
	if err != nil {
		return fail("register: %v", err)
	}
	defer cli.Close()

	// Create the lease.
	ctx, cancel := c.callCtx()
	lease, err := cli.Grant(ctx, *ttl)
	cancel()
	if err != nil {
		return fail("register: grant of a %ds lease: %v", *ttl, err)
	}
	// Write the instance bound to the lease.
	ctx, cancel = c.callCtx()
	_, err = cli.Put(ctx, key, string(value), clientv3.WithLease(lease.ID))
	cancel()
	if err != nil {
		revoke(&c, cli, lease.ID)
		return fail("register: put %s: %v", key, err)
	}
	// Keep the lease alive; the client sends a renewal every ttl/3 on one stream.
	kaCtx, kaCancel := context.WithCancel(context.Background())
	defer kaCancel()
	kas, err := cli.KeepAlive(kaCtx, lease.ID)
	if err != nil {
		revoke(&c, cli, lease.ID)
		return fail("register: keepalive of lease %016x: %v", int64(lease.ID), err)
	}
	say("registered %s lease %016x", key, int64(lease.ID))

	for {
		select {
		case sig := <-sigs:
			kaCancel()
			if err := revoke(&c, cli, lease.ID); err != nil {
				return fail("register: on %v: %v", sig, err)
			}
			say("revoked %s lease %016x", key, int64(lease.ID))
			return 0
		case _, ok := <-kas:
			// The seed ignores this; the channel closes when the lease expired or could
			// not be renewed (e.g. the cluster was unreachable for longer than the ttl),
			// and the instance is then no longer registered.
			if !ok {
				return fail("register: lease %016x lost (expired or keepalive failed); %s is no longer registered",
					int64(lease.ID), key)
			}
		}
	}
}

func revoke(c *common, cli *clientv3.Client, id clientv3.LeaseID) error {
	ctx, cancel := c.callCtx()
	defer cancel()
	if _, err := cli.Revoke(ctx, id); err != nil {
		return fmt.Errorf("revoke of lease %016x: %v", int64(id), err)
	}
	return nil
}

// discover: seed §3.2 (Get with the prefix, then Watch the prefix), except that the watch
// starts at the listed revision + 1 so that no change between the two is missed.
func discover(args []string) int {
	fs := flag.NewFlagSet(prog+" discover", flag.ContinueOnError)
	var c common
	c.bind(fs)
	watch := fs.Bool("watch", false, "after listing, print each change until --for elapses or a signal")
	forDur := fs.Duration("for", 0, "with --watch, stop (exit 0) after this long; 0: until a signal")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := c.check(); err != nil {
		warn("discover: %v", err)
		return 2
	}
	if *forDur < 0 {
		warn("discover: --for must not be negative")
		return 2
	}
	prefix := c.prefix()

	sigs := signals()
	cli, err := c.connect()
	if err != nil {
		return fail("discover: %v", err)
	}
	defer cli.Close()

	ctx, cancel := c.callCtx()
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return fail("discover: get --prefix %s: %v", prefix, err)
	}
	type listed struct{ id, addr string }
	var found []listed
	for _, kv := range resp.Kvs {
		id := strings.TrimPrefix(string(kv.Key), prefix)
		addr, err := parseAddr(kv.Value)
		if err != nil {
			warn("discover: skipping %s: %v", kv.Key, err)
			continue
		}
		found = append(found, listed{id, addr})
	}
	sort.Slice(found, func(i, j int) bool { return found[i].id < found[j].id })
	for _, f := range found {
		say("instance %s %s", f.id, f.addr)
	}
	rev := resp.Header.Revision
	say("listed %d", rev)
	if !*watch {
		return 0
	}

	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	var deadline <-chan time.Time
	if *forDur > 0 {
		timer := time.NewTimer(*forDur)
		defer timer.Stop()
		deadline = timer.C
	}
	// WithRequireLeader: a member cut off from the leader cancels the watch instead of
	// leaving it silent.
	wch := cli.Watch(clientv3.WithRequireLeader(wctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for {
		select {
		case <-sigs:
			return 0
		case <-deadline:
			return 0
		case wresp, ok := <-wch:
			if !ok {
				return fail("discover: watch of %s closed", prefix)
			}
			if err := wresp.Err(); err != nil {
				if wresp.CompactRevision != 0 {
					return fail("discover: watch of %s from revision %d: compacted at %d: %v",
						prefix, rev+1, wresp.CompactRevision, err)
				}
				return fail("discover: watch of %s: %v", prefix, err)
			}
			for _, ev := range wresp.Events {
				id := strings.TrimPrefix(string(ev.Kv.Key), prefix)
				switch ev.Type {
				case clientv3.EventTypePut:
					addr, err := parseAddr(ev.Kv.Value)
					if err != nil {
						warn("discover: skipping put of %s: %v", ev.Kv.Key, err)
						continue
					}
					say("put %s %s", id, addr)
				case clientv3.EventTypeDelete:
					say("delete %s", id)
				}
			}
		}
	}
}

func parseAddr(value []byte) (string, error) {
	var in instance
	if err := json.Unmarshal(value, &in); err != nil {
		return "", fmt.Errorf("value is not instance JSON: %v", err)
	}
	if in.Addr == "" {
		return "", errors.New(`value has no "addr"`)
	}
	return in.Addr, nil
}

func usage() {
	fmt.Fprintf(os.Stderr, `usage:
  %[1]s register --endpoints a,b,c --service NAME --id ID --addr HOST:PORT [--ttl 10] [--version 1.0]
  %[1]s discover --endpoints a,b,c --service NAME [--watch] [--for DURATION]
  (both also take --dial-timeout and --timeout; "%[1]s CMD -h" lists the flags)
`, prog)
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	switch os.Args[1] {
	case "register":
		os.Exit(register(os.Args[2:]))
	case "discover":
		os.Exit(discover(os.Args[2:]))
	case "-h", "--help", "help":
		usage()
		os.Exit(0)
	default:
		warn("unknown command %q", os.Args[1])
		usage()
		os.Exit(2)
	}
}
