// Package redirect is lbkit's HTTP redirect front-end: an [http.Handler]
// that answers every request with a redirect (302 by default, 307 for
// methods with a body) to one of a set of backends chosen by a
// [balancer.Pool], so the client talks to the backend directly and the
// dispatcher never carries the payload.
//
// The classic weakness of redirect load balancing is a client pinned to a
// dead backend: by its cache, by a permanent redirect, or by stickiness
// that outlives the backend. This package avoids each of them:
//
//   - responses carry Cache-Control: no-store unless the operator asks for
//     a max-age, so a client whose backend failed asks again;
//   - picks come from the pool's current snapshot, which health checking
//     (see the health package and health.Checker.Drive) keeps up to date;
//   - affinity (client address hash or a signed cookie) holds only while
//     the backend is ready, and moves on otherwise;
//   - with no ready backend the handler answers 503 with Retry-After, or
//     redirects to a fallback URL, instead of naming a dead backend.
//
// The Location header is built only from the chosen backend's configured
// base URL, the request's escaped path and its raw query, never from the
// Host header or any other header, so the handler cannot be turned into
// an open redirect: every Location starts with a configured base URL and
// contains no control characters.
//
// Two ways to serve it: mount the [Handler] in any net/http server (TLS,
// HTTP/2, middleware), or run a [Server], a purpose-built HTTP/1.1
// responder that renders the same decisions without net/http and without
// allocating, for the highest request rate on plain HTTP/1.1.
//
// A Handler redirects; it never contacts backends, so it has no outcomes
// to report to a passive health observer. Health comes from active checks
// on the pool it picks from.
package redirect
