package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// stepTime is how long one call of a pod's cycle took.
type stepTime struct {
	Step    string  `json:"step"`
	Seconds float64 `json:"seconds"`
	Error   string  `json:"error,omitempty"`
}

// podResult is what happened to one pod of parallel.
type podResult struct {
	Index       int         `json:"index"`
	Name        string      `json:"name"`
	PodID       string      `json:"pod_id"`
	ContainerID string      `json:"container_id"`
	Steps       []stepTime  `json:"steps"`
	Exec        *execAnswer `json:"exec"`
	// The container's writable layer as ContainerStats gives it (0 when the
	// runtime gave none), and the whole answer.
	WritableLayerUsedBytes  uint64                     `json:"writable_layer_used_bytes"`
	WritableLayerInodesUsed uint64                     `json:"writable_layer_inodes_used"`
	Stats                   *runtimeapi.ContainerStats `json:"stats"`
	// How many ContainerStats calls the stats step made (more than one
	// with -stats-at-least).
	StatsReads int `json:"stats_reads"`
	// The first failure; the steps after it were skipped, but for the
	// pod's stop and removal, which are tried anyway.
	Error string `json:"error"`
}

// parallelAnswer is parallel's answer.
type parallelAnswer struct {
	Pods    []*podResult `json:"pods"`
	Seconds float64      `json:"seconds"`
	Failed  int          `json:"failed"`
}

func init() {
	register(command{name: "parallel",
		summary: "runs N pods at once, each: runp, create, start, exec, stats, stop, rm, stopp, rmp; timings per step, one JSON answer",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			n := fs.Int("n", 1, "how many pods")
			pod := addPodFlags(fs, true)
			ctr := addContainerFlags(fs, true)
			var command, exec jsonArgs
			fs.Var(&command, "command", "the containers' command as a JSON array (default: the image's entrypoint)")
			fs.Var(&exec, "exec", "a command ExecSync runs in each container, as a JSON array (default: no exec step)")
			keep := fs.Bool("keep", false, "leave the pods and their containers running: no stop and removal steps")
			grace := fs.Int64("stop-timeout", 0, "StopContainer's timeout, seconds")
			atLeast := fs.Uint64("stats-at-least", 0, "the stats step calls ContainerStats again (every 0.2 s, for up to -timeout) until the writable layer's used bytes reach this many, and fails if they do not: the runtime collects them in the background, so they lag writes (0: one call)")
			return func(c *client, args []string) error {
				if err := exactArgs(args); err != nil {
					return err
				}
				if *n < 1 {
					return usagef("-n must be at least 1")
				}
				if ctr.image == "" && ctr.config == "" {
					return usagef("the containers need an image: -image")
				}
				answer := &parallelAnswer{Pods: make([]*podResult, *n)}
				var wg sync.WaitGroup
				start := time.Now()
				for i := 0; i < *n; i++ {
					res := &podResult{Index: i, Name: fmt.Sprintf("%s-%d", pod.name, i), Steps: []stepTime{}}
					answer.Pods[i] = res
					logDir := ""
					if pod.logDir != "" {
						logDir = filepath.Join(pod.logDir, res.Name)
					}
					podCfg, err := pod.build(res.Name, logDir)
					if err != nil {
						return err
					}
					ctrCfg, err := ctr.build(command, podCfg)
					if err != nil {
						return err
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						cycle(c, res, podCfg, ctrCfg, pod.runtimeHandler, exec, *keep, *grace, *atLeast)
					}()
				}
				wg.Wait()
				answer.Seconds = time.Since(start).Seconds()
				for _, res := range answer.Pods {
					if res.Error != "" {
						answer.Failed++
						fmt.Fprintf(os.Stderr, "cri parallel: pod %s: %s\n", res.Name, res.Error)
					}
				}
				if err := printJSON(answer); err != nil {
					return err
				}
				if answer.Failed > 0 {
					return fmt.Errorf("%d of %d pods failed", answer.Failed, *n)
				}
				return nil
			}
		}})
}

// cycle runs one pod's cycle, recording each step's time into res; its
// stats step waits until the writable layer's used bytes reach atLeast.
func cycle(c *client, res *podResult, podCfg *runtimeapi.PodSandboxConfig, ctrCfg *runtimeapi.ContainerConfig,
	handler string, exec []string, keep bool, grace int64, atLeast uint64) {
	// step times f and records it; after a failure it runs nothing.
	step := func(name string, f func() error) {
		if res.Error != "" {
			return
		}
		t0 := time.Now()
		err := f()
		st := stepTime{Step: name, Seconds: time.Since(t0).Seconds()}
		if err != nil {
			st.Error = err.Error()
			res.Error = name + ": " + err.Error()
		}
		res.Steps = append(res.Steps, st)
	}
	step("runp", func() (err error) {
		res.PodID, err = runPod(c, podCfg, handler)
		return err
	})
	step("create", func() (err error) {
		res.ContainerID, err = createContainer(c, res.PodID, ctrCfg, podCfg)
		return err
	})
	step("start", func() error { return startContainer(c, res.ContainerID) })
	if len(exec) > 0 {
		step("exec", func() (err error) {
			res.Exec, err = execSync(c, res.ContainerID, exec, 0)
			return err
		})
	}
	step("stats", func() error {
		deadline := time.Now().Add(c.timeout)
		for {
			var err error
			res.StatsReads++
			res.Stats, err = containerStats(c, res.ContainerID)
			if wl := res.Stats.GetWritableLayer(); wl != nil {
				res.WritableLayerUsedBytes = wl.GetUsedBytes().GetValue()
				res.WritableLayerInodesUsed = wl.GetInodesUsed().GetValue()
			}
			if err != nil || res.WritableLayerUsedBytes >= atLeast {
				return err
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("ContainerStats %s: the writable layer's used bytes are %d after %d calls in %s, not the %d expected",
					res.ContainerID, res.WritableLayerUsedBytes, res.StatsReads, c.timeout, atLeast)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	if keep {
		return
	}
	step("stop", func() error { return stopContainer(c, res.ContainerID, grace) })
	step("rm", func() error { return removeContainer(c, res.ContainerID) })
	if res.Error != "" && res.PodID != "" {
		// Take the pod down whatever failed; its containers go with it.
		failure := res.Error
		res.Error = ""
		step("stopp", func() error { return stopPod(c, res.PodID) })
		step("rmp", func() error { return removePod(c, res.PodID) })
		res.Error = failure
		return
	}
	step("stopp", func() error { return stopPod(c, res.PodID) })
	step("rmp", func() error { return removePod(c, res.PodID) })
}
