package dnsnames

// Built for little-endian BPF only, as pkg/bpfcounters (see its gen.go for
// the include path).
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go@v0.22.0 -cc clang -no-strip=false -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type event bpf bpf/dnsnames.c
