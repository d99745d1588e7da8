//go:build linux

package netlab_test

import (
	"context"
	"fmt"
	"io"
	"log"

	"github.com/lbkit/lbkit/internal/netlab"
)

// A client and a server in their own namespaces, talking over the lab
// bridge. Open and Close suit programs; tests use netlab.New, which
// closes the lab in t.Cleanup.
func ExampleOpen() {
	lab, err := netlab.Open(netlab.Config{})
	if err != nil {
		log.Fatal(err) // not root, or namespaces not permitted
	}
	defer lab.Close()
	client, _ := lab.AddHost("client") // 198.18.0.1/24, fd00:198:18::1/64
	server, _ := lab.AddHost("server") // 198.18.0.2/24, fd00:198:18::2/64

	ln, err := server.Listen("tcp", "198.18.0.2:7")
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.WriteString(c, "hello from "+server.Name())
			c.Close()
		}
	}()
	c, err := client.DialContext(context.Background(), "tcp", "198.18.0.2:7")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	b, _ := io.ReadAll(c)
	fmt.Println(string(b))
}
