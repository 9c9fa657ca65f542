// Command pluginbench measures hashicorp/go-plugin, the library a Go user
// would otherwise pick for a supervisor talking to a worker process, the
// same way as the go-plugin rows of the reference measurements
// (docs/BASELINES.md) and in the output style of bench/cbench.c.
//
// The binary is both sides: started with "plugin netrpc" or "plugin grpc"
// (as go-plugin's client does, with the handshake cookie in the environment)
// it serves a one-method Pinger with plugin.Serve; otherwise it is the host.
//
// Usage:
//
//	pluginbench ping netrpc|grpc N WARM   WARM untimed, then N timed Ping calls
//	pluginbench spawn netrpc|grpc N       N x (NewClient + Client + Dispense +
//	                                      first Ping); Kill after the clock
//	pluginbench all                       everything, with the defaults below
//	pluginbench plugin netrpc|grpc        internal: the plugin process
//
// "all" defaults, overridable from the environment (e.g. for a smoke run):
// PLUGIN_PINGS=20000 PLUGIN_WARM=2000 PLUGIN_SPAWNS=50.
//
// Output: one line per measurement, a name and then space-separated
// key=value pairs; lines starting with '#' are comments (see README.md).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/rpc"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// handshake is the go-plugin handshake: a plugin started without the cookie
// in its environment refuses to run.
var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "PAIRVISOR_PLUGINBENCH",
	MagicCookieValue: "ping-pong",
}

const pluginName = "pinger"

// Pinger is the plugin's interface: Ping answers "pong".
type Pinger interface {
	Ping() (string, error)
}

type pinger struct{}

func (pinger) Ping() (string, error) { return "pong", nil }

// ---------- net/rpc transport (go-plugin's default, over yamux) ----------

type netrpcPlugin struct{}

func (netrpcPlugin) Server(*plugin.MuxBroker) (any, error) {
	return &pingRPCServer{impl: pinger{}}, nil
}

func (netrpcPlugin) Client(_ *plugin.MuxBroker, c *rpc.Client) (any, error) {
	return &pingRPCClient{client: c}, nil
}

type pingRPCServer struct{ impl Pinger }

// Ping is the net/rpc method; the argument is unused (as in go-plugin's
// own net/rpc example).
func (s *pingRPCServer) Ping(_ any, resp *string) error {
	var err error
	*resp, err = s.impl.Ping()
	return err
}

type pingRPCClient struct{ client *rpc.Client }

func (c *pingRPCClient) Ping() (string, error) {
	var resp string
	err := c.client.Call("Plugin.Ping", new(any), &resp)
	return resp, err
}

// ---------- gRPC transport (HTTP/2 + protobuf) ----------
//
// A hand-written service description stands in for protoc output: the
// request is google.protobuf.Empty, the reply a google.protobuf.StringValue,
// both encoded by grpc's default proto codec.

const pingMethod = "/pairvisor.bench.Pinger/Ping"

type pingGRPCServer interface {
	Ping(context.Context, *emptypb.Empty) (*wrapperspb.StringValue, error)
}

var pingServiceDesc = grpc.ServiceDesc{
	ServiceName: "pairvisor.bench.Pinger",
	HandlerType: (*pingGRPCServer)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Ping", Handler: pingHandler}},
	Metadata:    "pluginbench (hand-written, no .proto file)",
}

func pingHandler(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
	in := new(emptypb.Empty)
	if err := dec(in); err != nil {
		return nil, err
	}
	call := func(ctx context.Context, req any) (any, error) {
		return srv.(pingGRPCServer).Ping(ctx, req.(*emptypb.Empty))
	}
	if icpt == nil {
		return call(ctx, in)
	}
	return icpt(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: pingMethod}, call)
}

type grpcServerImpl struct{ impl Pinger }

func (s grpcServerImpl) Ping(context.Context, *emptypb.Empty) (*wrapperspb.StringValue, error) {
	v, err := s.impl.Ping()
	if err != nil {
		return nil, err
	}
	return wrapperspb.String(v), nil
}

type grpcPlugin struct {
	plugin.NetRPCUnsupportedPlugin // a PluginSet entry must be a plugin.Plugin
}

func (grpcPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	s.RegisterService(&pingServiceDesc, grpcServerImpl{impl: pinger{}})
	return nil
}

func (grpcPlugin) GRPCClient(ctx context.Context, _ *plugin.GRPCBroker, cc *grpc.ClientConn) (any, error) {
	return &pingGRPCClient{ctx: ctx, cc: cc}, nil
}

