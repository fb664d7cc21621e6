package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// idAnswer is the answer of the calls that make, start, stop or remove
// something: its id.
type idAnswer struct {
	ID string `json:"id"`
}

// execAnswer is ExecSync's answer, its output as text (invalid UTF-8
// becomes U+FFFD).
type execAnswer struct {
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	ExitCode int32  `json:"exit_code"`
}

func init() {
	register(command{name: "version", summary: "the runtime's name and versions (Version)",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			return func(c *client, args []string) error {
				if err := exactArgs(args); err != nil {
					return err
				}
				ctx, cancel := c.ctx()
				defer cancel()
				r, err := c.runtime.Version(ctx, &runtimeapi.VersionRequest{})
				if err != nil {
					return fmt.Errorf("Version: %w", err)
				}
				return printJSON(r)
			}
		}})

	register(command{name: "status", summary: "the runtime's conditions (Status; RuntimeReady, NetworkReady)",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			verbose := fs.Bool("v", false, "with the runtime's own information (its configuration, as JSON strings)")
			return func(c *client, args []string) error {
				if err := exactArgs(args); err != nil {
					return err
				}
				ctx, cancel := c.ctx()
				defer cancel()
				r, err := c.runtime.Status(ctx, &runtimeapi.StatusRequest{Verbose: *verbose})
				if err != nil {
					return fmt.Errorf("Status: %w", err)
				}
				return printJSON(r)
			}
		}})

	register(command{name: "images", args: "[REF]", summary: "the images the runtime has (ListImages), or those matching REF",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			return func(c *client, args []string) error {
				if len(args) > 1 {
					return usagef("expected at most one image reference, got %q", args)
				}
				req := &runtimeapi.ListImagesRequest{}
				if len(args) == 1 {
					req.Filter = &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: args[0]}}
				}
				ctx, cancel := c.ctx()
				defer cancel()
				r, err := c.image.ListImages(ctx, req)
				if err != nil {
					return fmt.Errorf("ListImages: %w", err)
				}
				return printJSON(r)
			}
		}})

	register(command{name: "image-status", args: "REF", summary: "one image (ImageStatus; image null if the runtime has none)",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			verbose := fs.Bool("v", false, "with the runtime's own information")
			return func(c *client, args []string) error {
				if err := exactArgs(args, "REF"); err != nil {
					return err
				}
				ctx, cancel := c.ctx()
				defer cancel()
				r, err := c.image.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{
					Image: &runtimeapi.ImageSpec{Image: args[0]}, Verbose: *verbose})
				if err != nil {
					return fmt.Errorf("ImageStatus %s: %w", args[0], err)
				}
				return printJSON(r)
			}
		}})

	register(command{name: "image-fs-info", summary: "the image and container filesystems' usage (ImageFsInfo)",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			return func(c *client, args []string) error {
				if err := exactArgs(args); err != nil {
					return err
				}
				ctx, cancel := c.ctx()
				defer cancel()
				r, err := c.image.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
				if err != nil {
					return fmt.Errorf("ImageFsInfo: %w", err)
				}
				return printJSON(r)
			}
		}})

	register(command{name: "rmi", args: "REF", summary: "removes an image (RemoveImage)",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			return onID("REF", func(c *client, ref string) error {
				ctx, cancel := c.ctx()
				defer cancel()
				if _, err := c.image.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{
					Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
					return fmt.Errorf("RemoveImage %s: %w", ref, err)
				}
				return nil
			})
		}})

	register(command{name: "runp", summary: "starts a pod (RunPodSandbox): {\"id\": POD}",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			pod := addPodFlags(fs, false)
			return func(c *client, args []string) error {
				if err := exactArgs(args); err != nil {
					return err
				}
				cfg, err := pod.build(pod.name, pod.logDir)
				if err != nil {
					return err
				}
				id, err := runPod(c, cfg, pod.runtimeHandler)
				if err != nil {
					return err
				}
				return printJSON(idAnswer{id})
			}
		}})

	register(command{name: "create", args: "[COMMAND [ARG...]]",
		summary: "creates a container in a pod (CreateContainer): {\"id\": CONTAINER}",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			podID := fs.String("pod", "", "the pod's id (required)")
			podConfig := fs.String("pod-config", "", "the pod's PodSandboxConfig as JSON (default: asked of the runtime, PodSandboxStatus verbose)")
			ctr := addContainerFlags(fs, false)
			return func(c *client, args []string) error {
				if *podID == "" {
					return usagef("which pod: -pod ID")
				}
				var podCfg *runtimeapi.PodSandboxConfig
				var err error
				if *podConfig != "" {
					podCfg = &runtimeapi.PodSandboxConfig{}
					err = readJSONFile(*podConfig, podCfg)
				} else {
					podCfg, err = podConfigOf(c, *podID)
				}
				if err != nil {
					return err
				}
				cfg, err := ctr.build(args, podCfg)
				if err != nil {
					return err
				}
				id, err := createContainer(c, *podID, cfg, podCfg)
				if err != nil {
					return err
				}
				return printJSON(idAnswer{id})
			}
		}})

	register(command{name: "start", args: "CONTAINER", summary: "starts a container (StartContainer)",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			return onID("CONTAINER", startContainer)
		}})

	register(command{name: "exec", args: "CONTAINER COMMAND [ARG...]",
		summary: "runs a command in a container and waits (ExecSync): {\"stdout\", \"stderr\", \"exit_code\"}; exit status 0 whatever the command's",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			timeout := fs.Int64("t", 0, "seconds the runtime lets the command run (0: no limit but -timeout's)")
			return func(c *client, args []string) error {
				if len(args) < 2 {
					return usagef("expected CONTAINER COMMAND [ARG...], got %q", args)
				}
				r, err := execSync(c, args[0], args[1:], *timeout)
				if err != nil {
					return err
				}
				return printJSON(r)
			}
		}})

	register(command{name: "stats", args: "[CONTAINER]",
		summary: "a container's usage, its writable layer's bytes and inodes among it (ContainerStats), or every container's (ListContainerStats)",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			podID := fs.String("pod", "", "without CONTAINER: only this pod's containers")
			return func(c *client, args []string) error {
				if len(args) > 1 {
					return usagef("expected at most one container, got %q", args)
				}
				ctx, cancel := c.ctx()
				defer cancel()
				if len(args) == 1 {
					r, err := c.runtime.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: args[0]})
					if err != nil {
						return fmt.Errorf("ContainerStats %s: %w", args[0], err)
					}
					return printJSON(r)
				}
				r, err := c.runtime.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{
					Filter: &runtimeapi.ContainerStatsFilter{PodSandboxId: *podID}})
				if err != nil {
					return fmt.Errorf("ListContainerStats: %w", err)
				}
				return printJSON(r)
			}
		}})

	register(command{name: "pods", summary: "the pods (ListPodSandbox)",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			id := fs.String("id", "", "only the pod with this id")
			ready := fs.Bool("ready", false, "only the ready pods")
			return func(c *client, args []string) error {
				if err := exactArgs(args); err != nil {
					return err
				}
				filter := &runtimeapi.PodSandboxFilter{Id: *id}
				if *ready {
					filter.State = &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY}
				}
				ctx, cancel := c.ctx()
				defer cancel()
				r, err := c.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: filter})
				if err != nil {
					return fmt.Errorf("ListPodSandbox: %w", err)
				}
				return printJSON(r)
			}
		}})

	register(command{name: "ps", summary: "the containers (ListContainers)",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			id := fs.String("id", "", "only the container with this id")
			podID := fs.String("pod", "", "only this pod's containers")
			state := fs.String("state", "", "only containers in this state: created, running, exited or unknown")
			return func(c *client, args []string) error {
				if err := exactArgs(args); err != nil {
					return err
				}
				filter := &runtimeapi.ContainerFilter{Id: *id, PodSandboxId: *podID}
				if *state != "" {
					v, ok := runtimeapi.ContainerState_value["CONTAINER_"+strings.ToUpper(*state)]
					if !ok {
						return usagef("no container state %q: created, running, exited or unknown", *state)
					}
					filter.State = &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState(v)}
				}
				ctx, cancel := c.ctx()
				defer cancel()
				r, err := c.runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: filter})
				if err != nil {
					return fmt.Errorf("ListContainers: %w", err)
				}
				return printJSON(r)
			}
		}})

	register(command{name: "inspectp", args: "POD", summary: "a pod's status (PodSandboxStatus)",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			verbose := fs.Bool("v", false, "with the runtime's own information (its config and pid, as a JSON string)")
			return func(c *client, args []string) error {
				if err := exactArgs(args, "POD"); err != nil {
					return err
				}
				ctx, cancel := c.ctx()
				defer cancel()
				r, err := c.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: args[0], Verbose: *verbose})
				if err != nil {
					return fmt.Errorf("PodSandboxStatus %s: %w", args[0], err)
				}
				return printJSON(r)
			}
		}})

	register(command{name: "inspect", args: "CONTAINER", summary: "a container's status (ContainerStatus)",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			verbose := fs.Bool("v", false, "with the runtime's own information (as a JSON string)")
			return func(c *client, args []string) error {
				if err := exactArgs(args, "CONTAINER"); err != nil {
					return err
				}
				ctx, cancel := c.ctx()
				defer cancel()
				r, err := c.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: args[0], Verbose: *verbose})
				if err != nil {
					return fmt.Errorf("ContainerStatus %s: %w", args[0], err)
				}
				return printJSON(r)
			}
		}})

	register(command{name: "stop", args: "CONTAINER", summary: "stops a container (StopContainer)",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			grace := fs.Int64("t", 0, "seconds between the stop signal and SIGKILL (0: SIGKILL at once, as crictl)")
			return onID("CONTAINER", func(c *client, id string) error {
				return stopContainer(c, id, *grace)
			})
		}})

	register(command{name: "rm", args: "CONTAINER", summary: "removes a container (RemoveContainer)",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			return onID("CONTAINER", removeContainer)
		}})

	register(command{name: "stopp", args: "POD", summary: "stops a pod and its containers (StopPodSandbox)",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			return onID("POD", stopPod)
		}})

	register(command{name: "rmp", args: "POD", summary: "removes a stopped pod and its containers (RemovePodSandbox)",
		setup: func(fs *flag.FlagSet) func(*client, []string) error {
			return onID("POD", removePod)
		}})
}

