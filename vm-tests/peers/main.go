// peers drives one containerd through its snapshots API, against several
// snapshotters in turn (thinlayer's proxy plugin, containerd's overlayfs and
// devmapper), and prints what it measured as JSON on stdout. It is started
// by benches/cow (the peers workload), which sets up each snapshotter on
// its own loop devices and starts containerd; see benches/README.md.
//
// Every call goes through containerd's client: snapshots are made, mounted
// and removed as containerd's own users do, removals reach the snapshotter
// through containerd's garbage collector. Nothing in a timed step starts a
// process.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/containerd/containerd"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/images"
	"github.com/containerd/containerd/leases"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/dialer"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/opencontainers/image-spec/identity"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
)

// Figure is one measured quantity of one snapshotter: the values of its
// repetitions, or why it could not be measured.
type Figure struct {
	Workload    string    `json:"workload"`
	Metric      string    `json:"metric"`
	Unit        string    `json:"unit"`
	Param       uint64    `json:"param"`
	Snapshotter string    `json:"snapshotter"`
	Values      []float64 `json:"values"`
	Error       string    `json:"error,omitempty"`
}

// Peer is one snapshotter under test and how to observe it from outside
// containerd.
type Peer struct {
	Name string
	// Loop devices (loop3, ...) that take its writes.
	Loops []string
	// Where its space in use is read: "statfs:PATH" (a filesystem) or
	// "pool:NAME:BLOCKBYTES" (a thin pool's data blocks in use).
	Space string
	// Kind of backend, for telling when a removed snapshot is gone from
	// it: "proxy:SOCKET", "overlayfs" or "devmapper".
	Backend string
	// The host files behind its data loop devices, whose allocation tells
	// when freed space is back on the host.
	Files []string
	// Its Prometheus endpoint (http://HOST:PORT/metrics), or "" if none.
	Metrics string
}

type config struct {
	socket    string
	dir       string
	cycles    int
	layers    int
	files     int
	fileSize  int64
	writeSize int64
	reps      int
	idle      int
	// Live containers at which the teardown workload times a create, in
	// increasing order; the last is the N torn down.
	live []int
	// The last of live for devmapper, when not 0, the others scaled
	// alike: its every step runs dmsetup processes (on an idle machine,
	// 200 took 2 minutes to tear down).
	liveDevmapper int
	// The parallel workload: clients at once, cycles each.
	clients        int
	parallelCycles int
	// The space-back workload: bytes written by the container, runs, and
	// how long freed space may take to come back.
	spaceSize     int64
	spaceReps     int
	spaceDeadline time.Duration
	// The unpack workload's image (an OCI archive), the entries of its
	// layer, and the workload's repetitions.
	archive    string
	entries    uint64
	unpackReps int
	deadline   time.Duration
	peers      []Peer
}

// The bench's namespace in containerd.
const namespace = "peers"

var out []Figure

// StepTime is what `thinlayer serve`'s metrics say one workload cost: the
// calls of one step of one operation (Kind "step": Op and Step) or of one
// snapshotter method (Kind "call": Op is the method), counted and summed
// between a scrape before the workload and one after it; or why they could
// not be read (Error).
type StepTime struct {
	Snapshotter string  `json:"snapshotter"`
	Workload    string  `json:"workload"`
	Kind        string  `json:"kind"`
	Op          string  `json:"op"`
	Step        string  `json:"step"`
	Calls       float64 `json:"calls"`
	Seconds     float64 `json:"seconds"`
	Error       string  `json:"error,omitempty"`
}

var steps []StepTime

func main() {
	var cfg config
	var peers string
	flag.StringVar(&cfg.socket, "socket", "", "containerd's socket")
	flag.StringVar(&cfg.dir, "dir", "", "a directory for mount points")
	flag.IntVar(&cfg.cycles, "cycles", 10, "prepare cycles")
	flag.IntVar(&cfg.layers, "layers", 16, "layers of the containerd-shaped image")
	flag.IntVar(&cfg.files, "files", 10, "files per layer")
	flag.Int64Var(&cfg.fileSize, "file-size", 1<<20, "bytes per file")
	flag.Int64Var(&cfg.writeSize, "first-write-size", 1<<30, "the file of the first-write workload")
	flag.IntVar(&cfg.reps, "reps", 3, "repetitions")
	flag.IntVar(&cfg.idle, "idle", 10, "idle containers")
	var live string
	flag.StringVar(&live, "live", "0,250,500,1000", "live containers at which the teardown workload times a create; the last are torn down")
	flag.IntVar(&cfg.clients, "clients", 8, "clients of the parallel workload")
	flag.IntVar(&cfg.parallelCycles, "parallel-cycles", 20, "prepare cycles of each client of the parallel workload")
	flag.Int64Var(&cfg.spaceSize, "space-size", 64<<20, "bytes the space-back workload's container writes")
	flag.IntVar(&cfg.spaceReps, "space-reps", 3, "runs of the space-back workload")
	flag.DurationVar(&cfg.spaceDeadline, "space-deadline", 120*time.Second, "how long freed space may take to come back")
	flag.IntVar(&cfg.liveDevmapper, "live-devmapper", 0, "the last of -live on devmapper, the others scaled alike (0: -live as it is)")
	flag.StringVar(&cfg.archive, "unpack-archive", "", "the OCI image archive of the unpack workload (one layer)")
	flag.Uint64Var(&cfg.entries, "unpack-entries", 0, "entries of the unpack archive's layer")
	flag.IntVar(&cfg.unpackReps, "unpack-reps", 3, "repetitions of the unpack")
	flag.DurationVar(&cfg.deadline, "deadline", 300*time.Second, "how long a removal may take to reach the snapshotter")
	flag.StringVar(&peers, "peers", "", "NAME;LOOP,LOOP;SPACE;BACKEND;FILE,FILE;METRICS entries separated by |")
	flag.Parse()
	if cfg.archive == "" {
		fatal(errors.New("no -unpack-archive"))
	}
	for _, n := range strings.Split(live, ",") {
		v, err := strconv.Atoi(n)
		if err != nil || v < 0 || (len(cfg.live) > 0 && v <= cfg.live[len(cfg.live)-1]) {
			fatal(fmt.Errorf("bad -live %q: increasing counts", live))
		}
		cfg.live = append(cfg.live, v)
	}
	for _, p := range strings.Split(peers, "|") {
		f := strings.Split(p, ";")
		if len(f) != 6 {
			fatal(fmt.Errorf("bad -peers entry %q", p))
		}
		cfg.peers = append(cfg.peers, Peer{f[0], strings.Split(f[1], ","), f[2], f[3], strings.Split(f[4], ","), f[5]})
	}
	client, err := containerd.New(cfg.socket, containerd.WithDefaultNamespace(namespace), containerd.WithTimeout(cfg.deadline))
	if err != nil {
		fatal(fmt.Errorf("connect to containerd on %s: %w", cfg.socket, err))
	}
	defer client.Close()
	for _, p := range cfg.peers {
		r, err := newRunner(client, p, cfg)
		if err != nil {
			fatal(err)
		}
		for _, w := range []struct {
			name string
			run  func(*runner)
		}{
			{prepareCycle, (*runner).prepareCycle},
			{parallel, (*runner).parallel},
			{shape2988, (*runner).shape2988},
			{firstWrite, (*runner).firstWrite},
			{idleCost, (*runner).idleCost},
			{spaceBack, (*runner).spaceBack},
			{teardown, (*runner).teardown},
			{unpack, (*runner).unpack},
		} {
			before, serr := r.scrape()
			w.run(r)
			// What the workload removed is gone before the next one
			// measures.
			if err := r.settle(); err != nil {
				fatal(err)
			}
			if r.Metrics != "" {
				r.steps(w.name, before, serr)
			}
		}
		r.close()
	}
	if err := json.NewEncoder(os.Stdout).Encode(struct {
		Figures []Figure   `json:"figures"`
		Steps   []StepTime `json:"steps"`
	}{out, steps}); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "peers: error: %v\n", err)
	os.Exit(1)
}

