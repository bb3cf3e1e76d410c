// Command containerd-stargz-grpc is a small stand-in for stargz-snapshotter's
// daemon, used only by lazysnap's cold-start benchmark as the "stargz" contender
// (Debian 12 ships the snapshotter's Go packages but not its daemon).
//
// It reads a TOML config (the layout stargz-snapshotter's daemon reads: the
// filesystem options of fs/config.Config at top level, e.g.
// `no_background_fetch = true`, plus `[[resolver.host."HOST".mirrors]]` tables
// with `host`, `insecure`, `request_timeout_sec`), builds the remote snapshotter
// from the packages fs (lazy eStargz FUSE layers) and snapshot (overlayfs on top
// of them) under --root, and serves containerd's Snapshots gRPC API
// (containerd.services.snapshots.v1) on the unix socket --address, for use as a
// containerd `proxy_plugins` snapshotter.
//
// Why not stargz-snapshotter's service package: its resolver subpackage imports
// k8s.io/cri-api (for CRI-label sources and the CRI keychain), which Debian 12
// does not package, so it cannot be built offline. This program therefore
// resolves layers only from containerd's default remote-snapshot labels (as set
// by `ctr-remote images rpull`) and accesses every registry anonymously.
//
// On-disk layout under --root: snapshotter/ (metadata.db, snapshots/) and
// stargz/ (layer caches, FUSE mountpoints' state).
//
// On SIGINT/SIGTERM it stops serving and closes the snapshotter (which unmounts
// its FUSE layers).
//
// Build (GOPATH mode against Debian's golang-*-dev packages):
// scripts/build-stargz-grpc.sh.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/containerd/snapshots/overlay/overlayutils"
	stargzfs "github.com/containerd/stargz-snapshotter/fs"
	fsconfig "github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/layer"
	"github.com/containerd/stargz-snapshotter/fs/source"
	"github.com/containerd/stargz-snapshotter/snapshot"
	rhttp "github.com/hashicorp/go-retryablehttp"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

// Default paths, used when a flag is not given.
const (
	defaultAddress = "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock"
	defaultRoot    = "/var/lib/containerd-stargz-grpc"
	defaultConfig  = "/etc/containerd-stargz-grpc/config.toml"
)

// requestTimeout bounds each registry request when a mirror sets no
// request_timeout_sec (0); a negative value there means no bound.
const requestTimeout = 30 * time.Second

// daemonConfig is the TOML file: filesystem options at top level, registry
// mirrors under [resolver].
type daemonConfig struct {
	fsconfig.Config
	Resolver resolverConfig `toml:"resolver"`
}

// resolverConfig maps a registry host name (as in image references) to its mirrors.
type resolverConfig struct {
	Host map[string]hostConfig `toml:"host"`
}

// hostConfig lists the mirrors tried, in order, before the registry itself.
type hostConfig struct {
	Mirrors []mirrorConfig `toml:"mirrors"`
}

// mirrorConfig is one registry endpoint.
type mirrorConfig struct {
	// Host is `name[:port]`.
	Host string `toml:"host"`
	// Insecure selects plain http instead of https.
	Insecure bool `toml:"insecure"`
	// RequestTimeoutSec: 0 = requestTimeout, < 0 = none, > 0 = that many seconds.
	RequestTimeoutSec int `toml:"request_timeout_sec"`
}

func main() {
	address := flag.String("address", defaultAddress, "unix socket path to serve the Snapshots gRPC API on")
	root := flag.String("root", defaultRoot, "directory for snapshots, layer caches and metadata")
	configPath := flag.String("config", defaultConfig, "TOML config (a missing file at the default path means defaults)")
	logLevel := flag.String("log-level", "info", "log level: trace, debug, info, warn, error, fatal, panic")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "containerd-stargz-grpc: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if err := run(*address, *root, *configPath, *logLevel); err != nil {
		fmt.Fprintf(os.Stderr, "containerd-stargz-grpc: %v\n", err)
		os.Exit(1)
	}
}

// loadConfig decodes the TOML file at path. A missing file is an error unless
// path is the default one (then every option keeps its zero/default value).
func loadConfig(path string) (*daemonConfig, error) {
	var cfg daemonConfig
	md, err := toml.DecodeFile(path, &cfg)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && path == defaultConfig {
			return &cfg, nil
		}
		return nil, fmt.Errorf("reading config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		log.L.Warnf("config %s: ignoring unsupported keys %v", path, und)
	}
	return &cfg, nil
}