// The calls parallel makes too.

func runPod(c *client, cfg *runtimeapi.PodSandboxConfig, handler string) (string, error) {
	ctx, cancel := c.ctx()
	defer cancel()
	r, err := c.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
	if err != nil {
		return "", fmt.Errorf("RunPodSandbox %s: %w", cfg.Metadata.Name, err)
	}
	return r.PodSandboxId, nil
}

// podConfigOf asks the runtime for the configuration pod was made with:
// containerd's verbose PodSandboxStatus has it in info["info"].config.
func podConfigOf(c *client, pod string) (*runtimeapi.PodSandboxConfig, error) {
	ctx, cancel := c.ctx()
	defer cancel()
	r, err := c.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: pod, Verbose: true})
	if err != nil {
		return nil, fmt.Errorf("PodSandboxStatus %s (for the pod's configuration): %w", pod, err)
	}
	var info struct {
		Config *runtimeapi.PodSandboxConfig `json:"config"`
	}
	raw, ok := r.Info["info"]
	if ok {
		err = json.Unmarshal([]byte(raw), &info)
	}
	if !ok || err != nil || info.Config == nil {
		return nil, fmt.Errorf("the runtime's PodSandboxStatus of %s has no configuration in info[\"info\"] (%v): give it with -pod-config", pod, err)
	}
	return info.Config, nil
}

