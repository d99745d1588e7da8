package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// newH2CTransport returns the transport of the h2c upstream mode: HTTP/2
// with prior knowledge over plain TCP, one multiplexed connection per
// backend, dialled to the picked backend's address.
func (h *HTTP) newH2CTransport() *http.Transport {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Transport{
		Protocols: &p,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, h.dialTimeout)
			defer cancel()
			return h.dialer.DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost:   h.maxIdle,
		IdleConnTimeout:       h.idleTimeout,
		ResponseHeaderTimeout: h.respHeaderTimeout,
		DisableCompression:    true,
	}
}

// forwardedValues returns the X-Forwarded-For, -Proto, -Host and
// Forwarded values writeForwarded would write.
func (h *HTTP) forwardedValues(rq *request, host string) (xff, proto, xhost, fwd string) {
	r := rq.r
	proto = "http"
	if r.TLS != nil {
		proto = "https"
	}
	peer := "unknown"
	if rq.peer.IsValid() {
		peer = rq.peer.String()
	}
	xff = peer
	if v := r.Header["X-Forwarded-For"]; rq.trusted && len(v) > 0 {
		xff = strings.Join(v, ", ") + ", " + peer
	}
	xhost = host
	xproto := proto
	if rq.trusted {
		if v := r.Header["X-Forwarded-Proto"]; len(v) == 1 && v[0] != "" {
			xproto = v[0]
		}
		if v := r.Header["X-Forwarded-Host"]; len(v) == 1 && v[0] != "" {
			xhost = v[0]
		}
	}
	forPeer := peer
	if rq.peer.Is6() {
		forPeer = `"[` + peer + `]"`
	}
	fwd = "for=" + forPeer + `;host="` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(host) + `";proto=` + proto
	if v := r.Header["Forwarded"]; rq.trusted && len(v) > 0 {
		fwd = strings.Join(v, ", ") + ", " + fwd
	}
	return xff, xproto, xhost, fwd
}

