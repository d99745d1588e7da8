package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lbkit/lbkit/internal/daemon"
)

// clusterReport is what lbkit status reads from etcd.
type clusterReport struct {
	// ConfigRevision is the revision of the configuration in etcd (0 if
	// none).
	ConfigRevision int64 `json:"config_revision"`
	// Nodes are the live nodes' views, by name.
	Nodes []daemon.NodeView `json:"nodes"`
}

// statusMain runs `lbkit status`: the nodes of a cluster, the
// configuration revision each runs, and each node's view of each member.
func statusMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	etcd := addEtcdFlags(fs, false)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *etcd.endpoints == "" {
		fmt.Fprintln(stderr, "lbkit status: -etcd ENDPOINTS is required")
		return 2
	}
	c, err := etcd.client()
	if err != nil {
		fmt.Fprintln(stderr, "lbkit status:", err)
		return 1
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rep, err := readCluster(ctx, c, *etcd.prefix)
	if err != nil {
		fmt.Fprintln(stderr, "lbkit status:", err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return 1
		}
		return 0
	}
	printCluster(stdout, *etcd.prefix, rep)
	return 0
}

// readCluster reads the configuration's revision and every live node's
// view in one consistent read (one etcd transaction).
func readCluster(ctx context.Context, c *clientv3.Client, prefix string) (clusterReport, error) {
	var rep clusterReport
	tx, err := c.Txn(ctx).Then(
		clientv3.OpGet(daemon.ConfigKey(prefix)),
		clientv3.OpGet(daemon.NodesPrefix(prefix), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return rep, fmt.Errorf("etcd: %w", err)
	}
	if kvs := tx.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		rep.ConfigRevision = kvs[0].ModRevision
	}
	for _, kv := range tx.Responses[1].GetResponseRange().Kvs {
		if !strings.HasSuffix(string(kv.Key), "/health") {
			continue
		}
		var v daemon.NodeView
		if err := json.Unmarshal(kv.Value, &v); err != nil {
			return rep, fmt.Errorf("%s: %w", kv.Key, err)
		}
		rep.Nodes = append(rep.Nodes, v)
	}
	slices.SortFunc(rep.Nodes, func(a, b daemon.NodeView) int { return strings.Compare(a.Node, b.Node) })
	return rep, nil
}

// printCluster prints a report as two tables: nodes, then members with
// one column per node.
func printCluster(w io.Writer, prefix string, rep clusterReport) {
	fmt.Fprintf(w, "configuration %s: revision %d\n\n", daemon.ConfigKey(prefix), rep.ConfigRevision)
	if len(rep.Nodes) == 0 {
		fmt.Fprintln(w, "no live nodes")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tREVISION\tREJECTED")
	for _, n := range rep.Nodes {
		rejected := "-"
		if n.RejectedRevision != 0 {
			rejected = fmt.Sprintf("%d: %s", n.RejectedRevision, firstLine(n.RejectedError))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\n", n.Node, n.ConfigRevision, rejected)
	}
	tw.Flush()
	fmt.Fprintln(w)

	type row struct{ pool, member string }
	var rows []row
	seen := map[row]bool{}
	for _, n := range rep.Nodes {
		for pool, members := range n.Pools {
			for m := range members {
				if r := (row{pool, m}); !seen[r] {
					seen[r] = true
					rows = append(rows, r)
				}
			}
		}
	}
	slices.SortFunc(rows, func(a, b row) int {
		return strings.Compare(a.pool+" "+a.member, b.pool+" "+b.member)
	})
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "POOL\tMEMBER")
	for _, n := range rep.Nodes {
		fmt.Fprintf(tw, "\t%s", n.Node)
	}
	fmt.Fprintln(tw)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s", r.pool, r.member)
		for _, n := range rep.Nodes {
			st, ok := n.Pools[r.pool][r.member]
			cell := "-"
			if ok {
				cell = st.String()
			}
			fmt.Fprintf(tw, "\t%s", cell)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
