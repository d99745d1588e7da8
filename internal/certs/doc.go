// Package certs keeps the TLS certificates of lbkit's listeners: key pairs
// loaded from PEM files, picked per connection by the name the client
// asks for (SNI), reloaded when their files change, with session tickets
// whose keys rotate on a schedule and survive reloads.
//
// One [Store] serves any number of listeners:
//
//	st, err := certs.New(certs.Config{Pairs: []certs.Pair{
//		{CertFile: "/etc/lbkit/www.pem", KeyFile: "/etc/lbkit/www.key"},
//		{CertFile: "/etc/lbkit/wild.pem", KeyFile: "/etc/lbkit/wild.key"},
//	}})
//	if err != nil { ... }
//	defer st.Close()
//	srv := &http.Server{Handler: h, TLSConfig: st.Config()}        // h2 and http/1.1
//	go srv.ServeTLS(ln, "", "")
//	raw.Serve(ctx, tls.NewListener(ln2, st.ConfigALPN("http/1.1"))) // an HTTP/1.1-only server
//
// The package is internal: the daemon wires it into `lbkit serve`, and a
// program using lbkit as a library builds its own tls.Config (the
// standard library's is the API there); the store's worth is in the
// daemon's reload and ticket handling, which a library user rarely needs
// in this shape.
package certs
