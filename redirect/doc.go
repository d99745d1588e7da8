// Package redirect is lbkit's HTTP redirect front-end: an [http.Handler]
// that answers every request with a redirect (302 by default, 307 for
// methods with a body) to one of a set of backends chosen by a
// [balancer.Pool], so the client talks to the backend directly and the
// dispatcher never carries the payload.
//
// The pool is the only list of backends. A member's base URL is its
// metadata [MetaURL] ("url"; "http://<addr>" when absent) and its zone the
// member's Zone, so adding, removing or moving a mirror is Pool.Set, Add
// or Remove, seen by the next request, with keep-alive connections kept.
// Config.Key (a balancer.Key) derives the pick key: with a hash policy in
// the pool, key "client" keeps a client on one backend, "header:X-User" a
// user. Config.StickyCookie is the other kind of stickiness: a signed
// cookie naming the backend, honoured while it is ready.
//
// The classic weakness of redirect load balancing is a client pinned to a
// dead backend: by its cache, by a permanent redirect, or by stickiness
// that outlives the backend. This package avoids each of them:
//
//   - responses carry Cache-Control: no-store unless the operator asks for
//     a max-age, so a client whose backend failed asks again;
//   - picks come from the pool's current snapshot, which health checking
//     (see the health package and health.Checker.Follow) keeps up to date;
//   - affinity (a key's hash or the sticky cookie) holds only while the
//     backend is ready, and moves on otherwise;
//   - with no ready backend the handler answers 503 with Retry-After, or
//     redirects to a fallback URL, instead of naming a dead backend.
//
// The Location header is built only from the chosen member's base URL, the request's escaped path and its raw query, never from the
// Host header or any other header, so the handler cannot be turned into
// an open redirect: every Location starts with a member's base URL and
// contains no control characters. A member whose URL is invalid is logged
// once, with the pool's name, and never named.
//
// Two ways to serve it: mount the [Handler] in any net/http server (TLS,
// HTTP/2, middleware), or run a [Server], a purpose-built HTTP/1.1
// responder that renders the same decisions without net/http and without
// allocating, for the highest request rate on plain HTTP/1.1. Its request
// heads go through the parser it shares with proxy.Server. It has the
// lifecycle of every lbkit server: [NewServer], [Server.Serve] (nil once
// stopped), [Server.Shutdown] to drain, [Server.Close] to stop now; the
// end of Serve's context means Close. Neither closes the pool.
//
// A Handler redirects; it never contacts backends, so it has no outcomes
// to report to a passive health observer. Health comes from active checks
// on the pool it picks from (health.Checker.Follow).
package redirect