// tryH2C is try for h2c backends: the request goes through net/http's
// HTTP/2 transport; retries, passive health, headers and streaming follow
// the same rules as the HTTP/1.1 path. Upgrades are not supported over
// HTTP/2 and answer 502.
func (h *HTTP) tryH2C(w http.ResponseWriter, rq *request, u *upstream, mayRetry bool) (int, error) {
	r := rq.r
	ctx := r.Context()
	ep := u.ep
	if rq.upgrade != "" {
		return resFail, errors.Join(ErrUpstreamProtocol, errors.New("proxy: upgrades are not forwarded to h2c backends"))
	}
	uri := r.RequestURI
	if uri == "" || uri[0] != '/' {
		uri = r.URL.RequestURI()
	}
	host := r.Host
	if host == "" {
		host = r.URL.Host
	}
	var body io.Reader
	switch {
	case !rq.hasBody:
	case rq.buffered != nil:
		body = bytes.NewReader(rq.buffered)
	case rq.consumed:
		return resFail, errBodyConsumed
	default:
		body = r.Body
		rq.consumed = true
	}
	if !rq.deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, rq.deadline)
		defer cancel()
	}
	out, err := http.NewRequestWithContext(ctx, r.Method, "http://"+u.addr.String()+uri, body)
	if err != nil {
		return resFail, errors.Join(errBadRequest, err)
	}
	out.Host = host
	if rq.hasBody {
		out.ContentLength = r.ContentLength
		if rq.buffered != nil {
			out.ContentLength = int64(len(rq.buffered))
		}
	}
	conn := r.Header["Connection"]
	for k, vv := range r.Header {
		if skipRequestHeader(k) || (len(conn) > 0 && headerHasToken(conn, k)) {
			continue
		}
		out.Header[k] = vv
	}
	xff, proto, xhost, fwd := h.forwardedValues(rq, rq.clientHost)
	out.Header["X-Forwarded-For"] = []string{xff}
	out.Header["X-Forwarded-Proto"] = []string{proto}
	out.Header["X-Forwarded-Host"] = []string{xhost}
	out.Header["Forwarded"] = []string{fwd}
	if h.via != "" {
		v := "1.1 "
		if r.ProtoMajor >= 2 {
			v = "2 "
		}
		out.Header["Via"] = append(out.Header["Via"][:len(out.Header["Via"]):len(out.Header["Via"])], v+h.via)
	}
	if len(r.Trailer) > 0 {
		out.Trailer = r.Trailer
	}

	ep.Start()
	t0 := time.Now()
	resp, err := h.h2c.RoundTrip(out)
	if err != nil {
		if r.Context().Err() != nil {
			ep.Done(nil, 0)
			return resDone, nil
		}
		ep.Done(err, 0)
		var ne *net.OpError
		dialFailed := errors.As(err, &ne) && ne.Op == "dial"
		if mayRetry && (dialFailed && !rq.consumed || rq.replayable() && rq.idempotent) {
			return resRetry, err
		}
		return resFail, err
	}
	defer resp.Body.Close()
	latency := time.Since(t0)
	rq.status = resp.StatusCode
	failed := resp.StatusCode >= 500
	if failed && mayRetry && h.retryStatus[resp.StatusCode] && rq.idempotent && rq.replayable() {
		ep.Done(errStatus(resp.StatusCode), latency)
		return resRetry, errStatus(resp.StatusCode)
	}
	hdr := w.Header()
	respConn := resp.Header["Connection"]
	for k, vv := range resp.Header {
		if isHopByHop([]byte(k)) || (len(respConn) > 0 && headerHasToken(respConn, k)) {
			continue
		}
		hdr[k] = append(hdr[k], vv...)
	}
	if h.via != "" {
		hdr["Via"] = append(hdr["Via"], "2 "+h.via)
	}
	if h.cookieName != "" && rq.sticky != u {
		hdr["Set-Cookie"] = append(hdr["Set-Cookie"], h.cookies.SetCookie(h.cookieName, u.token))
	}
	status := resp.StatusCode
	if h.modify != nil {
		rh := ResponseHead{Request: r, Backend: ep, Status: status, Header: hdr}
		h.modify(&rh)
		status = rh.Status
	}
	w.WriteHeader(status)
	var upErr error
	rq.bytes, upErr, _ = h.copyStream(w, resp.Body, resp.ContentLength < 0 || isEventStream(hdr))
	for k, vv := range resp.Trailer {
		for _, v := range vv {
			hdr.Add(http.TrailerPrefix+k, v)
		}
	}
	if upErr != nil && r.Context().Err() != nil {
		upErr = nil
	}
	switch {
	case upErr != nil:
		ep.Done(upErr, latency)
		return resAbort, upErr
	case failed:
		ep.Done(errStatus(resp.StatusCode), latency)
	default:
		ep.Done(nil, latency)
	}
	return resDone, nil
}

// copyStream copies an HTTP/2 response body to w through a pooled
// buffer, flushing after each read when stream is set (or as
// FlushInterval says). It reports upstream and client errors apart.
func (h *HTTP) copyStream(w http.ResponseWriter, src io.Reader, stream bool) (written int64, upErr, clErr error) {
	bufp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bufp)
	buf := *bufp
	var fl http.Flusher
	if stream || h.flushInterval != 0 {
		fl = flusherOf(w)
	}
	last := time.Now()
	for {
		n, err := src.Read(buf)
		if n > 0 {
			written += int64(n)
			if _, werr := w.Write(buf[:n]); werr != nil {
				return written, nil, werr
			}
			if fl != nil && (stream || h.flushInterval < 0 || h.flushInterval > 0 && time.Since(last) >= h.flushInterval) {
				fl.Flush()
				last = time.Now()
			}
		}
		if err == io.EOF {
			return written, nil, nil
		}
		if err != nil {
			return written, err, nil
		}
	}
}
