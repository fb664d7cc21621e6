package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Configuration files are the CRI's Go types read with encoding/json, as
// crictl reads them: snake_case field names, enums as numbers (e.g.
// "linux": {"security_context": {"namespace_options": {"network": 2}}}
// for NODE). Flags given on the command line override the file's fields.

// readJSONFile decodes the JSON file path into v, refusing unknown fields
// (a misspelt field would otherwise be silently ignored).
func readJSONFile(path string, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading the configuration: %w", err)
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decoding %s: %w", path, err)
	}
	return nil
}

// keyValues is a repeatable KEY=VALUE flag.
type keyValues map[string]string

func (kv keyValues) String() string {
	parts := make([]string, 0, len(kv))
	for k, v := range kv {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

func (kv keyValues) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("expected KEY=VALUE, got %q", s)
	}
	kv[k] = v
	return nil
}

// jsonArgs is a flag holding a command as a JSON array of strings.
type jsonArgs []string

func (a *jsonArgs) String() string {
	if a == nil || *a == nil {
		return ""
	}
	b, _ := json.Marshal([]string(*a))
	return string(b)
}

func (a *jsonArgs) Set(s string) error {
	var v []string
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return fmt.Errorf("expected a JSON array of strings, e.g. [\"sh\",\"-c\",\"true\"]: %w", err)
	}
	*a = v
	return nil
}

// podFlags are the flags that make a PodSandboxConfig.
type podFlags struct {
	fs             *flag.FlagSet
	config         string
	name           string
	namespace      string
	uid            string
	attempt        uint
	hostname       string
	logDir         string
	cgroupParent   string
	hostNetwork    bool
	runtimeHandler string
	labels         keyValues
	annotations    keyValues
}

// addPodFlags declares the pod flags on fs. With forMany (parallel), -name
// is a prefix and -log-dir a parent directory, each pod getting its own.
func addPodFlags(fs *flag.FlagSet, forMany bool) *podFlags {
	p := &podFlags{fs: fs, labels: keyValues{}, annotations: keyValues{}}
	fs.StringVar(&p.config, "config", "", "a PodSandboxConfig as JSON (crictl's format); the flags override its fields")
	if forMany {
		fs.StringVar(&p.name, "name", "pod", "pod names: NAME-0, NAME-1, ...")
		fs.StringVar(&p.logDir, "log-dir", "", "a directory in which each pod gets its log directory (default: none)")
	} else {
		fs.StringVar(&p.name, "name", "", "the pod's name (metadata.name; required unless in -config)")
		fs.StringVar(&p.logDir, "log-dir", "", "the pod's log directory, where containers' logs go (default: none)")
	}
	fs.StringVar(&p.namespace, "namespace", "", "the pod's namespace (default \"default\")")
	if !forMany {
		// parallel's pods need uids of their own: the default.
		fs.StringVar(&p.uid, "uid", "", "the pod's uid (default NAMESPACE-NAME)")
	}
	fs.UintVar(&p.attempt, "attempt", 0, "the pod's attempt number")
	fs.StringVar(&p.hostname, "hostname", "", "the pod's hostname (default: the host's, with host network)")
	fs.StringVar(&p.cgroupParent, "cgroup-parent", "", "the pod's cgroup parent (linux.cgroup_parent), e.g. cri.slice or /cri")
	fs.BoolVar(&p.hostNetwork, "host-network", true, "the node's network namespace (NamespaceOption network NODE): no CNI needed")
	fs.StringVar(&p.runtimeHandler, "runtime-handler", "", "the runtime handler (default: the runtime's default)")
	fs.Var(p.labels, "label", "a label KEY=VALUE (repeatable)")
	fs.Var(p.annotations, "annotation", "an annotation KEY=VALUE (repeatable)")
	return p
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			given = true
		}
	})
	return given
}

// build makes the PodSandboxConfig: -config's, then the flags given, then
// defaults for what is still empty. name and logDir are the pod's own
// (parallel derives them from the flags).
func (p *podFlags) build(name, logDir string) (*runtimeapi.PodSandboxConfig, error) {
	cfg := &runtimeapi.PodSandboxConfig{}
	if p.config != "" {
		if err := readJSONFile(p.config, cfg); err != nil {
			return nil, err
		}
	}
	if cfg.Metadata == nil {
		cfg.Metadata = &runtimeapi.PodSandboxMetadata{}
	}
	md := cfg.Metadata
	if name != "" {
		md.Name = name
	}
	if p.namespace != "" {
		md.Namespace = p.namespace
	}
	if p.uid != "" {
		md.Uid = p.uid
	}
	if flagSet(p.fs, "attempt") {
		md.Attempt = uint32(p.attempt)
	}
	if md.Name == "" {
		return nil, usagef("the pod needs a name: -name or metadata.name in -config")
	}
	if md.Namespace == "" {
		md.Namespace = "default"
	}
	if md.Uid == "" {
		md.Uid = md.Namespace + "-" + md.Name
	}
	if p.hostname != "" {
		cfg.Hostname = p.hostname
	}
	if logDir != "" {
		cfg.LogDirectory = logDir
	}
	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}
	for k, v := range p.labels {
		cfg.Labels[k] = v
	}
	if cfg.Annotations == nil {
		cfg.Annotations = map[string]string{}
	}
	for k, v := range p.annotations {
		cfg.Annotations[k] = v
	}
	if cfg.Linux == nil {
		cfg.Linux = &runtimeapi.LinuxPodSandboxConfig{}
	}
	if p.cgroupParent != "" {
		cfg.Linux.CgroupParent = p.cgroupParent
	}
	if cfg.Linux.SecurityContext == nil {
		cfg.Linux.SecurityContext = &runtimeapi.LinuxSandboxSecurityContext{}
	}
	sc := cfg.Linux.SecurityContext
	if sc.NamespaceOptions == nil || flagSet(p.fs, "host-network") {
		if sc.NamespaceOptions == nil {
			sc.NamespaceOptions = &runtimeapi.NamespaceOption{}
		}
		if p.hostNetwork {
			sc.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
		} else {
			sc.NamespaceOptions.Network = runtimeapi.NamespaceMode_POD
		}
	}
	return cfg, nil
}

