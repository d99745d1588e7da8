// Package h1 is the HTTP/1.1 codec shared by lbkit's raw servers
// (redirect.Server and proxy.Server): one request-head parser with the
// smuggling rules, the status lines and Date field they write, lingering
// close, the byte helpers they share, and the signing of the cookies
// that name a backend.
//
// Nothing here allocates per request. A [Head] parses a whole request
// head that the caller already holds (see [ReadHead]); its strings point
// into that buffer and live until the caller reuses it.
//
// The parser is strict. Each of these is refused with the status named,
// and a server refuses by answering that status and closing the
// connection, so nothing ambiguous reaches a backend or a handler:
//
//   - 400: a line not ending in CRLF (bare LF), obsolete line folding,
//     white space before a field's colon, invalid bytes in the method,
//     target, names or values, a request-target that does not parse (a
//     bad percent-escape in the path; an absolute form whose authority is
//     empty, holds user info or invalid bytes; "*" with a method other
//     than OPTIONS), a missing (HTTP/1.1) or repeated Host, differing or
//     invalid Content-Length values, Content-Length together with
//     Transfer-Encoding, Transfer-Encoding in HTTP/1.0;
//   - 501: a transfer coding other than a single "chunked";
//   - 417: an expectation other than one "100-continue";
//   - 414 when the request line alone does not fit the buffer, 431 when
//     the head does not ([ReadHead]);
//   - 505: a version other than HTTP/1.0 and HTTP/1.1.
package h1
