package l2lb

//go:generate go tool bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror" -type vip_key -type vip_entry -type service -type backend -type conn_key -type config -type counters -type global_counters l2lb bpf/l2lb.c -- -Ibpf
