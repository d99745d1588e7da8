// Package netlab builds network-namespace labs for privileged tests and
// examples: named hosts, each in its own network namespace, joined by veth
// pairs to a Linux bridge that lives in a namespace of its own.
//
// A lab never touches the root namespace: it adds no link, address or
// route there, and its addresses come from the benchmarking ranges
// 198.18.0.0/15 (RFC 2544) and, for IPv6, the unique-local prefix
// fd00:198:18::/64 by default. Everything is built from Go with
// github.com/vishvananda/netlink and netns; no ip binary is needed.
//
//	lab, err := netlab.New(t, netlab.Config{})
//	client, _ := lab.AddHost("client")       // 198.18.0.1/24, fd00:198:18::1/64
//	server, _ := lab.AddHost("server")       // 198.18.0.2/24, fd00:198:18::2/64
//	ln, _ := server.Listen("tcp", ":8080")    // a socket inside server's namespace
//	c, _ := client.DialContext(ctx, "tcp", "198.18.0.2:8080")
//
// Namespaces are named "<prefix>-<pid>-<lab>-<host>" (prefix "lbk" by
// default), so labs of concurrent test processes never collide, and a lab
// deletes the namespaces left behind by a process that died. Everything a
// lab creates is torn down in t.Cleanup, also after a half-built lab.
//
// Labs need root (CAP_SYS_ADMIN and CAP_NET_ADMIN); [RequireRoot] skips a
// test with a clear message when they are not available.
package netlab
