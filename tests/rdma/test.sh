#!/bin/sh
# Inside the VM: two soft-RoCE devices, rxe0 on v0 and rxe1 on v1 of a veth pair, then the
# llmd RDMA tests and the kvx benchmark. Exits non-zero if anything failed.
IP=/usr/sbin/ip   # busybox runs its own `ip` applet first; iproute2's is needed for veth
set -e
$IP link add v0 type veth peer name v1
$IP addr add 10.0.0.1/24 dev v0; $IP addr add 10.0.0.2/24 dev v1
$IP link set v0 up; $IP link set v1 up
# Both addresses are local: route locally generated traffic out through the veth instead
# of lo, or rxe1 never sees rxe0's packets.
for f in all v0 v1; do echo 1 > /proc/sys/net/ipv4/conf/$f/accept_local; echo 0 > /proc/sys/net/ipv4/conf/$f/rp_filter; done
$IP rule add pref 10 to 10.0.0.2 iif lo lookup 100
$IP rule add pref 11 to 10.0.0.1 iif lo lookup 101
$IP route add 10.0.0.2 dev v0 src 10.0.0.1 table 100
$IP route add 10.0.0.1 dev v1 src 10.0.0.2 table 101
$IP neigh add 10.0.0.2 lladdr "$(cat /sys/class/net/v1/address)" dev v0
$IP neigh add 10.0.0.1 lladdr "$(cat /sys/class/net/v0/address)" dev v1
# Only after both ends are up, or the ports stay DOWN.
rdma link add rxe0 type rxe netdev v0
rdma link add rxe1 type rxe netdev v1
rdma link show
set +e
export LLMD_RDMA_TEST_DEVICES=rxe0,rxe1 RUST_BACKTRACE=1
rc=0
run() {
    name=$1; shift
    echo "=== RDMA-TEST $name: $*"
    t0=$(cut -d' ' -f1 /proc/uptime)
    "$@"; r=$?
    echo "=== RDMA-TEST $name rc=$r ($(cut -d' ' -f1 /proc/uptime) - $t0 s)"
    [ $r -eq 0 ] || rc=1
}
# The fault switch and transfer counters are per process: one test at a time.
run kvx /opt/kvx-rdma --test-threads=1 --nocapture
run worker /opt/worker-rdma --test-threads=1 --nocapture
run bench /opt/llmd bench kvx --transport rdma --rdma-device rxe0 --rdma-peer-device rxe1 ${BENCH_ARGS:---blocks 1,8,64 --iters 3}
dmesg | grep -iE 'rxe|rdma' | tail -5
exit $rc
