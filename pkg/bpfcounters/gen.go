package bpfcounters

// The program is built for little-endian BPF only (every node this agent
// runs on). The include path holds asm/types.h, which linux/bpf.h needs;
// it is Debian's multiarch directory of the generating machine.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go@v0.22.0 -cc clang -no-strip=false -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type flow_key -type flow_val -type bulk_slot -type bulk_args bpf bpf/counters.c
