package mirror

// Built for little-endian BPF only, like pkg/bpfcounters; the include path
// holds asm/types.h, which linux/bpf.h needs (Debian's multiarch directory).
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go@v0.22.0 -cc clang -no-strip=false -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel bpf bpf/mirror.c
