// Command cri is a small client of the Kubernetes Container Runtime
// Interface (CRI v1, gRPC), in the manner of crictl, for the device tests:
// it drives containerd's CRI plugin the way a Kubernetes node does.
//
// Every answer is JSON on stdout; errors go to stderr, with exit status 1
// (2 for a bad command line). See README.md for the subcommands and the
// shapes of their answers, and `cri -h`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// defaultEndpoint is containerd's usual socket.
const defaultEndpoint = "unix:///run/containerd/containerd.sock"

// maxMessage is the largest gRPC message accepted: ExecSync's output may
// be up to 16 MiB per stream.
const maxMessage = 64 << 20

// usageError is a bad command line: exit status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}

// client holds the connection and the per-call deadline.
type client struct {
	runtime runtimeapi.RuntimeServiceClient
	image   runtimeapi.ImageServiceClient
	timeout time.Duration
}

// ctx is the context of one call: it ends after the -timeout.
func (c *client) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), c.timeout)
}

// command is one subcommand.
type command struct {
	name    string
	args    string // what follows the flags, for the usage line
	summary string
	// setup declares the subcommand's flags on fs and returns the function
	// that runs it with the arguments left after them.
	setup func(fs *flag.FlagSet) func(c *client, args []string) error
}

// commands lists the subcommands in the order -h shows them.
var commands []command

func register(cmd command) { commands = append(commands, cmd) }

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run parses the command line, runs the subcommand and returns the exit
// status.
func run(argv []string, stderr io.Writer) int {
	global := flag.NewFlagSet("cri", flag.ContinueOnError)
	global.SetOutput(stderr)
	endpoint := global.String("endpoint", envOr("CONTAINER_RUNTIME_ENDPOINT", defaultEndpoint),
		"the CRI server's gRPC `address` (unix:///path/to/containerd.sock); default $CONTAINER_RUNTIME_ENDPOINT or "+defaultEndpoint)
	timeout := global.Duration("timeout", 2*time.Minute, "deadline of each CRI call (parallel: of each call of each pod)")
	global.Usage = func() {
		fmt.Fprintf(stderr, "usage: cri [-endpoint ADDRESS] [-timeout DURATION] COMMAND [FLAGS] [ARGS]\n\nglobal flags:\n")
		global.PrintDefaults()
		fmt.Fprintf(stderr, "\ncommands (cri COMMAND -h for their flags):\n")
		for _, cmd := range commands {
			fmt.Fprintf(stderr, "  %-14s %s\n", cmd.name, cmd.summary)
		}
	}
	if err := global.Parse(argv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if global.NArg() == 0 {
		global.Usage()
		return 2
	}
	name := global.Arg(0)
	var cmd *command
	for i := range commands {
		if commands[i].name == name {
			cmd = &commands[i]
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "cri: no command %q (cri -h lists them)\n", name)
		return 2
	}
	fs := flag.NewFlagSet("cri "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	runCmd := cmd.setup(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: cri %s [FLAGS] %s\n%s\n", name, cmd.args, cmd.summary)
		fs.PrintDefaults()
	}
	if err := fs.Parse(global.Args()[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	conn, err := grpc.NewClient(*endpoint,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)))
	if err != nil {
		fmt.Fprintf(stderr, "cri %s: cannot use the endpoint %s: %v\n", name, *endpoint, err)
		return 1
	}
	defer conn.Close()
	c := &client{
		runtime: runtimeapi.NewRuntimeServiceClient(conn),
		image:   runtimeapi.NewImageServiceClient(conn),
		timeout: *timeout,
	}
	if err := runCmd(c, fs.Args()); err != nil {
		fmt.Fprintf(stderr, "cri %s: %v\n", name, err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// exactArgs checks that args holds exactly the names given.
func exactArgs(args []string, names ...string) error {
	if len(args) != len(names) {
		return usagef("expected %s, got %d argument(s): %q", strings.Join(names, " "), len(args), args)
	}
	return nil
}

// onID is the run function of a command that takes one argument, named
// what in its usage: it calls do with it and answers {"id": ARG}.
func onID(what string, do func(c *client, id string) error) func(*client, []string) error {
	return func(c *client, args []string) error {
		if err := exactArgs(args, what); err != nil {
			return err
		}
		if err := do(c, args[0]); err != nil {
			return err
		}
		return printJSON(idAnswer{args[0]})
	}
}

// printJSON writes v to stdout as indented JSON (see encode.go).
func printJSON(v any) error {
	b, err := marshalJSON(v)
	if err != nil {
		return fmt.Errorf("encoding the answer as JSON: %w", err)
	}
	_, err = os.Stdout.Write(append(b, '\n'))
	return err
}
