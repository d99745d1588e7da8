package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/lbkit/lbkit/config"
	"github.com/lbkit/lbkit/internal/daemon"
)

// etcdFlags are the flags of lbkit serve and lbkit status that name a
// cluster in etcd.
type etcdFlags struct {
	endpoints, prefix, node *string
}

func addEtcdFlags(fs *flag.FlagSet, node bool) etcdFlags {
	f := etcdFlags{
		endpoints: fs.String("etcd", "", "etcd client `URLs`, comma-separated: run as a node of the cluster whose configuration is in etcd"),
		prefix:    fs.String("etcd-prefix", "/lbkit", "the cluster's etcd key `prefix` (configuration at PREFIX/config)"),
	}
	if node {
		host, _ := os.Hostname()
		f.node = fs.String("node", host, "this node's `name` in the cluster")
	}
	return f
}

// client connects to the flags' etcd endpoints.
func (f etcdFlags) client() (*clientv3.Client, error) {
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(*f.endpoints, ","),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	return c, nil
}

// startCluster starts d as a node of the flags' cluster; stop leaves the
// cluster (the node's view goes at once) and closes the client.
func (f etcdFlags) startCluster(ctx context.Context, d *daemon.Daemon) (stop func(), err error) {
	c, err := f.client()
	if err != nil {
		return nil, err
	}
	leave, err := d.StartCluster(ctx, daemon.ClusterOptions{Client: c, Prefix: *f.prefix, Node: *f.node})
	if err != nil {
		c.Close()
		return nil, err
	}
	return func() {
		leave()
		c.Close()
	}, nil
}

// serveCluster runs lbkit serve as a node of a cluster: the configuration
// comes from etcd (and changes there are applied), until SIGTERM or
// SIGINT.
func serveCluster(ctx context.Context, f etcdFlags, file, admin string, log *slog.Logger, stdout, stderr io.Writer) int {
	if file != "" {
		fmt.Fprintln(stderr, "lbkit serve: -config and -etcd exclude each other: a cluster's configuration is in etcd")
		return 2
	}
	if *f.node == "" {
		fmt.Fprintln(stderr, "lbkit serve: -etcd needs -node NAME")
		return 2
	}
	d := daemon.New(daemon.Options{AdminAddr: admin, Logger: log})
	stop, err := f.startCluster(ctx, d)
	if err != nil {
		fmt.Fprintln(stderr, "lbkit serve:", err)
		return 1
	}
	fmt.Fprintf(stdout, "lbkit serve: node %s of the cluster at %s%s (admin %s); SIGTERM stops\n",
		*f.node, *f.endpoints, daemon.ConfigKey(*f.prefix), orOff(d.AdminAddr()))
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	for {
		select {
		case <-ctx.Done():
		case s := <-sigs:
			switch s {
			case syscall.SIGHUP:
				log.Info("lbkit serve: the configuration is in etcd; put a new one there to reload")
				continue
			case syscall.SIGUSR1:
				if err := d.ReopenLogs(); err != nil {
					log.Error("lbkit serve: reopening the access log", "err", err)
				}
				continue
			}
		}
		stop()
		cfg := d.Config()
		if cfg == nil {
			cfg = &config.Config{}
		}
		return shutdown(d, cfg, log)
	}
}