func createContainer(c *client, pod string, cfg *runtimeapi.ContainerConfig, podCfg *runtimeapi.PodSandboxConfig) (string, error) {
	ctx, cancel := c.ctx()
	defer cancel()
	r, err := c.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod, Config: cfg, SandboxConfig: podCfg})
	if err != nil {
		return "", fmt.Errorf("CreateContainer %s in pod %s: %w", cfg.Metadata.Name, pod, err)
	}
	return r.ContainerId, nil
}

func startContainer(c *client, id string) error {
	ctx, cancel := c.ctx()
	defer cancel()
	if _, err := c.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		return fmt.Errorf("StartContainer %s: %w", id, err)
	}
	return nil
}

func execSync(c *client, id string, cmd []string, timeout int64) (*execAnswer, error) {
	ctx, cancel := c.ctx()
	defer cancel()
	r, err := c.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: timeout})
	if err != nil {
		return nil, fmt.Errorf("ExecSync %q in %s: %w", cmd, id, err)
	}
	return &execAnswer{Stdout: string(r.Stdout), Stderr: string(r.Stderr), ExitCode: r.ExitCode}, nil
}

func containerStats(c *client, id string) (*runtimeapi.ContainerStats, error) {
	ctx, cancel := c.ctx()
	defer cancel()
	r, err := c.runtime.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: id})
	if err != nil {
		return nil, fmt.Errorf("ContainerStats %s: %w", id, err)
	}
	return r.Stats, nil
}

func stopContainer(c *client, id string, grace int64) error {
	ctx, cancel := c.ctx()
	defer cancel()
	if _, err := c.runtime.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: grace}); err != nil {
		return fmt.Errorf("StopContainer %s: %w", id, err)
	}
	return nil
}

func removeContainer(c *client, id string) error {
	ctx, cancel := c.ctx()
	defer cancel()
	if _, err := c.runtime.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		return fmt.Errorf("RemoveContainer %s: %w", id, err)
	}
	return nil
}

func stopPod(c *client, id string) error {
	ctx, cancel := c.ctx()
	defer cancel()
	if _, err := c.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("StopPodSandbox %s: %w", id, err)
	}
	return nil
}

func removePod(c *client, id string) error {
	ctx, cancel := c.ctx()
	defer cancel()
	if _, err := c.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("RemovePodSandbox %s: %w", id, err)
	}
	return nil
}