type pingGRPCClient struct {
	ctx context.Context
	cc  *grpc.ClientConn
}

func (c *pingGRPCClient) Ping() (string, error) {
	out := new(wrapperspb.StringValue)
	if err := c.cc.Invoke(c.ctx, pingMethod, &emptypb.Empty{}, out); err != nil {
		return "", err
	}
	return out.GetValue(), nil
}

// ---------- both sides ----------

// pluginSet returns the plugins for a transport name ("netrpc" or "grpc").
// go-plugin picks gRPC on the plugin side when the set's plugins implement
// plugin.GRPCPlugin, so each transport has its own set.
func pluginSet(proto string) (plugin.PluginSet, plugin.Protocol, error) {
	switch proto {
	case "netrpc":
		return plugin.PluginSet{pluginName: netrpcPlugin{}}, plugin.ProtocolNetRPC, nil
	case "grpc":
		return plugin.PluginSet{pluginName: grpcPlugin{}}, plugin.ProtocolGRPC, nil
	}
	return nil, "", fmt.Errorf("unknown transport %q (want netrpc or grpc)", proto)
}

// quietLogger logs errors only, to stderr, so that stdout carries nothing
// but results. The plugin side uses JSON, which the host's go-plugin parses.
func quietLogger(name string, json bool) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      hclog.Error,
		Output:     os.Stderr,
		JSONFormat: json,
	})
}

// servePlugin is the plugin process: it serves until the host kills it.
func servePlugin(proto string) error {
	set, _, err := pluginSet(proto)
	if err != nil {
		return err
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: handshake,
		Plugins:         set,
		GRPCServer:      plugin.DefaultGRPCServer,
		Logger:          quietLogger("pluginbench-plugin", true),
	})
	return nil
}

// startPlugin runs the host side of a start-up: NewClient, Client() (start
// the process, read the handshake line, connect), Dispense. On success the
// caller must Kill the returned client; on error it has been killed already.
func startPlugin(self, proto string) (*plugin.Client, Pinger, error) {
	set, protocol, err := pluginSet(proto)
	if err != nil {
		return nil, nil, err
	}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  handshake,
		Plugins:          set,
		Cmd:              exec.Command(self, "plugin", proto),
		AllowedProtocols: []plugin.Protocol{protocol},
		Logger:           quietLogger("pluginbench", false),
	})
	p, err := dispense(client, proto)
	if err != nil {
		client.Kill()
		return nil, nil, err
	}
	return client, p, nil
}

func dispense(client *plugin.Client, proto string) (Pinger, error) {
	rpcClient, err := client.Client()
	if err != nil {
		return nil, fmt.Errorf("%s: start plugin: %w", proto, err)
	}
	raw, err := rpcClient.Dispense(pluginName)
	if err != nil {
		return nil, fmt.Errorf("%s: dispense: %w", proto, err)
	}
	p, ok := raw.(Pinger)
	if !ok {
		return nil, fmt.Errorf("%s: dispensed %T, not a Pinger", proto, raw)
	}
	return p, nil
}

func checkPong(proto, got string) error {
	if got != "pong" {
		return fmt.Errorf("%s: Ping returned %q, want \"pong\"", proto, got)
	}
	return nil
}

// ---------- measurements ----------

// stats are nearest-rank percentiles (p = sorted[ceil(q*N)-1]) and the mean
// of ns, in µs. ns is sorted in place.
type stats struct{ p50, p99, p999, mean float64 }

func summarize(ns []int64) stats {
	slices.Sort(ns)
	rank := func(q float64) float64 {
		r := int(math.Ceil(q * float64(len(ns))))
		r = max(r, 1)
		return float64(ns[r-1]) / 1e3
	}
	var sum float64
	for _, v := range ns {
		sum += float64(v)
	}
	return stats{rank(0.50), rank(0.99), rank(0.999), sum / float64(len(ns)) / 1e3}
}

