// Package proxyproto reads and writes PROXY protocol headers, versions 1
// (text) and 2 (binary), as specified in HAProxy's "The PROXY protocol".
//
// A proxy that relays a TCP connection sends a PROXY header first on its
// connection to the backend, so the backend learns who the client is (its
// address and the address it connected to) although the TCP connection
// comes from the proxy. lbkit's tcpproxy writes one when configured to;
// HAProxy, nginx, Envoy and cloud load balancers do too.
//
// [Header.Append] encodes a header without allocating. [Parse] decodes one
// from a byte slice and says whether more bytes are needed
// ([ErrIncomplete]) or the input cannot be a header ([ErrInvalid]); it is
// incremental in the sense that every prefix of a valid header is
// reported incomplete, never invalid. [Read] takes a header off a
// bufio.Reader and leaves the payload after it in the reader.
//
// The parser is strict where the specification is: a version 1 line is at
// most [V1MaxLen] bytes, ends in CRLF and contains no other CR; ports have
// no sign or leading zeros; the address family must match TCP4 or TCP6;
// addresses carry no zone. A version 2 header must have the version nibble
// 2, a LOCAL or PROXY command, a known family and transport, an address
// block long enough for its family and TLVs that fit the header. LOCAL
// headers, unspecified families and Unix sockets parse as a [Header] with
// no addresses, meaning "use the connection's real endpoints".
//
// A receiver should accept a PROXY header only from proxies it trusts
// (anyone else could claim any client address), and bound the wait for it
// with a read deadline.
package proxyproto
