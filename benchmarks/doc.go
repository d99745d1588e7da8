// Package benchmarks holds lbkit's side-by-side benchmarks: each compares
// an lbkit component with a peer or a baseline in the same run, because
// on a small shared machine only ratios from one run are meaningful.
//
// The package has no API; everything is in its _test.go files. Run a
// group with, for example,
//
//	go test ./benchmarks -run '^$' -bench 'BenchmarkPick' -benchtime 200ms -count 6 > pick.txt
//	benchstat pick.txt
//
// Pick benchmarks (pick_test.go) measure one Pick of every balancer
// policy against two baselines, a mutex-guarded round robin and a
// gRPC-style round robin on one shared atomic counter:
// BenchmarkPick/<policy>/n=<backends> on one goroutine (b.Loop) and
// BenchmarkPickParallel/<policy>/n=<backends> from GOMAXPROCS goroutines
// (b.RunParallel), each also reporting cpu-ns/op, the process's CPU time
// per pick, which stays meaningful when other work shares the machine.
// Targets: 0 allocs, ≤ 25 ns single-threaded, parallel throughput ≥ 5×
// the mutex baseline. BenchmarkBuild/<policy>/n=<backends> measures the
// rebuild a pool does on every ready-set or slow-start change, and
// BenchmarkPickDone/<policy> a request's whole accounting: Pick,
// Endpoint.Start and Endpoint.Done with a latency.
//
// The policy simulation (sim_test.go) is a deterministic discrete-event
// model of heterogeneous backends (one 10× slower, one failing fast)
// driven through a real balancer.Pool by every load-independent and
// load-aware policy: BenchmarkSimulation/<policy> reports latency
// percentiles, the failed share and how unevenly work was spread, and
// TestSimulation holds the qualitative result (least connections and
// peak EWMA send the slow backend less work and cut the tail latency
// round robin and random suffer, at the price of more work for the
// backend that fails fast). BenchmarkSimulationDegrade and
// TestSimulationDegrade add a backend that turns slow halfway, which
// static capacity weights cannot follow.
//
// Scale-out (scaleout_test.go): three nodes, each with its own pool of the
// same ten members in a different order, must pick alike for every key
// with no shared state. TestScaleOutAgreement requires it of every hash
// policy (maglev, ringhash, rendezvous, sourcehash consistent and
// map-based) over 100,000 flow keys and logs the keys a joining backend
// moves, as a multiple of the ideal 1/11: the keys on which nodes disagree
// while the change reaches them one by one (measured: maglev 1.03,
// ringhash 0.98, rendezvous 1.00, sourcehash 1.03, sourcehash map-based
// 2.99). BenchmarkScaleOut/<policy> reports the same as metrics. The
// kernel data planes (iplb, l2lb) are checked behind a real ECMP router in
// internal/ecmplab.
//
// Front-end benchmarks (frontend_test.go) run lbkit's raw HTTP front-ends
// next to nginx and HAProxy, every server and each of three backends in
// its own process (benchmarks/cmd/benchlbkit, benchmarks/cmd/benchbackend):
// BenchmarkFrontEndProxy (proxy.Server) and BenchmarkFrontEndRedirect
// (redirect.Server against nginx's `return 302`) load them with wrk at
// 100, 1,000 and 5,000 connections, kept alive and "Connection: close",
// in interleaved rounds, and print medians with ranges of req/s, CPU per
// request, p99 and resident memory per idle connection:
//
//	go test ./benchmarks -run '^$' -bench BenchmarkFrontEnd -benchtime=1x -timeout 40m
package benchmarks
