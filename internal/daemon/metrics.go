package daemon

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/lbkit/lbkit/balancer"
)

// Metrics holds the daemon's Prometheus metrics. Pool and member state is
// read from the pools at scrape time (no bookkeeping on the request path
// beyond the counters the pools keep anyway); request outcomes that only
// a front-end sees (status classes, durations, retries) are recorded
// through Record.
type Metrics struct {
	reg *prometheus.Registry

	responses *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	bytes     *prometheus.CounterVec
	retries   *prometheus.CounterVec
	rejected  *prometheus.CounterVec

	reloads     *prometheus.CounterVec
	lastSuccess prometheus.Gauge
	revision    prometheus.Gauge
}

// poolSource lists the pools to report at scrape time.
type poolSource func() []poolEntry

type poolEntry struct {
	name string
	pool *balancer.Pool
	ev   *lastEvents
}

// newMetrics registers the daemon's metrics on a new registry, with the
// Go runtime and process collectors.
func newMetrics(pools poolSource) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.responses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lbkit_responses_total",
		Help: "Requests, connections and redirects answered, by listener, pool, member and outcome (HTTP status class 1xx-5xx, or ok/error for TCP connections).",
	}, []string{"listener", "pool", "member", "code"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "lbkit_request_duration_seconds",
		Help:    "Time from a request's (or connection's) arrival to its end, by listener and pool.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"listener", "pool"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lbkit_response_bytes_total",
		Help: "Bytes sent to clients, by listener and pool.",
	}, []string{"listener", "pool"})
	m.retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lbkit_retries_total",
		Help: "Attempts retried on another member, by listener and pool.",
	}, []string{"listener", "pool"})
	m.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lbkit_rejections_total",
		Help: "Requests refused without reaching a member, by listener, pool and reason (no_backend, queue_full, queue_timeout).",
	}, []string{"listener", "pool", "reason"})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "lbkit_config_reloads_total",
		Help: "Configuration loads, by result (success, failure).",
	}, []string{"result"})
	m.lastSuccess = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "lbkit_config_last_reload_success_timestamp_seconds",
		Help: "Unix time of the last configuration applied.",
	})
	m.revision = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "lbkit_config_revision",
		Help: "Revision of the configuration being served (1 is the first applied).",
	})
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	m.reg.MustRegister(m.responses, m.duration, m.bytes, m.retries, m.rejected, m.reloads, m.lastSuccess, m.revision,
		&poolCollector{pools: pools},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry the admin endpoint serves, where listeners
// register their own collectors (DNS counters, kernel data planes).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Outcome is one request, connection or redirect as a front-end saw it.
type Outcome struct {
	Listener, Pool string
	// Member is the member that served it, empty if none did.
	Member string
	// Code is the HTTP status (0 for TCP); Err is set when it failed.
	Code    int
	Err     error
	Elapsed time.Duration
	Bytes   int64
	Retries int
	// Rejected names why no member was tried ("no_backend",
	// "queue_full", "queue_timeout"), or is empty.
	Rejected string
}

// Record counts one outcome.
func (m *Metrics) Record(o Outcome) {
	if o.Rejected != "" {
		m.rejected.WithLabelValues(o.Listener, o.Pool, o.Rejected).Inc()
	}
	m.responses.WithLabelValues(o.Listener, o.Pool, o.Member, codeClass(o.Code, o.Err)).Inc()
	m.duration.WithLabelValues(o.Listener, o.Pool).Observe(o.Elapsed.Seconds())
	if o.Bytes > 0 {
		m.bytes.WithLabelValues(o.Listener, o.Pool).Add(float64(o.Bytes))
	}
	if o.Retries > 0 {
		m.retries.WithLabelValues(o.Listener, o.Pool).Add(float64(o.Retries))
	}
}

func codeClass(code int, err error) string {
	switch {
	case code >= 100 && code < 600:
		return strconv.Itoa(code/100) + "xx"
	case err != nil:
		return "error"
	}
	return "ok"
}

// reloaded records a configuration load.
func (m *Metrics) reloaded(ok bool, rev uint64, at time.Time) {
	if !ok {
		m.reloads.WithLabelValues("failure").Inc()
		return
	}
	m.reloads.WithLabelValues("success").Inc()
	m.lastSuccess.Set(float64(at.UnixNano()) / 1e9)
	m.revision.Set(float64(rev))
}

// poolCollector reports pool and member state read at scrape time.
type poolCollector struct{ pools poolSource }

var (
	descMembers  = prometheus.NewDesc("lbkit_pool_members", "Members of the pool.", []string{"pool"}, nil)
	descReady    = prometheus.NewDesc("lbkit_pool_ready_members", "Members in the pool's ready set.", []string{"pool"}, nil)
	descPanic    = prometheus.NewDesc("lbkit_pool_panic", "1 while the pool is in panic mode (too few healthy members: it picks from all).", []string{"pool"}, nil)
	descUp       = prometheus.NewDesc("lbkit_member_up", "1 when the member is in its pool's ready set.", []string{"pool", "member"}, nil)
	descHealth   = prometheus.NewDesc("lbkit_member_health", "The member's health: 0 unknown, 1 healthy, 2 unhealthy.", []string{"pool", "member"}, nil)
	descDraining = prometheus.NewDesc("lbkit_member_draining", "1 while the member is draining.", []string{"pool", "member"}, nil)
	descWeight   = prometheus.NewDesc("lbkit_member_weight", "The member's weight (configured, agent or override).", []string{"pool", "member"}, nil)
	descInFlight = prometheus.NewDesc("lbkit_member_in_flight", "Work in flight on the member.", []string{"pool", "member"}, nil)
	descRequests = prometheus.NewDesc("lbkit_member_requests_total", "Units of work (requests, connections, flows picked in user space) sent to the member.", []string{"pool", "member"}, nil)
	descFailures = prometheus.NewDesc("lbkit_member_failures_total", "Units of work sent to the member that failed.", []string{"pool", "member"}, nil)
	descEWMA     = prometheus.NewDesc("lbkit_member_latency_ewma_seconds", "The member's peak-EWMA latency.", []string{"pool", "member"}, nil)
	descEjects   = prometheus.NewDesc("lbkit_member_ejections_total", "Passive outlier ejections of the member since the daemon started.", []string{"pool", "member"}, nil)
)

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMembers, descReady, descPanic, descUp, descHealth, descDraining, descWeight, descInFlight, descRequests, descFailures, descEWMA, descEjects} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, pe := range c.pools() {
		s := pe.pool.Snapshot()
		ready := make(map[*balancer.Endpoint]bool, len(s.Ready))
		for _, w := range s.Ready {
			ready[w.Endpoint] = true
		}
		gauge := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
		}
		counter := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
		}
		gauge(descMembers, float64(len(s.Members)), pe.name)
		gauge(descReady, float64(len(s.Ready)), pe.name)
		gauge(descPanic, b2f(s.Panic), pe.name)
		for _, ep := range s.Members {
			a := ep.Addr().String()
			gauge(descUp, b2f(ready[ep]), pe.name, a)
			h := map[balancer.Health]float64{balancer.HealthUnknown: 0, balancer.Healthy: 1, balancer.Unhealthy: 2}[ep.Health()]
			gauge(descHealth, h, pe.name, a)
			gauge(descDraining, b2f(ep.Draining()), pe.name, a)
			gauge(descWeight, float64(ep.Weight()), pe.name, a)
			gauge(descInFlight, float64(ep.InFlight()), pe.name, a)
			counter(descRequests, float64(ep.Requests()), pe.name, a)
			counter(descFailures, float64(ep.Failures()), pe.name, a)
			ns, _ := ep.LatencyEWMA()
			gauge(descEWMA, ns/1e9, pe.name, a)
			var n uint64
			if pe.ev != nil {
				_, n, _ = pe.ev.get(ep.Addr())
			}
			counter(descEjects, float64(n), pe.name, a)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
