// Command benchbackend is the HTTP backend of lbkit's side-by-side
// front-end benchmarks (benchmarks/frontend_test.go): a net/http server
// answering every request with a fixed body of -body bytes, in its own
// process so that its CPU is not counted against the server under test.
// It runs until its standard input closes.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	size := flag.Int("body", 100, "response body size in bytes")
	flag.Parse()
	body := bytes.Repeat([]byte("x"), *size)
	cl := []string{strconv.Itoa(len(body))}
	ct := []string{"text/plain"}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchbackend:", err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = ct
		h["Content-Length"] = cl
		w.Write(body)
	})}
	go srv.Serve(ln)
	io.Copy(io.Discard, os.Stdin)
	srv.Close()
}