// registryHosts returns, for an image reference, the endpoints to fetch its
// blobs from: the configured mirrors of its host, then the host itself.
// Localhost and insecure endpoints use http; docker.io means registry-1.docker.io.
// Authorization is anonymous (bearer tokens without credentials).
func registryHosts(cfg resolverConfig) source.RegistryHosts {
	return func(ref reference.Spec) ([]docker.RegistryHost, error) {
		name := ref.Hostname()
		endpoints := append([]mirrorConfig{}, cfg.Host[name].Mirrors...)
		endpoints = append(endpoints, mirrorConfig{Host: name})
		out := make([]docker.RegistryHost, 0, len(endpoints))
		for _, ep := range endpoints {
			retrying := rhttp.NewClient()
			retrying.Logger = nil
			client := retrying.StandardClient()
			switch {
			case ep.RequestTimeoutSec == 0:
				client.Timeout = requestTimeout
			case ep.RequestTimeoutSec > 0:
				client.Timeout = time.Duration(ep.RequestTimeoutSec) * time.Second
			}
			out = append(out, endpoint(ep, client))
		}
		return out, nil
	}
}

// endpoint describes one pull endpoint for containerd's docker remote.
func endpoint(ep mirrorConfig, client *http.Client) docker.RegistryHost {
	h := docker.RegistryHost{
		Client:       client,
		Authorizer:   docker.NewDockerAuthorizer(docker.WithAuthClient(client)),
		Host:         ep.Host,
		Scheme:       "https",
		Path:         "/v2",
		Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
	}
	if local, _ := docker.MatchLocalhost(ep.Host); local || ep.Insecure {
		h.Scheme = "http"
	}
	if h.Host == "docker.io" {
		h.Host = "registry-1.docker.io"
	}
	return h
}

// run builds the snapshotter and serves it until a signal or a serve error.
func run(address, root, configPath, logLevel string) error {
	lvl, err := logrus.ParseLevel(logLevel)
	if err != nil {
		return fmt.Errorf("--log-level %q: %w", logLevel, err)
	}
	logrus.SetLevel(lvl)
	logrus.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: log.RFC3339NanoFixed})
	ctx := log.WithLogger(context.Background(), log.L)

	cfg, err := loadConfig(configPath)
	if err != nil {
		return err
	}
	snRoot := filepath.Join(root, "snapshotter")
	fsRoot := filepath.Join(root, "stargz")
	for _, d := range []string{snRoot, fsRoot} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}

	// Overlay opaque-directory xattrs: trusted.* normally, user.* when overlayfs
	// needs "userxattr" (rootless, user namespaces).
	opaque := layer.OverlayOpaqueTrusted
	if user, err := overlayutils.NeedsUserXAttr(snRoot); err != nil {
		log.G(ctx).WithError(err).Warn("cannot tell whether overlayfs needs userxattr; assuming not")
	} else if user {
		opaque = layer.OverlayOpaqueUser
	}

	fs, err := stargzfs.NewFilesystem(fsRoot, cfg.Config,
		stargzfs.WithGetSources(source.FromDefaultLabels(registryHosts(cfg.Resolver))),
		stargzfs.WithOverlayOpaqueType(opaque),
		stargzfs.WithMetricsLogLevel(logrus.DebugLevel),
	)
	if err != nil {
		return fmt.Errorf("creating the stargz filesystem under %s: %w", fsRoot, err)
	}
	sn, err := snapshot.NewSnapshotter(ctx, snRoot, fs, snapshot.AsynchronousRemove)
	if err != nil {
		return fmt.Errorf("creating the snapshotter under %s: %w", snRoot, err)
	}
	defer func() {
		if err := sn.Close(); err != nil {
			log.G(ctx).WithError(err).Warn("closing the snapshotter")
		}
	}()

	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return fmt.Errorf("creating the directory of socket %s: %w", address, err)
	}
	if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale socket %s: %w", address, err)
	}
	lis, err := net.Listen("unix", address)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", address, err)
	}

	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	log.G(ctx).WithField("address", address).WithField("root", root).Info("serving the stargz snapshotter")

	select {
	case s := <-sigs:
		log.G(ctx).Infof("got %v; shutting down", s)
		srv.Stop()
		return nil
	case err := <-served:
		if err != nil {
			return fmt.Errorf("serving on %s: %w", address, err)
		}
		return nil
	}
}