// started is when the program started, for the progress lines.
var started = time.Now()

// logf prints a progress line with the minutes and seconds since the start.
func logf(format string, args ...interface{}) {
	d := time.Since(started).Round(time.Second)
	fmt.Fprintf(os.Stderr, "peers: %d:%02d "+format+"\n",
		append([]interface{}{int(d.Minutes()), int(d.Seconds()) % 60}, args...)...)
}

// runner runs the workloads on one snapshotter.
type runner struct {
	Peer
	cfg    config
	client *containerd.Client
	sn     snapshots.Snapshotter
	// The snapshotter behind thinlayer's proxy plugin, asked directly.
	backend snapshots.Snapshotter
	conn    *grpc.ClientConn
	ctx     context.Context
	// The lease that holds every snapshot made, so that nothing is
	// collected before it is removed; deleted at the end.
	lease leases.Lease
	n     int
}

func newRunner(client *containerd.Client, p Peer, cfg config) (*runner, error) {
	l, err := client.LeasesService().Create(context.Background(), leases.WithRandomID(), leases.WithExpiration(24*time.Hour))
	if err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	ctx := leases.WithLease(context.Background(), l.ID)
	r := &runner{Peer: p, cfg: cfg, client: client, sn: client.SnapshotService(p.Name), ctx: ctx, lease: l}
	if sock := strings.TrimPrefix(p.Backend, "proxy:"); sock != p.Backend {
		conn, err := grpc.Dial(dialer.DialAddress(sock), grpc.WithInsecure(), grpc.WithContextDialer(dialer.ContextDialer))
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", sock, err)
		}
		r.conn = conn
		r.backend = proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), p.Name)
	}
	return r, nil
}

func (r *runner) close() {
	// Synchronous: the garbage collector has removed what the lease held
	// when this returns.
	if err := r.client.LeasesService().Delete(context.Background(), r.lease, leases.SynchronousDelete); err != nil {
		logf("%s: end the lease: %v", r.Name, err)
	}
	if r.conn != nil {
		r.conn.Close()
	}
}

// key is a new snapshot name.
func (r *runner) key(what string) string {
	r.n++
	return fmt.Sprintf("%s-%d", what, r.n)
}

// figures records metrics of one workload, all failed with err if not nil
// (else each with its own err, if any).
func (r *runner) figures(workload string, param uint64, err error, metrics ...metric) {
	for _, m := range metrics {
		f := Figure{Workload: workload, Metric: m.name, Unit: m.unit, Param: param, Snapshotter: r.Name, Values: m.values}
		if f.Values == nil {
			f.Values = []float64{}
		}
		if e := firstErr(err, m.err); e != nil {
			f.Error = e.Error()
			logf("%s / %s on %s: %v", workload, m.name, r.Name, e)
		}
		out = append(out, f)
	}
}

type metric struct {
	name   string
	unit   string
	values []float64
	// Why this metric alone could not be measured.
	err error
}

// written is the bytes written so far to the peer's loop devices.
func (r *runner) written() (uint64, error) {
	var sum uint64
	for _, l := range r.Loops {
		p := "/sys/block/" + l + "/stat"
		b, err := os.ReadFile(p)
		if err != nil {
			return 0, err
		}
		f := strings.Fields(string(b))
		if len(f) < 7 {
			return 0, fmt.Errorf("%s: fewer than 7 fields", p)
		}
		s, err := strconv.ParseUint(f[6], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", p, err)
		}
		sum += s * 512
	}
	return sum, nil
}

// measured runs step between two syncs: its wall time and the bytes the
// peer's devices took from it, its write-back included.
func (r *runner) measured(step func() error) (time.Duration, uint64, error) {
	t, _, b, err := r.measuredSync(step)
	return t, b, err
}

// measuredSync is measured, with the wall time of step and the sync after
// it too.
func (r *runner) measuredSync(step func() error) (time.Duration, time.Duration, uint64, error) {
	unix.Sync()
	before, err := r.written()
	if err != nil {
		return 0, 0, 0, err
	}
	start := time.Now()
	if err := step(); err != nil {
		return 0, 0, 0, err
	}
	t := time.Since(start)
	unix.Sync()
	synced := time.Since(start)
	after, err := r.written()
	if err != nil {
		return 0, 0, 0, err
	}
	return t, synced, after - before, nil
}

// mountPoint is a fresh directory for a mount.
func (r *runner) mountPoint() (string, error) {
	return os.MkdirTemp(r.cfg.dir, r.Name+"-")
}

// mounted prepares key on parent and mounts it; returns the mount point.
func (r *runner) mounted(key, parent string) (string, []mount.Mount, error) {
	dir, ms, _, err := r.mountedTimed(key, parent)
	return dir, ms, err
}

// mountedTimed is mounted, with the time of the Prepare call alone.
func (r *runner) mountedTimed(key, parent string) (string, []mount.Mount, time.Duration, error) {
	dir, err := r.mountPoint()
	if err != nil {
		return "", nil, 0, err
	}
	start := time.Now()
	ms, err := r.sn.Prepare(r.ctx, key, parent)
	if err != nil {
		return "", nil, 0, fmt.Errorf("prepare %s: %w", key, err)
	}
	t := time.Since(start)
	if err := mount.All(ms, dir); err != nil {
		return "", nil, 0, fmt.Errorf("mount %s: %w", key, err)
	}
	return dir, ms, t, nil
}

func unmount(dir string) error {
	if err := mount.UnmountAll(dir, 0); err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return os.Remove(dir)
}

