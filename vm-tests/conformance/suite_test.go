// containerd's snapshotter conformance suite (snapshots/testsuite, from
// Debian's containerd sources) run against `thinlayer serve` through
// containerd's proxy snapshotter client, and against containerd's own
// native and overlay snapshotters as a control. See README.md.
package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/defaults"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/pkg/dialer"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/native"
	"github.com/containerd/containerd/snapshots/overlay"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"github.com/moby/sys/mountinfo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Set by tests/vm/conformance.rs.
const (
	// The thinlayer binary.
	envBinary = "THINLAYER_CONFORMANCE_BIN"
	// ext4 or xfs: `pool init --fs`.
	envFS = "THINLAYER_CONFORMANCE_FS"
	// A directory on a disk that takes loop devices with direct I/O (not
	// tmpfs); each subtest's root is made in it as root-N.
	envDir = "THINLAYER_CONFORMANCE_DIR"
)

// How long `thinlayer serve` may take to listen, or to stop: generous, for
// a loaded machine under emulation.
const deadline = 120 * time.Second

// Subtests numbered in the order they ask for a snapshotter, from 1.
var roots int64

func TestThinlayer(t *testing.T) {
	bin, fs, dir := env(t, envBinary), env(t, envFS), env(t, envDir)
	testsuite.SnapshotterSuite(t, "thinlayer-"+fs, func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		r := filepath.Join(dir, fmt.Sprintf("root-%d", atomic.AddInt64(&roots, 1)))
		// The suite's own root: where the subtest mounts what it asks for.
		return startThinlayer(bin, fs, r, filepath.Dir(root))
	})
}

func TestNative(t *testing.T) {
	testsuite.SnapshotterSuite(t, "native", inProcess(native.NewSnapshotter))
}

func TestOverlay(t *testing.T) {
	testsuite.SnapshotterSuite(t, "overlay", inProcess(func(root string) (snapshots.Snapshotter, error) {
		return overlay.NewSnapshotter(root)
	}))
}

// inProcess is the suite's factory for a snapshotter made by newSn in this
// process, closed by the cleanup.
func inProcess(newSn func(root string) (snapshots.Snapshotter, error)) testsuite.SnapshotterFunc {
	return func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := newSn(root)
		if err != nil {
			return nil, nil, err
		}
		return sn, sn.Close, nil
	}
}

func env(t *testing.T, name string) string {
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set: run this through tests/vm/conformance.rs (cargo test --test vm conformance)", name)
	}
	return v
}

// startThinlayer makes a pool of filesystem fs at root r, starts `thinlayer
// serve` on it and connects containerd's proxy client to it. The returned
// cleanup also unmounts what is left mounted under work (and reports it:
// the pool cannot go while its devices are mounted).
func startThinlayer(bin, fs, r, work string) (snapshots.Snapshotter, func() error, error) {
	if err := os.MkdirAll(r, 0o700); err != nil {
		return nil, nil, err
	}
	if out, err := exec.Command(bin, "--root", r, "pool", "init",
		"--data-size", "4G", "--metadata-size", "64M", "--base-size", "1G", "--fs", fs).CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("thinlayer pool init in %s: %v\n%s", r, err, out)
	}
	sock := filepath.Join(r, "thinlayer.sock")
	logPath := r + ".serve.log"
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, nil, join(err, destroy(bin, r))
	}
	serve := exec.Command(bin, "--root", r, "-v", "serve", "--socket", sock)
	serve.Stdout, serve.Stderr = logFile, logFile
	// If this process dies (a -test.timeout panic), the server goes too.
	serve.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := serve.Start(); err != nil {
		logFile.Close()
		return nil, nil, join(err, destroy(bin, r))
	}
	exited := make(chan error, 1)
	go func() { exited <- serve.Wait(); logFile.Close() }()
	stopAndDestroy := func() error {
		var errs []error
		if err := serve.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("SIGTERM thinlayer serve: %w", err))
		}
		select {
		case err := <-exited:
			if err != nil {
				errs = append(errs, fmt.Errorf("thinlayer serve on %s exited with %v:\n%s", r, err, tail(logPath)))
			}
		case <-time.After(deadline):
			serve.Process.Kill()
			<-exited
			errs = append(errs, fmt.Errorf("thinlayer serve on %s did not stop within %v of SIGTERM:\n%s", r, deadline, tail(logPath)))
		}
		if left := unmountUnder(work); len(left) > 0 {
			errs = append(errs, fmt.Errorf("left mounted by the subtest, unmounted before pool destroy: %s", strings.Join(left, ", ")))
		}
		return join(append(errs, destroy(bin, r))...)
	}
	if err := waitListening(sock, exited); err != nil {
		return nil, nil, join(fmt.Errorf("%w\n%s", err, tail(logPath)), stopAndDestroy())
	}
	conn, err := dial(sock)
	if err != nil {
		return nil, nil, join(err, stopAndDestroy())
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "thinlayer")
	return sn, func() error {
		return join(conn.Close(), stopAndDestroy())
	}, nil
}

