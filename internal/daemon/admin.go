package daemon

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lbkit/lbkit/balancer"
)

// adminTarget is what the admin endpoint reads and changes.
type adminTarget interface {
	Status() Status
	SetOverride(pool string, member netip.AddrPort, o balancer.Override) error
	Override(pool string, member netip.AddrPort) (balancer.Override, error)
	Reload(trigger string) error
	Metrics() *Metrics
}

// ErrNoPool and ErrNoMember are returned for admin requests that name a
// pool or member the configuration does not have.
var (
	ErrNoPool   = errors.New("daemon: no such pool")
	ErrNoMember = errors.New("daemon: no such member")
)

// AdminHandler serves the admin API:
//
//	GET  /status                       JSON status (HTML when the client accepts text/html first, or ?format=html)
//	GET  /                             the status as an HTML page
//	GET  /metrics                      Prometheus metrics
//	POST /pools/{pool}/members/{addr}/drain     drain a member (kept until the configuration changes it)
//	POST /pools/{pool}/members/{addr}/undrain   clear the drain
//	POST /pools/{pool}/members/{addr}/weight?value=N   set its weight (0 clears)
//	POST /reload                       reload the configuration file
//
// With a token, every request must carry "Authorization: Bearer TOKEN".
func AdminHandler(d adminTarget, token string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st := d.Status()
		if r.URL.Query().Get("format") == "html" || prefersHTML(r) {
			writeHTML(w, &st)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(&st)
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		st := d.Status()
		writeHTML(w, &st)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.Metrics().Registry(), promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	override := func(w http.ResponseWriter, r *http.Request, change func(*balancer.Override) error) {
		pool := r.PathValue("pool")
		addr, err := netip.ParseAddrPort(r.PathValue("addr"))
		if err != nil {
			http.Error(w, "bad member address: "+err.Error(), http.StatusBadRequest)
			return
		}
		o, err := d.Override(pool, addr)
		if err == nil {
			if err = change(&o); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			err = d.SetOverride(pool, addr, o)
		}
		switch {
		case errors.Is(err, ErrNoPool), errors.Is(err, ErrNoMember):
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"pool": pool, "member": addr.String(), "override": o})
	}
	mux.HandleFunc("POST /pools/{pool}/members/{addr}/drain", func(w http.ResponseWriter, r *http.Request) {
		override(w, r, func(o *balancer.Override) error { o.Drain = true; return nil })
	})
	mux.HandleFunc("POST /pools/{pool}/members/{addr}/undrain", func(w http.ResponseWriter, r *http.Request) {
		override(w, r, func(o *balancer.Override) error { o.Drain = false; return nil })
	})
	mux.HandleFunc("POST /pools/{pool}/members/{addr}/weight", func(w http.ResponseWriter, r *http.Request) {
		override(w, r, func(o *balancer.Override) error {
			v, err := strconv.ParseUint(r.URL.Query().Get("value"), 10, 32)
			if err != nil {
				return fmt.Errorf("weight: want ?value=N with N a whole number (0 clears): %w", err)
			}
			o.Weight = uint32(v)
			return nil
		})
	})
	mux.HandleFunc("POST /reload", func(w http.ResponseWriter, r *http.Request) {
		if err := d.Reload("admin"); err != nil {
			http.Error(w, "reload rejected: "+err.Error(), http.StatusUnprocessableEntity)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"revision": d.Status().Revision})
	})
	if token == "" {
		return mux
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="lbkit"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func prefersHTML(r *http.Request) bool {
	a := r.Header.Get("Accept")
	h, j := strings.Index(a, "text/html"), strings.Index(a, "application/json")
	return h >= 0 && (j < 0 || h < j)
}

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"ms": func(f float64) string { return strconv.FormatFloat(f, 'f', 2, 64) },
}).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>lbkit status</title>
<style>body{font:14px system-ui,sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f4f4f4}
.up{color:#070}.down{color:#b00}.drain{color:#a60}.err{color:#b00}</style></head><body>
<h1>lbkit</h1>
<p>configuration revision {{.Revision}}{{if .ConfigFile}} from <code>{{.ConfigFile}}</code>{{end}};
{{if .LastReloadError}}<span class="err">last reload rejected: {{.LastReloadError}}</span>{{else}}last reload applied{{end}}</p>
<h2>Listeners</h2>
<table><tr><th>name</th><th>type</th><th>address</th><th>pools</th><th>since</th></tr>
{{range .Listeners}}<tr><td>{{.Name}}</td><td>{{.Type}}</td><td>{{.Addr}}</td><td>{{range .Pools}}{{.}} {{end}}</td><td>{{.Since.Format "2006-01-02 15:04:05"}}</td></tr>
{{end}}</table>
{{range .Pools}}<h2>Pool {{.Name}}</h2>
<p>policy {{.Policy}}{{if .Key}}, key {{.Key}}{{end}}; {{.Ready}} of {{len .Members}} ready{{if .Panic}}, <b>panic mode</b>{{end}}</p>
<table><tr><th>member</th><th>zone</th><th>state</th><th>why</th><th>weight</th><th>effective</th><th>in flight</th><th>requests</th><th>failures</th><th>latency (ms)</th><th>override</th></tr>
{{range .Members}}<tr><td>{{.Addr}}</td><td>{{.Zone}}</td>
<td class="{{if .Draining}}drain{{else if .Ready}}up{{else}}down{{end}}">{{if .Draining}}draining{{else if .Ready}}ready{{else}}{{.Health}}{{end}}</td>
<td>{{with .Check}}{{.State}}{{if .Reason}} ({{.Reason}}){{end}}{{if .LastError}}: {{.LastError}}{{end}}{{end}}</td>
<td>{{.Weight}}</td><td>{{.EffectiveWeight}}</td><td>{{.InFlight}}</td><td>{{.Requests}}</td><td>{{.Failures}}</td><td>{{ms .LatencyEWMAMillis}}</td>
<td>{{with .Override}}{{if .Drain}}drain {{end}}{{if .Weight}}weight {{.Weight}}{{end}}{{end}}</td></tr>
{{end}}</table>{{end}}
<h2>Reloads</h2>
<table><tr><th>time</th><th>trigger</th><th>revision</th><th>result</th></tr>
{{range .Reloads}}<tr><td>{{.Time.Format "2006-01-02 15:04:05"}}</td><td>{{.Trigger}}</td><td>{{.Revision}}</td><td>{{if .OK}}applied{{else}}<span class="err">rejected: {{.Error}}</span>{{end}}</td></tr>
{{end}}</table>
</body></html>
`))

func writeHTML(w http.ResponseWriter, st *Status) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = statusPage.Execute(w, st)
}