// gone tells whether the backend no longer holds containerd's snapshot
// key, whose mounts were ms.
func (r *runner) gone(key string, ms []mount.Mount) (bool, error) {
	switch {
	case r.backend != nil:
		// containerd names a snapshot NAMESPACE/ID/KEY in its backend.
		found := false
		err := r.backend.Walk(r.ctx, func(_ context.Context, info snapshots.Info) error {
			if strings.HasPrefix(info.Name, namespace+"/") && strings.HasSuffix(info.Name, "/"+key) {
				found = true
			}
			return nil
		})
		return !found, err
	case r.Backend == "overlayfs":
		// The snapshot's directory: the parent of its upper directory,
		// or of what a snapshot without parent bind-mounts.
		dir := ""
		for _, m := range ms {
			if m.Type == "bind" {
				dir = filepath.Dir(m.Source)
			}
			for _, o := range m.Options {
				if u := strings.TrimPrefix(o, "upperdir="); u != o {
					dir = filepath.Dir(u)
				}
			}
		}
		if dir == "" {
			return false, fmt.Errorf("no directory in the mounts of %s: %v", key, ms)
		}
		_, err := os.Stat(dir)
		if errors.Is(err, os.ErrNotExist) {
			return true, nil
		}
		return false, err
	case r.Backend == "devmapper":
		// The snapshot's thin device, /dev/mapper/NAME, no longer active.
		if len(ms) != 1 {
			return false, fmt.Errorf("mounts of %s: %v", key, ms)
		}
		name := filepath.Base(ms[0].Source)
		names, err := filepath.Glob("/sys/block/dm-*/dm/name")
		if err != nil {
			return false, err
		}
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err == nil && strings.TrimSpace(string(b)) == name {
				return false, nil
			}
		}
		return true, nil
	}
	return false, fmt.Errorf("unknown backend %q", r.Backend)
}

// removed removes key through containerd and waits until its garbage
// collector has removed it from the backend too.
func (r *runner) removed(key string, ms []mount.Mount) error {
	if err := r.sn.Remove(r.ctx, key); err != nil {
		return fmt.Errorf("remove %s: %w", key, err)
	}
	return r.collected(key, ms)
}

// nudgeAfter is how long collected waits before it asks for a collection.
const nudgeAfter = 2 * time.Second