// dial connects to a proxy snapshotter's address with the options
// containerd 1.6 uses for `[proxy_plugins]` (services/server/server.go,
// proxyClients.getClient), and waits until the connection is up. containerd
// does not wait: a connection attempt that has not completed within gRPC's
// 20 s connect timeout fails the calls made meanwhile, and it retries in the
// background. On a starved machine (a loaded host running the emulated VM)
// a first attempt can take that long, which would fail a subtest for
// nothing the snapshotter did; attempts are retried here until the
// deadline, which then says the server never accepted a connection.
func dial(address string) (*grpc.ClientConn, error) {
	backoffConfig := backoff.DefaultConfig
	backoffConfig.MaxDelay = 3 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	conn, err := grpc.DialContext(ctx, dialer.DialAddress(address),
		grpc.WithBlock(),
		grpc.WithInsecure(),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoffConfig}),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize)),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize)),
	)
	if err != nil {
		return nil, fmt.Errorf("no gRPC connection to %q within %v: %w", address, deadline, err)
	}
	return conn, nil
}

// waitListening waits until something accepts connections on sock, or the
// server exits, or the deadline passes.
func waitListening(sock string, exited <-chan error) error {
	end := time.Now().Add(deadline)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			return c.Close()
		}
		select {
		case err := <-exited:
			return fmt.Errorf("thinlayer serve exited (%v) before it listened on %s", err, sock)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(end) {
			return fmt.Errorf("thinlayer serve did not listen on %s within %v", sock, deadline)
		}
	}
}

// destroy runs `thinlayer pool destroy` on r and removes r. A root whose
// pool is not destroyed is kept, for the test's fixture to find.
func destroy(bin, r string) error {
	if out, err := exec.Command(bin, "--root", r, "pool", "destroy").CombinedOutput(); err != nil {
		return fmt.Errorf("thinlayer pool destroy in %s: %v\n%s", r, err, out)
	}
	return os.RemoveAll(r)
}

// unmountUnder unmounts every mount point under dir, deepest first, and
// returns them.
func unmountUnder(dir string) []string {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return []string{fmt.Sprintf("(cannot list mounts: %v)", err)}
	}
	sort.Slice(infos, func(i, j int) bool { return len(infos[i].Mountpoint) > len(infos[j].Mountpoint) })
	var left []string
	for _, m := range infos {
		if err := mount.UnmountAll(m.Mountpoint, 0); err != nil {
			left = append(left, fmt.Sprintf("%s (unmount: %v)", m.Mountpoint, err))
		} else {
			left = append(left, m.Mountpoint)
		}
	}
	return left
}

// join is the errors that are not nil, one a line; nil if none.
func join(errs ...error) error {
	var msgs []string
	for _, err := range errs {
		if err != nil {
			msgs = append(msgs, err.Error())
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	return errors.New(strings.Join(msgs, "\n"))
}

// tail is the last lines of the file at path, for error messages.
func tail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return fmt.Sprintf("last lines of %s:\n%s", path, bytes.Join(lines, []byte("\n")))
}