// benchPing starts one plugin, makes warm untimed and n timed Ping calls,
// each timed with its own time.Now pair, and prints one line.
func benchPing(w io.Writer, self, proto string, n, warm int) error {
	client, p, err := startPlugin(self, proto)
	if err != nil {
		return err
	}
	defer client.Kill()
	var resp string
	for range warm {
		if resp, err = p.Ping(); err != nil {
			return fmt.Errorf("%s: warm-up Ping: %w", proto, err)
		}
	}
	ns := make([]int64, n)
	for i := range ns {
		t0 := time.Now()
		resp, err = p.Ping()
		ns[i] = int64(time.Since(t0))
		if err != nil {
			return fmt.Errorf("%s: Ping: %w", proto, err)
		}
	}
	if err := checkPong(proto, resp); err != nil {
		return err
	}
	s := summarize(ns)
	_, err = fmt.Fprintf(w, "goplugin_%s_ping p50_us=%.2f p99_us=%.2f p999_us=%.2f mean_us=%.2f n=%d warm=%d\n",
		proto, s.p50, s.p99, s.p999, s.mean, n, warm)
	return err
}

// spawnOnce times NewClient + Client() + Dispense + the first Ping; Kill
// runs after the clock has stopped.
func spawnOnce(self, proto string) (time.Duration, error) {
	t0 := time.Now()
	client, p, err := startPlugin(self, proto)
	if err != nil {
		return 0, err
	}
	resp, err := p.Ping()
	d := time.Since(t0)
	client.Kill()
	if err != nil {
		return 0, fmt.Errorf("%s: first Ping: %w", proto, err)
	}
	return d, checkPong(proto, resp)
}

func benchSpawn(w io.Writer, self, proto string, n int) error {
	ns := make([]int64, n)
	for i := range ns {
		d, err := spawnOnce(self, proto)
		if err != nil {
			return err
		}
		ns[i] = int64(d)
	}
	s := summarize(ns)
	_, err := fmt.Fprintf(w, "goplugin_%s_spawn p50_us=%.2f p99_us=%.2f mean_us=%.2f n=%d\n",
		proto, s.p50, s.p99, s.mean, n)
	return err
}

// ---------- command line ----------

// moduleVersion reports the version of a dependency linked into this binary.
func moduleVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == path {
				return m.Version
			}
		}
	}
	return "unknown"
}

func parseCount(s, what string, lo int) (int, error) {
	v, err := strconv.Atoi(s)
	if err != nil || v < lo {
		return 0, fmt.Errorf("bad %s %q (want an integer >= %d)", what, s, lo)
	}
	return v, nil
}

// envCount returns the environment override name, or def when it is unset.
func envCount(name string, def, lo int) (int, error) {
	s := os.Getenv(name)
	if s == "" {
		return def, nil
	}
	return parseCount(s, name, lo)
}

func benchAll(w io.Writer, self string) error {
	pings, err := envCount("PLUGIN_PINGS", 20000, 1)
	if err != nil {
		return err
	}
	warm, err := envCount("PLUGIN_WARM", 2000, 0)
	if err != nil {
		return err
	}
	spawns, err := envCount("PLUGIN_SPAWNS", 50, 1)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "# pluginbench all pings=%d warm=%d spawns=%d\n", pings, warm, spawns)
	fmt.Fprintf(w, "# %s GOMAXPROCS=%d go-plugin=%s grpc=%s\n", runtime.Version(),
		runtime.GOMAXPROCS(0), moduleVersion("github.com/hashicorp/go-plugin"),
		moduleVersion("google.golang.org/grpc"))
	for _, proto := range []string{"netrpc", "grpc"} {
		if err := benchPing(w, self, proto, pings, warm); err != nil {
			return err
		}
	}
	for _, proto := range []string{"netrpc", "grpc"} {
		if err := benchSpawn(w, self, proto, spawns); err != nil {
			return err
		}
	}
	return nil
}

var errUsage = errors.New(`usage: pluginbench ping netrpc|grpc N WARM
       pluginbench spawn netrpc|grpc N
       pluginbench all   (env: PLUGIN_PINGS PLUGIN_WARM PLUGIN_SPAWNS)`)

func run(args []string) error {
	if len(args) == 2 && args[0] == "plugin" {
		return servePlugin(args[1])
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	switch {
	case len(args) == 1 && args[0] == "all":
		return benchAll(os.Stdout, self)
	case len(args) == 4 && args[0] == "ping":
		n, err := parseCount(args[2], "N", 1)
		if err != nil {
			return err
		}
		warm, err := parseCount(args[3], "WARM", 0)
		if err != nil {
			return err
		}
		return benchPing(os.Stdout, self, args[1], n, warm)
	case len(args) == 3 && args[0] == "spawn":
		n, err := parseCount(args[2], "N", 1)
		if err != nil {
			return err
		}
		return benchSpawn(os.Stdout, self, args[1], n)
	}
	return errUsage
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "pluginbench:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