// containerFlags are the flags that make a ContainerConfig.
type containerFlags struct {
	config     string
	name       string
	image      string
	logPath    string
	workdir    string
	args       jsonArgs
	env        keyValues
	labels     keyValues
	readOnly   bool
	nameFlag   string
	fs         *flag.FlagSet
	annotation keyValues
}

// addContainerFlags declares the container flags on fs. With forMany
// (parallel, whose pod flags take the plain names), -config, -name, -label
// and -annotation are -container-config, -container-name, ...
func addContainerFlags(fs *flag.FlagSet, forMany bool) *containerFlags {
	c := &containerFlags{fs: fs, env: keyValues{}, labels: keyValues{}, annotation: keyValues{}}
	prefix, defaultName := "", ""
	if forMany {
		prefix, defaultName = "container-", "c"
	}
	c.nameFlag = prefix + "name"
	fs.StringVar(&c.config, prefix+"config", "", "a ContainerConfig as JSON (crictl's format); the flags override its fields")
	fs.StringVar(&c.name, c.nameFlag, defaultName, "the container's name (metadata.name; required unless in the configuration)")
	fs.StringVar(&c.image, "image", "", "the image (a reference the runtime knows, e.g. docker.io/library/busybox:latest)")
	fs.StringVar(&c.logPath, "log-path", "", "the container's log, relative to the pod's log directory (default NAME.log when the pod has one)")
	fs.StringVar(&c.workdir, "workdir", "", "the working directory")
	fs.Var(&c.args, "args", "the arguments to the command, or to the image's entrypoint, as a JSON array")
	fs.Var(c.env, "env", "an environment variable KEY=VALUE (repeatable)")
	fs.Var(c.labels, prefix+"label", "a label KEY=VALUE (repeatable)")
	fs.Var(c.annotation, prefix+"annotation", "an annotation KEY=VALUE (repeatable)")
	fs.BoolVar(&c.readOnly, "read-only-rootfs", false, "mount the container's root read-only")
	return c
}

// build makes the ContainerConfig: -config's, then the flags given (command:
// the arguments after the flags, if any), then defaults. pod is the pod's
// configuration (for its log directory).
func (c *containerFlags) build(command []string, pod *runtimeapi.PodSandboxConfig) (*runtimeapi.ContainerConfig, error) {
	cfg := &runtimeapi.ContainerConfig{}
	if c.config != "" {
		if err := readJSONFile(c.config, cfg); err != nil {
			return nil, err
		}
	}
	if cfg.Metadata == nil {
		cfg.Metadata = &runtimeapi.ContainerMetadata{}
	}
	if c.name != "" && (cfg.Metadata.Name == "" || flagSet(c.fs, c.nameFlag)) {
		cfg.Metadata.Name = c.name
	}
	if cfg.Metadata.Name == "" {
		return nil, usagef("the container needs a name: -%s or metadata.name in the configuration", c.nameFlag)
	}
	if c.image != "" {
		cfg.Image = &runtimeapi.ImageSpec{Image: c.image}
	}
	if cfg.Image == nil || cfg.Image.Image == "" {
		return nil, usagef("the container needs an image: -image or image.image in the configuration")
	}
	if len(command) > 0 {
		cfg.Command = command
	}
	if c.args != nil {
		cfg.Args = c.args
	}
	if c.workdir != "" {
		cfg.WorkingDir = c.workdir
	}
	for k, v := range c.env {
		cfg.Envs = append(cfg.Envs, &runtimeapi.KeyValue{Key: k, Value: v})
	}
	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}
	for k, v := range c.labels {
		cfg.Labels[k] = v
	}
	if cfg.Annotations == nil {
		cfg.Annotations = map[string]string{}
	}
	for k, v := range c.annotation {
		cfg.Annotations[k] = v
	}
	if c.logPath != "" {
		cfg.LogPath = c.logPath
	}
	if cfg.LogPath == "" && pod != nil && pod.LogDirectory != "" {
		cfg.LogPath = cfg.Metadata.Name + ".log"
	}
	if c.readOnly {
		if cfg.Linux == nil {
			cfg.Linux = &runtimeapi.LinuxContainerConfig{}
		}
		if cfg.Linux.SecurityContext == nil {
			cfg.Linux.SecurityContext = &runtimeapi.LinuxContainerSecurityContext{}
		}
		cfg.Linux.SecurityContext.ReadonlyRootfs = true
	}
	return cfg, nil
}
