#!/bin/sh
# tests/rdma/build-initramfs.sh OUT.cpio.gz BIN... — a minimal initramfs for the RDMA VM:
# busybox, the soft-RoCE (rdma_rxe) and veth modules of the installed Debian kernel,
# iproute2 and rdma-core's userspace (with the rxe provider), and the given binaries under
# /opt with their shared libraries. The VM runs tests/rdma/init, which runs test.sh.
set -eu
OUT=$1; shift
HERE=$(cd "$(dirname "$0")" && pwd)
K=${K:-$(ls /lib/modules | sort -V | tail -1)}
R=$(mktemp -d)
trap 'rm -rf "$R"' EXIT
mkdir -p "$R"/bin "$R"/sbin "$R"/etc/libibverbs.d "$R"/proc "$R"/sys "$R"/dev "$R"/tmp "$R"/run "$R"/mods "$R"/opt
cp /bin/busybox "$R"/bin/busybox
for a in $("$R"/bin/busybox --list); do [ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"; done
# Kernel modules in dependency order (there is no modprobe in the guest). crc32_generic
# first: rxe's ICRC needs the "crc32" hash, and crc32-pclmul cannot load under TCG.
MODS=""
for m in crc32_generic crc32-pclmul veth rdma_rxe; do
    for f in $(modprobe -S "$K" --show-depends "$m" | awk '$1=="insmod"{print $2}'); do
        case " $MODS " in *" $f "*) ;; *) MODS="$MODS $f" ;; esac
    done
done
: > "$R"/mods/order
for f in $MODS; do cp "$f" "$R"/mods/; basename "$f" >> "$R"/mods/order; done
copy_with_libs() {
    for f in "$@"; do
        mkdir -p "$R$(dirname "$f")"; cp -L "$f" "$R$f"
        for l in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*'); do
            [ -e "$R$l" ] || { mkdir -p "$R$(dirname "$l")"; cp -L "$l" "$R$l"; }
        done
    done
}
copy_with_libs /usr/sbin/ip /usr/bin/rdma /usr/bin/ibv_devices /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav34.so
cp /etc/libibverbs.d/rxe.driver "$R"/etc/libibverbs.d/
for x in "$@"; do
    for l in $(ldd "$x" 2>/dev/null | grep -o '/[^ ]*'); do
        [ -e "$R$l" ] || { mkdir -p "$R$(dirname "$l")"; cp -L "$l" "$R$l"; }
    done
    cp "$x" "$R"/opt/
done
cp "$HERE"/init "$R"/init; chmod +x "$R"/init
cp "$HERE"/test.sh "$R"/test.sh; chmod +x "$R"/test.sh
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT"