// collected waits until the backend no longer holds key. If it still does
// after nudgeAfter, the removal's event was most likely dropped (it came
// while a collection ran, see settle) and nothing would ever collect it:
// a collection is asked for, as the next removal of any client would, and
// again every nudgeAfter; the time waited stays in the figure.
func (r *runner) collected(key string, ms []mount.Mount) error {
	start := time.Now()
	end := start.Add(r.cfg.deadline)
	nudge := start.Add(nudgeAfter)
	for {
		g, err := r.gone(key, ms)
		if err != nil {
			return err
		}
		if g {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("never happened: containerd's garbage collector removes %s from %s (deadline %v)", key, r.Name, r.cfg.deadline)
		}
		if time.Now().After(nudge) {
			logf("%s: %s not collected after %v: a collection is asked for", r.Name, key, time.Since(start).Round(time.Millisecond))
			ctx, cancel := context.WithDeadline(context.Background(), end)
			err := r.settleWithin(ctx)
			cancel()
			if err != nil {
				return fmt.Errorf("never happened: containerd's garbage collector removes %s from %s (deadline %v): a collection asked for after %v: %w", key, r.Name, r.cfg.deadline, nudgeAfter, err)
			}
			nudge = time.Now().Add(nudgeAfter)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// settle returns once containerd's garbage collector has run after every
// removal made so far: deleting a lease synchronously runs a collection and
// waits for it, and collections run one after another. Needed because
// containerd 1.6's scheduler drops the event of a removal made while a
// collection runs (its time is before the collection's end): that
// snapshot stays in the backend until something else starts a collection.
func (r *runner) settle() error {
	return r.settleWithin(context.Background())
}

// settleWithin is settle, given up when ctx ends.
func (r *runner) settleWithin(ctx context.Context) error {
	ls := r.client.LeasesService()
	l, err := ls.Create(ctx, leases.WithRandomID())
	if err != nil {
		return fmt.Errorf("lease: %w", err)
	}
	if err := ls.Delete(ctx, l, leases.SynchronousDelete); err != nil {
		return fmt.Errorf("collect garbage: %w", err)
	}
	return nil
}

// committed makes a committed layer of files written by fill on parent.
func (r *runner) committed(name, parent string, fill func(dir string) error) error {
	_, _, err := r.committedTimed(name, parent, fill)
	return err
}

// committedTimed is committed, with the time of its Prepare call and of
// its Commit call.
func (r *runner) committedTimed(name, parent string, fill func(dir string) error) (prepare, commit time.Duration, err error) {
	key := r.key(name + "-active")
	dir, _, prepare, err := r.mountedTimed(key, parent)
	if err != nil {
		return 0, 0, err
	}
	ferr := fill(dir)
	if err := unmount(dir); err != nil {
		return 0, 0, err
	}
	if ferr != nil {
		return 0, 0, ferr
	}
	start := time.Now()
	if err := r.sn.Commit(r.ctx, name, key); err != nil {
		return 0, 0, fmt.Errorf("commit %s: %w", key, err)
	}
	return prepare, time.Since(start), nil
}

// writeFile writes size bytes of a pattern to path and fsyncs.
func writeFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i*31) | 1
	}
	for left := size; left > 0; {
		n := int64(len(chunk))
		if left < n {
			n = left
		}
		if _, err := f.Write(chunk[:n]); err != nil {
			f.Close()
			return err
		}
		left -= n
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeAt writes data at off into the existing file path and fsyncs it.
func writeAt(path string, data []byte, off int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(data, off)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// smallImage commits a new one-layer image of smallFiles, named what-N.
func (r *runner) smallImage(what string) (string, error) {
	name := r.key(what)
	return name, r.committed(name, "", smallFiles)
}

// smallFiles is an image layer of a few small files.
func smallFiles(dir string) error {
	if err := os.Mkdir(filepath.Join(dir, "etc"), 0o755); err != nil {
		return err
	}
	for i := 0; i < 8; i++ {
		if err := os.WriteFile(filepath.Join(dir, "etc", fmt.Sprintf("f%d", i)), []byte(fmt.Sprintf("file %d\n", i)), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func secs(d time.Duration) float64 { return d.Seconds() }

const (
	prepareCycle = "prepare cycle"
	parallel     = "parallel prepare cycles"
	shape2988    = "containerd #2988 shape"
	firstWrite   = "first write"
	idleCost     = "idle cost"
	spaceBack    = "space back"
	teardown     = "teardown"
	createCost   = "create cost"
	unpack       = "unpack"
)

// prepareCycle: Prepare + mount + unmount + Remove of a container on a
// one-layer image, the removal timed until the garbage collector has
// taken the snapshot out of the backend.
func (r *runner) prepareCycle() {
	logf("%s: %s", r.Name, prepareCycle)
	names := []string{"prepare", "mount", "unmount", "remove call", "remove until collected", "total"}
	vals := make([][]float64, len(names))
	err := func() error {
		base, err := r.smallImage("cycle-base")
		if err != nil {
			return err
		}
		for i := 0; i < r.cfg.cycles; i++ {
			// No collection running when the cycle starts (see settle).
			if err := r.settle(); err != nil {
				return err
			}
			key := r.key("cycle")
			dir, err := r.mountPoint()
			if err != nil {
				return err
			}
			t0 := time.Now()
			ms, err := r.sn.Prepare(r.ctx, key, base)
			if err != nil {
				return fmt.Errorf("prepare %s: %w", key, err)
			}
			t1 := time.Now()
			if err := mount.All(ms, dir); err != nil {
				return fmt.Errorf("mount %s: %w", key, err)
			}
			t2 := time.Now()
			if err := mount.UnmountAll(dir, 0); err != nil {
				return fmt.Errorf("unmount %s: %w", key, err)
			}
			t3 := time.Now()
			if err := r.sn.Remove(r.ctx, key); err != nil {
				return fmt.Errorf("remove %s: %w", key, err)
			}
			t4 := time.Now()
			if err := r.collected(key, ms); err != nil {
				return err
			}
			t5 := time.Now()
			os.Remove(dir)
			for j, d := range []time.Duration{t1.Sub(t0), t2.Sub(t1), t3.Sub(t2), t4.Sub(t3), t5.Sub(t3), t5.Sub(t0)} {
				vals[j] = append(vals[j], secs(d))
			}
		}
		return r.sn.Remove(r.ctx, base)
	}()
	var ms []metric
	for j, n := range names {
		ms = append(ms, metric{name: n, unit: "seconds", values: vals[j]})
	}
	r.figures(prepareCycle, uint64(r.cfg.cycles), err, ms...)
}

// parallel: clients at once, each doing its cycles of Prepare + mount +
// unmount + Remove of a container on a one-layer image, one after another,
// without waiting for the garbage collector. Cycles per second: all cycles
// over the wall time from the start until every removed snapshot is gone
// from the backend (after the last Remove, one synchronous collection: see
// settle). A cycle: from its Prepare call to the return of its Remove call.
func (r *runner) parallel() {
	logf("%s: %s", r.Name, parallel)
	clients, cycles := r.cfg.clients, r.cfg.parallelCycles
	var rate, wall, lat []float64
	err := func() error {
		base, err := r.smallImage("parallel-base")
		if err != nil {
			return err
		}
		if err := r.settle(); err != nil {
			return err
		}
		// Names and mount points made beforehand: nothing but the cycles
		// runs between the start and the end.
		type cycle struct {
			key, dir string
			ms       []mount.Mount
			took     time.Duration
		}
		all := make([][]cycle, clients)
		for c := range all {
			for i := 0; i < cycles; i++ {
				dir, err := r.mountPoint()
				if err != nil {
					return err
				}
				all[c] = append(all[c], cycle{key: r.key("parallel"), dir: dir})
			}
		}
		errs := make([]error, clients)
		var wg sync.WaitGroup
		start := time.Now()
		for c := range all {
			wg.Add(1)
			go func(mine []cycle, failed *error) {
				defer wg.Done()
				for i := range mine {
					cy := &mine[i]
					t0 := time.Now()
					ms, err := r.sn.Prepare(r.ctx, cy.key, base)
					if err != nil {
						*failed = fmt.Errorf("prepare %s: %w", cy.key, err)
						return
					}
					if err := mount.All(ms, cy.dir); err != nil {
						*failed = fmt.Errorf("mount %s: %w", cy.key, err)
						return
					}
					if err := mount.UnmountAll(cy.dir, 0); err != nil {
						*failed = fmt.Errorf("unmount %s: %w", cy.key, err)
						return
					}
					if err := r.sn.Remove(r.ctx, cy.key); err != nil {
						*failed = fmt.Errorf("remove %s: %w", cy.key, err)
						return
					}
					cy.ms, cy.took = ms, time.Since(t0)
				}
			}(all[c], &errs[c])
		}
		wg.Wait()
		if err := firstErr(errs...); err != nil {
			return err
		}
		if err := r.settle(); err != nil {
			return err
		}
		for _, mine := range all {
			for _, cy := range mine {
				if err := r.collected(cy.key, cy.ms); err != nil {
					return err
				}
			}
		}
		t := time.Since(start)
		for _, mine := range all {
			for _, cy := range mine {
				os.Remove(cy.dir)
				lat = append(lat, secs(cy.took))
			}
		}
		rate, wall = []float64{float64(clients*cycles) / t.Seconds()}, []float64{secs(t)}
		return r.sn.Remove(r.ctx, base)
	}()
	r.figures(parallel, uint64(clients), err,
		metric{name: "cycles per second", unit: "per second", values: rate},
		metric{name: "wall time", unit: "seconds", values: wall},
		metric{name: "cycle", unit: "seconds", values: lat})
}

// shape2988: layers of files, each layer a commit of a snapshot on the
// previous one; then 4-byte writes + fsync in the middle of every file
// from an active snapshot on top.
func (r *runner) shape2988() {
	logf("%s: %s", r.Name, shape2988)
	var bt, bb, wt, wb, tt, tb, pc, cc []float64
	err := func() error {
		for rep := 0; rep < r.cfg.reps; rep++ {
			var layers []string
			parent := ""
			var files []string
			build, buildBytes, err := r.measured(func() error {
				for l := 0; l < r.cfg.layers; l++ {
					name := r.key("shape-layer")
					p, c, err := r.committedTimed(name, parent, func(dir string) error {
						for f := 0; f < r.cfg.files; f++ {
							rel := fmt.Sprintf("l%d-f%d", l, f)
							if err := writeFile(filepath.Join(dir, rel), r.cfg.fileSize); err != nil {
								return err
							}
							files = append(files, rel)
						}
						return nil
					})
					if err != nil {
						return err
					}
					pc, cc = append(pc, secs(p)), append(cc, secs(c))
					layers = append(layers, name)
					parent = name
				}
				return nil
			})
			if err != nil {
				return err
			}
			top := r.key("shape-top")
			dir, ms, err := r.mounted(top, parent)
			if err != nil {
				return err
			}
			write, writeBytes, err := r.measured(func() error {
				for _, rel := range files {
					if err := writeAt(filepath.Join(dir, rel), []byte("1234"), r.cfg.fileSize/2); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				unmount(dir)
				return err
			}
			if err := unmount(dir); err != nil {
				return err
			}
			if err := r.removed(top, ms); err != nil {
				return err
			}
			for i := len(layers) - 1; i >= 0; i-- {
				if err := r.sn.Remove(r.ctx, layers[i]); err != nil {
					return fmt.Errorf("remove %s: %w", layers[i], err)
				}
			}
			bt, bb = append(bt, secs(build)), append(bb, float64(buildBytes))
			wt, wb = append(wt, secs(write)), append(wb, float64(writeBytes))
			tt, tb = append(tt, secs(build+write)), append(tb, float64(buildBytes+writeBytes))
		}
		return nil
	}()
	r.figures(shape2988, uint64(r.cfg.layers), err,
		metric{name: "build time", unit: "seconds", values: bt}, metric{name: "build bytes written", unit: "bytes", values: bb},
		metric{name: "write time", unit: "seconds", values: wt}, metric{name: "write bytes written", unit: "bytes", values: wb},
		metric{name: "total time", unit: "seconds", values: tt}, metric{name: "total bytes written", unit: "bytes", values: tb},
		metric{name: "prepare call", unit: "seconds", values: pc}, metric{name: "commit call", unit: "seconds", values: cc})
}

// firstWrite: one 4 KiB write + fsync into the middle of a large file of
// the image, from a new container, caches dropped before.
func (r *runner) firstWrite() {
	logf("%s: %s", r.Name, firstWrite)
	var times, bytes []float64
	size := r.cfg.writeSize
	block := make([]byte, 4096)
	for i := range block {
		block[i] = 0xa5
	}
	err := func() error {
		image := r.key("fw-image")
		if err := r.committed(image, "", func(dir string) error {
			return writeFile(filepath.Join(dir, "f"), size)
		}); err != nil {
			return err
		}
		for rep := 0; rep < r.cfg.reps; rep++ {
			key := r.key("fw")
			dir, ms, err := r.mounted(key, image)
			if err != nil {
				return err
			}
			unix.Sync()
			if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200); err != nil {
				unmount(dir)
				return fmt.Errorf("drop caches: %w", err)
			}
			t, b, err := r.measured(func() error {
				return writeAt(filepath.Join(dir, "f"), block, size/2/4096*4096)
			})
			if err != nil {
				unmount(dir)
				return err
			}
			if err := unmount(dir); err != nil {
				return err
			}
			if err := r.removed(key, ms); err != nil {
				return err
			}
			times, bytes = append(times, secs(t)), append(bytes, float64(b))
		}
		return r.sn.Remove(r.ctx, image)
	}()
	r.figures(firstWrite, uint64(size), err,
		metric{name: "time", unit: "seconds", values: times}, metric{name: "bytes written", unit: "bytes", values: bytes})
}

// space is the peer's backing store in use, in bytes, after a sync.
func (r *runner) space() (float64, error) {
	f := strings.Split(r.Space, ":")
	switch {
	case len(f) == 2 && f[0] == "statfs":
		unix.Sync()
		var st unix.Statfs_t
		if err := unix.Statfs(f[1], &st); err != nil {
			return 0, fmt.Errorf("statfs %s: %w", f[1], err)
		}
		return float64((st.Blocks - st.Bfree) * uint64(st.Bsize)), nil
	case len(f) == 3 && f[0] == "pool":
		unix.Sync()
		block, err := strconv.ParseFloat(f[2], 64)
		if err != nil {
			return 0, err
		}
		o, err := dmStatus(f[1])
		if err != nil {
			return 0, err
		}
		// TRANSACTION META_USED/META DATA_USED/DATA ...
		fields := strings.Fields(o)
		if len(fields) < 3 {
			return 0, fmt.Errorf("status of %s: %q", f[1], o)
		}
		used, err := strconv.ParseFloat(strings.Split(fields[2], "/")[0], 64)
		if err != nil {
			return 0, fmt.Errorf("status of %s: %q: %w", f[1], o, err)
		}
		return used * block, nil
	}
	return 0, fmt.Errorf("bad space source %q", r.Space)
}

// dmStatus is the status of the device-mapper device name's one target,
// what `dmsetup status` prints after the target's range and type, read by
// the DM_TABLE_STATUS ioctl as dmsetup does (without its noflush flag: a
// thin pool commits its metadata first) but without starting a process,
// so that a reading costs little next to what it times.
func dmStatus(name string) (string, error) {
	const (
		// struct dm_ioctl and struct dm_target_spec of linux/dm-ioctl.h.
		ioctlSize = 312
		specSize  = 40
		// _IOWR(DM_IOCTL, DM_TABLE_STATUS_CMD, struct dm_ioctl)
		tableStatus = 3<<30 | ioctlSize<<16 | 0xfd<<8 | 12
		bufferFull  = 1 << 8
	)
	if len(name) >= 128 {
		return "", fmt.Errorf("device-mapper name too long: %q", name)
	}
	ctl, err := os.OpenFile("/dev/mapper/control", os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer ctl.Close()
	buf := make([]byte, 16<<10)
	le := binary.LittleEndian
	le.PutUint32(buf[0:], 4) // version 4.0.0
	le.PutUint32(buf[12:], uint32(len(buf)))
	le.PutUint32(buf[16:], ioctlSize)
	copy(buf[48:], name)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, ctl.Fd(), tableStatus, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
		return "", fmt.Errorf("status of %s: %w", name, e)
	}
	if le.Uint32(buf[28:])&bufferFull != 0 {
		return "", fmt.Errorf("status of %s: longer than %d bytes", name, len(buf))
	}
	if n := le.Uint32(buf[20:]); n != 1 {
		return "", fmt.Errorf("status of %s: %d targets, expected one", name, n)
	}
	st := buf[le.Uint32(buf[16:])+specSize:]
	if end := bytes.IndexByte(st, 0); end >= 0 {
		st = st[:end]
	}
	return string(st), nil
}

// idleCost: space per idle container: N containers of a one-layer image,
// each prepared and mounted, nothing written.
func (r *runner) idleCost() {
	logf("%s: %s", r.Name, idleCost)
	var per []float64
	n := r.cfg.idle
	err := func() error {
		base, err := r.smallImage("idle-base")
		if err != nil {
			return err
		}
		for rep := 0; rep < r.cfg.reps; rep++ {
			if err := r.settle(); err != nil {
				return err
			}
			before, err := r.space()
			if err != nil {
				return err
			}
			var made []ctr
			var merr error
			for i := 0; i < n && merr == nil; i++ {
				key := r.key("idle")
				var c ctr
				c.dir, c.ms, merr = r.mounted(key, base)
				if merr == nil {
					c.key = key
					made = append(made, c)
				}
			}
			after, err := r.space()
			if merr == nil {
				merr = err
			}
			for _, c := range made {
				if err := unmount(c.dir); err != nil && merr == nil {
					merr = err
				}
				if err := r.sn.Remove(r.ctx, c.key); err != nil && merr == nil {
					merr = fmt.Errorf("remove %s: %w", c.key, err)
				}
			}
			// Removals made while a collection runs can wait for the
			// next one (see settle): one is run before looking.
			if err := r.settle(); err != nil && merr == nil {
				merr = err
			}
			for _, c := range made {
				if err := r.collected(c.key, c.ms); err != nil && merr == nil {
					merr = err
				}
			}
			if merr != nil {
				return merr
			}
			per = append(per, (after-before)/float64(n))
		}
		return r.sn.Remove(r.ctx, base)
	}()
	r.figures(idleCost, uint64(n), err, metric{name: "space per idle container", unit: "bytes", values: per})
}

// createOne times Prepare + mount of one container on base; returns it.
func (r *runner) createOne(base string) (ctr, time.Duration, error) {
	c := ctr{key: r.key("live")}
	dir, err := r.mountPoint()
	if err != nil {
		return c, 0, err
	}
	start := time.Now()
	c.ms, err = r.sn.Prepare(r.ctx, c.key, base)
	if err != nil {
		return c, 0, fmt.Errorf("prepare %s: %w", c.key, err)
	}
	if err := mount.All(c.ms, dir); err != nil {
		return c, 0, fmt.Errorf("mount %s: %w", c.key, err)
	}
	c.dir = dir
	return c, time.Since(start), nil
}

// ctr is a prepared and mounted container.
type ctr struct {
	key, dir string
	ms       []mount.Mount
}

// liveCounts is -live for this peer: devmapper's scaled to -live-devmapper
// when set.
func (r *runner) liveCounts() []int {
	counts := append([]int(nil), r.cfg.live...)
	top := counts[len(counts)-1]
	if r.Backend == "devmapper" && r.cfg.liveDevmapper > 0 && top > 0 {
		for i, c := range counts {
			counts[i] = c * r.cfg.liveDevmapper / top
		}
	}
	return counts
}

// teardown: Prepare + mount of one container with a number of others live,
// at each count of -live on the way up (with none: each removed after;
// with some: kept); then unmount and Remove of all of them through
// containerd, until the backend holds none (after the Remove calls, one
// synchronous collection: see settle), and from the last Remove call until
// the space they took is back, in the snapshotter and on the host (see
// spaceBack).
func (r *runner) teardown() {
	logf("%s: %s", r.Name, teardown)
	counts := r.liveCounts()
	n := counts[len(counts)-1]
	create := make([][]float64, len(counts))
	var down, calls, per, store, host []float64
	var storeErr, hostErr error
	var made []ctr
	err := func() error {
		base, err := r.smallImage("live-base")
		if err != nil {
			return err
		}
		if err := r.warm(base); err != nil {
			return err
		}
		before, err := r.quiet()
		if err != nil {
			return err
		}
		for i, count := range counts {
			for len(made) < count {
				c, _, err := r.createOne(base)
				if c.dir != "" {
					made = append(made, c)
				}
				if err != nil {
					return err
				}
				if len(made)%100 == 0 {
					logf("%s: %d live", r.Name, len(made))
				}
			}
			for rep := 0; rep < r.cfg.reps; rep++ {
				// With none live, the collection of the last one's
				// removal; with some, the same call and pause: each
				// create starts alike whatever the count, whatever a
				// snapshotter does in the background.
				if err := r.settle(); err != nil {
					return err
				}
				c, t, err := r.createOne(base)
				if c.dir != "" && count > 0 {
					made = append(made, c)
				}
				if err == nil && count == 0 {
					if err = unmount(c.dir); err == nil {
						err = r.removed(c.key, c.ms)
					}
				}
				if err != nil {
					return err
				}
				create[i] = append(create[i], secs(t))
			}
		}
		if err := r.settle(); err != nil {
			return err
		}
		start := time.Now()
		var last time.Time
		for _, c := range made {
			t0 := time.Now()
			if err := unmount(c.dir); err != nil {
				return err
			}
			if err := r.sn.Remove(r.ctx, c.key); err != nil {
				return fmt.Errorf("remove %s: %w", c.key, err)
			}
			last = time.Now()
			calls = append(calls, secs(last.Sub(t0)))
		}
		if err := r.settle(); err != nil {
			return err
		}
		for _, c := range made {
			if err := r.collected(c.key, c.ms); err != nil {
				return err
			}
		}
		t := time.Since(start)
		down, per = []float64{secs(t)}, []float64{secs(t) / float64(len(made))}
		made = nil
		var s, h time.Duration
		s, h, storeErr, hostErr = r.spaceBackSince(last, before, true, true)
		store, host = []float64{secs(s)}, []float64{secs(h)}
		return r.sn.Remove(r.ctx, base)
	}()
	for _, c := range made {
		unmount(c.dir)
	}
	r.figures(teardown, uint64(n), err,
		metric{name: "teardown of all N", unit: "seconds", values: down},
		metric{name: "teardown per container", unit: "seconds", values: per},
		metric{name: "unmount + remove call", unit: "seconds", values: calls},
		metric{name: "space back after the last removal", unit: "seconds", values: store, err: storeErr},
		metric{name: "host space back after the last removal", unit: "seconds", values: host, err: hostErr})
	for i, count := range counts {
		r.figures(createCost, uint64(count), err, metric{name: "create", unit: "seconds", values: create[i]})
	}
}

// usage is a peer's space in use (see space) and the allocation of its
// data files on the host (see hostSpace).
type usage struct{ store, host float64 }

func (r *runner) usage() (usage, error) {
	s, err := r.space()
	if err != nil {
		return usage{}, err
	}
	h, err := r.hostSpace()
	return usage{s, h}, err
}

// hostSpace is what the host files behind the peer's data devices hold:
// their allocated blocks (st_blocks × 512), in bytes.
func (r *runner) hostSpace() (float64, error) {
	var sum float64
	for _, f := range r.Files {
		var st unix.Stat_t
		if err := unix.Stat(f, &st); err != nil {
			return 0, fmt.Errorf("stat %s: %w", f, err)
		}
		sum += float64(st.Blocks) * 512
	}
	return sum, nil
}

// slack is how far above its earlier figure space may stay and count as
// back: one pool block, or 64 KiB where there is no pool.
func (r *runner) slack() float64 {
	f := strings.Split(r.Space, ":")
	if len(f) == 3 && f[0] == "pool" {
		if b, err := strconv.ParseFloat(f[2], 64); err == nil {
			return b
		}
	}
	return 64 << 10
}

// quiet waits until neither figure of usage moves (three readings 200 ms
// apart alike), so that space that earlier work frees in the background
// does not count for what is measured next; returns them.
func (r *runner) quiet() (usage, error) {
	end := time.Now().Add(r.cfg.spaceDeadline)
	last, err := r.usage()
	if err != nil {
		return usage{}, err
	}
	for same := 0; same < 2; {
		if time.Now().After(end) {
			return usage{}, fmt.Errorf("never happened: %s's space in use (%s) and its files' allocation on the host (%s) stop moving (deadline %v)",
				r.Name, mib(last.store), mib(last.host), r.cfg.spaceDeadline)
		}
		time.Sleep(200 * time.Millisecond)
		u, err := r.usage()
		if err != nil {
			return usage{}, err
		}
		if u == last {
			same++
		} else {
			same, last = 0, u
		}
	}
	return last, nil
}

func mib(b float64) string { return fmt.Sprintf("%.2f MiB", b/(1<<20)) }

// spaceBackSince reads usage until both figures waited for are back within
// slack of before, or -space-deadline after t0; returns for each how long
// after t0 the first reading that found it back ended, or why it never
// was.
func (r *runner) spaceBackSince(t0 time.Time, before usage, waitStore, waitHost bool) (store, host time.Duration, storeErr, hostErr error) {
	end := t0.Add(r.cfg.spaceDeadline)
	slack := r.slack()
	storeBack, hostBack := !waitStore, !waitHost
	var u usage
	for !storeBack || !hostBack {
		if time.Now().After(end) {
			never := func(what string, now, was float64) error {
				return fmt.Errorf("never came back within %v: %s %s, %s above the %s before (more than %.0f KiB)",
					r.cfg.spaceDeadline, what, mib(now), mib(now-was), mib(was), slack/1024)
			}
			if !storeBack {
				storeErr = never("space in use", u.store, before.store)
			}
			if !hostBack {
				hostErr = never("host files' allocation", u.host, before.host)
			}
			return
		}
		var err error
		if u, err = r.usage(); err != nil {
			return 0, 0, err, err
		}
		now := time.Since(t0)
		if !storeBack && u.store <= before.store+slack {
			store, storeBack = now, true
		}
		if !hostBack && u.host <= before.host+slack {
			host, hostBack = now, true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return
}

// warm prepares, mounts, unmounts and removes two containers on image, one
// after the other, and waits for their collection, so that what a
// snapshotter keeps for an image it has made containers of (thinlayer's
// spares, kept for a parent from its second Prepare) is part of the space
// a measurement starts from, not counted as a removal's: the same steps
// for every snapshotter.
func (r *runner) warm(image string) error {
	for i := 0; i < 2; i++ {
		key := r.key("warm")
		dir, ms, err := r.mounted(key, image)
		if err != nil {
			return err
		}
		if err := unmount(dir); err != nil {
			return err
		}
		if err := r.removed(key, ms); err != nil {
			return err
		}
	}
	return r.settle()
}

// spaceBack: a container on a one-layer image writes and fsyncs a file of
// -space-size and is unmounted; then from its Remove call, the time until
// the garbage collector has taken it out of the backend, until the
// snapshotter's space in use is back within one pool block (64 KiB without
// a pool) of what it was before the container was prepared, and until the
// host files behind its data devices hold no more than that either (a
// figure that never came back is missing, with why). Also the space the
// write took, in the snapshotter and on the host. A figure that did not
// come back in one run is not waited for in the runs after.
func (r *runner) spaceBack() {
	logf("%s: %s", r.Name, spaceBack)
	var taken, grown, gone, store, host []float64
	var storeErr, hostErr error
	err := func() error {
		base, err := r.smallImage("space-base")
		if err != nil {
			return err
		}
		if err := r.warm(base); err != nil {
			return err
		}
		for rep := 0; rep < r.cfg.spaceReps && (storeErr == nil || hostErr == nil); rep++ {
			if err := r.settle(); err != nil {
				return err
			}
			before, err := r.quiet()
			if err != nil {
				return err
			}
			key := r.key("space")
			dir, ms, err := r.mounted(key, base)
			if err != nil {
				return err
			}
			err = writeFile(filepath.Join(dir, "f"), r.cfg.spaceSize)
			if err = firstErr(err, unmount(dir)); err != nil {
				return err
			}
			after, err := r.usage()
			if err != nil {
				return err
			}
			t0 := time.Now()
			if err := r.removed(key, ms); err != nil {
				return err
			}
			gone = append(gone, secs(time.Since(t0)))
			s, h, serr, herr := r.spaceBackSince(t0, before, storeErr == nil, hostErr == nil)
			if serr != nil && storeErr == nil {
				storeErr = fmt.Errorf("run %d: %w", rep+1, serr)
			}
			if herr != nil && hostErr == nil {
				hostErr = fmt.Errorf("run %d: %w", rep+1, herr)
			}
			store, host = append(store, secs(s)), append(host, secs(h))
			taken, grown = append(taken, after.store-before.store), append(grown, after.host-before.host)
		}
		return r.sn.Remove(r.ctx, base)
	}()
	r.figures(spaceBack, uint64(r.cfg.spaceSize), err,
		metric{name: "space taken", unit: "bytes", values: taken},
		metric{name: "host files' growth", unit: "bytes", values: grown},
		metric{name: "remove until collected", unit: "seconds", values: gone},
		metric{name: "space back", unit: "seconds", values: store, err: storeErr},
		metric{name: "host space back", unit: "seconds", values: host, err: hostErr})
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// unpack: the image of -unpack-archive imported into containerd's content
// store (timed apart), then unpacked into the snapshotter as `ctr images
// import` does (the image's Unpack with the snapshotter's name): its time,
// and with the sync after it; bytes written to the peer's loop devices;
// space in use after less before. The unpacked tree's entries are then
// counted through a read-only view, and the image is deleted: the
// synchronous collection that follows removes its content and snapshots,
// so that every run starts from the same empty snapshotter.
func (r *runner) unpack() {
	logf("%s: %s", r.Name, unpack)
	var imports, times, synced, bytes, space, entries []float64
	// Neither import nor unpack is under the runner's lease: the image
	// alone holds what they make, and its deletion frees it.
	ctx := namespaces.WithNamespace(context.Background(), namespace)
	err := func() error {
		for rep := 0; rep < r.cfg.unpackReps; rep++ {
			if err := r.settle(); err != nil {
				return err
			}
			start := time.Now()
			img, err := r.importArchive(ctx)
			if err != nil {
				return err
			}
			imported := time.Since(start)
			err = func() error {
				before, err := r.space()
				if err != nil {
					return err
				}
				t, ts, b, err := r.measuredSync(func() error {
					if err := img.Unpack(ctx, r.Name); err != nil {
						return fmt.Errorf("unpack %s into %s: %w", img.Name(), r.Name, err)
					}
					return nil
				})
				if err != nil {
					return err
				}
				after, err := r.space()
				if err != nil {
					return err
				}
				n, err := r.countUnpacked(ctx, img)
				if err != nil {
					return err
				}
				imports, times, synced = append(imports, secs(imported)), append(times, secs(t)), append(synced, secs(ts))
				bytes, space, entries = append(bytes, float64(b)), append(space, after-before), append(entries, float64(n))
				return nil
			}()
			if derr := r.deleteImage(ctx, img); err == nil {
				err = derr
			}
			if err != nil {
				return err
			}
		}
		return nil
	}()
	r.figures(unpack, r.cfg.entries, err,
		metric{name: "import", unit: "seconds", values: imports},
		metric{name: "unpack", unit: "seconds", values: times},
		metric{name: "unpack + sync", unit: "seconds", values: synced},
		metric{name: "bytes written", unit: "bytes", values: bytes},
		metric{name: "space in use", unit: "bytes", values: space},
		metric{name: "entries", unit: "count", values: entries})
}

// importArchive imports -unpack-archive into containerd's content store
// and image store, as `ctr images import --no-unpack` does.
func (r *runner) importArchive(ctx context.Context) (containerd.Image, error) {
	f, err := os.Open(r.cfg.archive)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	imgs, err := r.client.Import(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", r.cfg.archive, err)
	}
	if len(imgs) != 1 {
		return nil, fmt.Errorf("import %s: %d images, expected one", r.cfg.archive, len(imgs))
	}
	return containerd.NewImage(r.client, imgs[0]), nil
}

// chainID is the snapshot name of img's top layer.
func chainID(ctx context.Context, img containerd.Image) (string, error) {
	diffIDs, err := img.RootFS(ctx)
	if err != nil {
		return "", fmt.Errorf("layers of %s: %w", img.Name(), err)
	}
	return identity.ChainID(diffIDs).String(), nil
}

// countUnpacked counts the entries of img's unpacked tree (every path below
// its root but an ext4's lost+found) through a read-only view, removed
// after.
func (r *runner) countUnpacked(ctx context.Context, img containerd.Image) (uint64, error) {
	top, err := chainID(ctx, img)
	if err != nil {
		return 0, err
	}
	key := r.key("unpack-view")
	ms, err := r.sn.View(r.ctx, key, top)
	if err != nil {
		return 0, fmt.Errorf("view %s: %w", top, err)
	}
	dir, err := r.mountPoint()
	if err == nil {
		err = mount.All(ms, dir)
	}
	var n uint64
	if err == nil {
		err = filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			if p == dir {
				return nil
			}
			if info.IsDir() && p == filepath.Join(dir, "lost+found") {
				return filepath.SkipDir
			}
			n++
			return nil
		})
		err = firstErr(err, unmount(dir))
	}
	if rerr := r.sn.Remove(r.ctx, key); err == nil && rerr != nil {
		err = fmt.Errorf("remove %s: %w", key, rerr)
	}
	return n, err
}

// deleteImage deletes img with a synchronous collection, and checks that
// its unpacked snapshot is gone with it.
func (r *runner) deleteImage(ctx context.Context, img containerd.Image) error {
	top, err := chainID(ctx, img)
	if err != nil {
		return err
	}
	if err := r.client.ImageService().Delete(ctx, img.Name(), images.SynchronousDelete()); err != nil {
		return fmt.Errorf("delete image %s: %w", img.Name(), err)
	}
	// The view's removal, if it came during that collection (see settle).
	if err := r.settle(); err != nil {
		return err
	}
	if _, err := r.sn.Stat(ctx, top); !errdefs.IsNotFound(err) {
		return fmt.Errorf("the unpacked snapshot %s is still in %s after the image's deletion and a collection (%v)", top, r.Name, err)
	}
	return nil
}

// The histograms of `thinlayer serve` that explain its figures.
const (
	stepMetric = "thinlayer_step_duration_seconds"
	callMetric = "thinlayer_snapshotter_call_duration_seconds"
)

// series is one series of those histograms: its kind ("step" or "call"),
// op (or method) and step.
type series struct{ kind, op, step string }

// histogram is the sum and count of a series.
type histogram struct{ sum, count float64 }

// scrape reads the peer's metrics endpoint: every series of the step and
// call histograms (nil if the peer has no endpoint).
func (r *runner) scrape() (map[series]histogram, error) {
	if r.Metrics == "" {
		return nil, nil
	}
	c := http.Client{Timeout: r.cfg.deadline}
	resp, err := c.Get(r.Metrics)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", r.Metrics, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", r.Metrics, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", r.Metrics, resp.Status)
	}
	m := map[series]histogram{}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, stepMetric) && !strings.HasPrefix(line, callMetric) {
			continue
		}
		name, labels, value, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("scrape %s: %w", r.Metrics, err)
		}
		base := strings.TrimSuffix(strings.TrimSuffix(name, "_sum"), "_count")
		var k series
		switch base {
		case stepMetric:
			k = series{"step", labels["op"], labels["step"]}
		case callMetric:
			k = series{"call", labels["method"], ""}
		default:
			continue
		}
		h := m[k]
		switch name {
		case base + "_sum":
			h.sum = value
		case base + "_count":
			h.count = value
		default:
			continue
		}
		m[k] = h
	}
	return m, nil
}

// parseSample reads a line of Prometheus's text format: `name{a="x",...}
// value [timestamp]` or `name value [timestamp]`.
func parseSample(line string) (string, map[string]string, float64, error) {
	bad := func(why string) (string, map[string]string, float64, error) {
		return "", nil, 0, fmt.Errorf("%s in the sample line %q", why, line)
	}
	end := strings.IndexAny(line, "{ ")
	if end <= 0 {
		return bad("no name")
	}
	name, rest := line[:end], line[end:]
	labels := map[string]string{}
	if rest[0] == '{' {
		rest = rest[1:]
		for {
			rest = strings.TrimLeft(rest, ", ")
			if strings.HasPrefix(rest, "}") {
				rest = rest[1:]
				break
			}
			eq := strings.Index(rest, "=\"")
			if eq <= 0 {
				return bad("a bad label")
			}
			key := rest[:eq]
			rest = rest[eq+2:]
			var v strings.Builder
			for {
				if rest == "" {
					return bad("an unterminated label value")
				}
				c := rest[0]
				rest = rest[1:]
				if c == '"' {
					break
				}
				if c == '\\' && rest != "" {
					c, rest = rest[0], rest[1:]
					if c == 'n' {
						c = '\n'
					}
				}
				v.WriteByte(c)
			}
			labels[key] = v.String()
		}
	}
	f := strings.Fields(rest)
	if len(f) == 0 {
		return bad("no value")
	}
	value, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return bad("a bad value")
	}
	return name, labels, value, nil
}

// steps records what the metrics say workload cost: every series that
// counted calls since before (scraped before it, or failed with serr).
func (r *runner) steps(workload string, before map[series]histogram, serr error) {
	after, err := r.scrape()
	if err = firstErr(serr, err); err != nil {
		logf("%s: the steps of %s: %v", r.Name, workload, err)
		steps = append(steps, StepTime{Snapshotter: r.Name, Workload: workload, Error: err.Error()})
		return
	}
	var mine []StepTime
	for k, a := range after {
		b := before[k]
		if a.count > b.count {
			mine = append(mine, StepTime{r.Name, workload, k.kind, k.op, k.step, a.count - b.count, a.sum - b.sum, ""})
		}
	}
	sort.Slice(mine, func(i, j int) bool {
		a, b := mine[i], mine[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.Op != b.Op {
			return a.Op < b.Op
		}
		return a.Step < b.Step
	})
	steps = append(steps, mine...)
}
