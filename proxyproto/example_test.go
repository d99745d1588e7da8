package proxyproto_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"

	"github.com/lbkit/lbkit/proxyproto"
)

// A backend behind a proxy that sends PROXY headers learns the real
// client's address from the header, then reads the payload from the same
// buffered reader.
func Example() {
	proxySide, backendSide := net.Pipe()
	go func() {
		// What a proxy (lbkit's tcpproxy, HAProxy, a cloud load
		// balancer) writes first on its connection to the backend.
		h := proxyproto.Header{
			Version:     proxyproto.V2,
			Transport:   proxyproto.TCP,
			Source:      netip.MustParseAddrPort("198.18.0.7:51234"),
			Destination: netip.MustParseAddrPort("198.18.0.1:443"),
		}
		proxySide.Write(h.Append(nil))
		io.WriteString(proxySide, "hello\n")
		proxySide.Close()
	}()

	br := bufio.NewReader(backendSide)
	h, err := proxyproto.Read(br)
	if err != nil {
		fmt.Println("not a PROXY header:", err)
		return
	}
	line, _ := br.ReadString('\n')
	fmt.Printf("%v client %v wrote %q\n", h.Version, h.Source, line)
	// Output:
	// v2 client 198.18.0.7:51234 wrote "hello\n"
}

func ExampleHeader_Append() {
	h := proxyproto.Header{
		Version:     proxyproto.V1,
		Transport:   proxyproto.TCP,
		Source:      netip.MustParseAddrPort("198.18.0.7:51234"),
		Destination: netip.MustParseAddrPort("198.18.0.1:443"),
	}
	fmt.Printf("%q\n", h.Append(nil))
	h.Version = proxyproto.V2
	fmt.Printf("% x\n", h.Append(nil)[12:])
	// Output:
	// "PROXY TCP4 198.18.0.7 198.18.0.1 51234 443\r\n"
	// 21 11 00 0c c6 12 00 07 c6 12 00 01 c8 22 01 bb
}

func ExampleRead() {
	conn := strings.NewReader("PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\nGET / HTTP/1.1\r\n")
	br := bufio.NewReader(conn)
	h, err := proxyproto.Read(br)
	if err != nil {
		panic(err)
	}
	rest, _ := br.ReadString('\n')
	fmt.Println(h.Source, "→", h.Destination)
	fmt.Printf("%q\n", rest)
	// Output:
	// [2001:db8::7]:51234 → [2001:db8::1]:443
	// "GET / HTTP/1.1\r\n"
}

func ExampleParse() {
	b := []byte("PROXY TCP4 198.18.0.7 198.18.")
	_, _, err := proxyproto.Parse(b)
	fmt.Println(err) // read more and try again
	b = append(b, "0.1 51234 443\r\npayload"...)
	h, n, err := proxyproto.Parse(b)
	fmt.Println(h.Source, n, err, string(b[n:]))
	// Output:
	// proxyproto: incomplete header
	// 198.18.0.7:51234 44 <nil> payload
}
