// Package l2lb is a layer-2 load balancer with direct server return, like
// LVS-DR or Katran without encapsulation. An XDP program matches frames
// for virtual services (VIP, port, protocol; IPv4 and IPv6; TCP and UDP),
// picks a backend, rewrites the destination MAC to the backend's and the
// source MAC to the balancer's, and sends the frame back out of the
// interface it came in on (XDP_TX). The rest of the frame is untouched:
// the backend, which holds the VIP on its loopback, answers the client
// directly, so replies never cross the balancer.
//
// # Data plane
//
// The program (bpf/l2lb.c, built with bpf2go; the generated files are
// committed, so building needs no clang) keeps its state in maps the
// control plane writes:
//
//   - vips: (VIP, port, protocol) → service id, an open-addressed hash
//     table in an array (a multiplicative hash of the destination picks
//     the home slot; linear probing, at most 8 slots; at least 8 slots
//     per service, so a run is usually one slot long). A lookup costs a
//     multiply and inlined array reads, not a hash map's jhash and call,
//     and a frame to any other destination usually stops at its first,
//     empty slot. Other frames pass to the balancer's own stack
//     (XDP_PASS), untouched. The map holds two such tables; a flag in
//     the config entry says which one the program reads. A change of the
//     services writes the other table whole and then flips the flag (a
//     one-byte change), so a frame meets the old set of services or the
//     new one, never a table half written.
//   - rings: one Maglev table of [RingSize] = 65537 slots (a prime, as
//     maglev.DefaultSize) per service, in one array at index
//     service·RingSize + slot; slot = [FlowHash] mod RingSize. The control
//     plane fills it from maglev.NewTable over the pool's ready set and
//     effective weights, writing only the slots Table.Diff reports.
//   - backends: id → MAC, up flag, service. Id 0 is reserved and never
//     up: an empty service's ring is all 0, and its frames are dropped
//     and counted as NoBackend.
//   - conns: the connection table, an LRU hash from flow to backend id
//     shared by all CPUs (BPF_MAP_TYPE_LRU_HASH, not LRU_PERCPU_HASH:
//     generic XDP and migrating senders put one flow's packets on
//     several CPUs, and per-CPU tables would disagree after a ring
//     change). A flow is keyed by client address, client port and
//     service id, which stands for the destination address, port and
//     protocol (a service keeps its id while it is served): as exact as
//     the 5-tuple, in 24 bytes instead of 40, which the kernel hashes
//     and compares on every lookup. When the table is full a new flow
//     evicts the least recently used one; see Config.ConnTableSize for
//     the sizing rule, [Balancer.ConnTable] for the fill and
//     Counters.ConnLost for segments of flows it lost.
//   - per-CPU counters per service, per backend and global ([Counters]).
//
// Picking follows Katran: a TCP SYN (without ACK) always picks from the
// ring, so a new connection follows the current ring; other packets keep
// the backend cached for their flow while that backend is up. A drained
// backend is out of the ring but still up, so its flows finish; a failed
// backend is marked down, and its flows pick again from the ring (and are
// reset by their new backend, which does not know them).
//
// The flow hash is h = Mix64(h ^ w) over the five 64-bit words of the flow
// key, from a fixed seed, so every balancer of a fleet hashes alike. A
// service whose [balancer.Key] is a client key hashes the client's
// address under the key's prefix instead ([KeyHash]; the program reads
// the service's settings only on a ring pick, so an established frame
// pays nothing for it), and
// [Model] — a pure-Go model of the program's parsing, decisions, connection
// table and counters — reproduces every decision. The tests run crafted
// and fuzzed frames through the kernel (BPF_PROG_TEST_RUN) and the model
// and require the same verdict, bytes, backend and counters.
//
// Malformed frames never cause an out-of-bounds read (the verifier
// ensures it) and are passed untouched to the kernel's stack, which
// validates them as it does any frame: frames cut short of the headers
// the program reads, IPv4 header lengths under 20 bytes or past the
// frame, IP versions that disagree with the EtherType. So are frames the
// program does not balance: VLAN-tagged frames, IPv4 fragments (later
// fragments carry no ports, so no fragment is balanced), IPv6 with
// extension headers, and protocols other than TCP and UDP. A caveat for
// VLANs: the program sees the tag only where it is in the frame. In
// generic mode a frame whose 802.1Q tag the kernel carries beside the
// data (an accelerated tag, as a bridge or a VLAN device on a veth
// produces) looks untagged, and one for a VIP is balanced.
//
// # Cost
//
// BenchmarkProgram runs the program through BPF_PROG_TEST_RUN. On a 2-vCPU
// VM (Linux 6.18, shared with other jobs, load average 4–8), 8 runs each:
// a frame of an established TCP flow costs 26–51 ns (median 29; IPv6
// 25–46), UDP 25–35 ns, a frame for no service 10–17 ns, a TCP SYN
// 111–140 ns; a program that only returns costs 4–10 ns. Interleaving
// variants of the program run for run, an established frame's best
// case of about 22 ns splits into 4 ns of harness, 1 of parsing, 3 of VIP
// lookup, 9 of connection-table lookup (the kernel hashing and comparing
// the key) and 5 of backend check, rewrite and counters. A SYN's extra
// cost is the connection table's insert (an LRU hash update, about 75 ns
// here, mostly its locks). Three changes took the established frame from
// 46–74 ns (median 67) to this: the VIP table in an array instead of a
// BPF hash map, the flow key written in whole words (narrow stores read
// back as words stall store-to-load forwarding), and the 24-byte
// connection key.
//
// # Control plane
//
// A Balancer is not a listener server: the kernel forwards the frames and
// Go keeps the maps. [New] checks the configuration, looks the interface
// up and loads the program, attaching nothing. [Balancer.Serve] fills the
// maps from each [Service]'s balancer.Pool, attaches the program to the
// interface ([AttachMode]: driver mode where it forwards, generic on a
// veth whose peer runs no XDP program, as labs have) and runs the control
// loop, which applies each new pool snapshot as soon as it is published:
// health changes take effect within one health-check interval. Serve
// returns when its context ends or [Balancer.Shutdown] or
// [Balancer.Close] is called, and detaches the program first. The
// balancer never closes a pool it was given.
//
// A backend's MAC comes from its member metadata ([MetaMAC], "mac") when
// set, else from the interface's neighbour table; a backend whose MAC is
// unknown gets no traffic while the balancer asks the kernel to resolve
// it (a netlink neighbour request with NTF_USE, which sends ARP or a
// neighbour solicitation) and re-reads the table every
// Config.ResolveInterval, which also picks up changed MACs.
//
// Services change while serving: [Balancer.AddService],
// [Balancer.UpdateService], [Balancer.RemoveService], or
// [Balancer.SetServices] for a whole new set, matched by VIP and
// protocol. New and changed services' backends and rings are written
// first, then the VIP table flips once, then removed services' backends
// are cleared. A service that stays, or is changed, keeps its id and its
// connection-table entries: its established flows keep their backends
// while those stay members and up. A removed service's frames pass to
// the balancer's stack; its id is reused only after every fresh id was
// given out, and only once the VIP table no longer names it (when a
// change needs those ids at once, the removed services go out in a first
// flip). [Balancer.Stats] returns the counters.
//
// There is no port translation: the frame reaches the backend unchanged
// but for its MAC addresses, so a backend listens on the VIP's port. That
// is the nature of direct server return (the backend answers the client
// from the VIP and port the client used), as in LVS-DR.
//
// # Backend setup
//
// Each backend must be on the balancer's L2 segment, listen on the VIP's
// port, and:
//
//   - carry the VIP on lo (ip addr add VIP/32 dev lo), so it accepts the
//     frames;
//   - for IPv4, not answer ARP for the VIP nor announce it:
//     net.ipv4.conf.all.arp_ignore=1 and net.ipv4.conf.all.arp_announce=2
//     (the interface's values must not be higher);
//   - not filter by strict reverse path: rp_filter 0 (or 2) on "all" and
//     the interface.
//
// The balancer itself answers ARP (or neighbour solicitations) for the
// VIP, for example by carrying it on its interface, or clients route the
// VIP through it. [CheckBackend] checks a backend's namespace and says
// exactly what is wrong.
package l2lb
