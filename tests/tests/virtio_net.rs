//! virtio-net in the lab: ivmm gives a stock Debian kernel (its own
//! virtio_net module) a NIC on a TAP device in L1. L1 has no NIC of its own,
//! so the TAP, its address and the traffic never leave it. These tests always
//! use the nested lab, even where a direct one exists: they create network
//! interfaces, which must not happen on the host.

use std::time::Duration;

mod common;

use ivmm_tests::RunOptions;

use common::{ivmm_command, nested_lab as lab, value, WAIT_LOG_SH};

/// 4 MiB each way: enough for TSO and mergeable receive buffers to matter.
const BULK: u64 = 4 << 20;

/// Guest: static address on eth0, print MAC and negotiated features, ping
/// L1, send 4 MiB to L1 (port 5000), receive 4 MiB from L1 (port 5001).
const GUEST: &str = "mkdir -p /tmp; ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 || exit 9
echo MAC=$(cat /sys/class/net/eth0/address)
echo FEATURES=$(cat /sys/class/net/eth0/device/features)
i=0; until ping -c 1 -W 2 10.0.2.1 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 30 ] && break; done
ping -c 3 -W 5 10.0.2.1
dd if=/dev/urandom of=/tmp/f bs=1024 count=4096 2>/dev/null; echo TXSUM=$(md5sum </tmp/f)
nc 10.0.2.1 5000 </tmp/f; echo TX-DONE=$?
: >/tmp/in; (sleep 600 | nc -l -p 5001 >/tmp/in) & echo RX-LISTEN
i=0; while [ $(wc -c </tmp/in) -lt 4194304 ]; do i=$((i+1)); [ $i -gt 900 ] && break; sleep 0.2; done
echo RXSUM=$(md5sum </tmp/in) $(wc -c </tmp/in)
echo BULK-DONE; sleep 4";

#[test]
fn tap_nic_pings_l1_with_the_stable_mac_and_moves_4_mib_each_way_intact() {
    let lab = lab();
    let run = ivmm_command(
        &[
            "--mem",
            "512M",
            "--serial",
            "none",
            "--console-log",
            "/tmp/g.log",
            "--net",
            "tap=tap0",
        ],
        GUEST,
    );
    // L1: a listener for the guest's upload, ivmm in the background, tap0
    // configured as soon as ivmm has created it, the download once the guest
    // listens, and the TAP's counters before the guest ends (a non-persistent
    // TAP vanishes with ivmm).
    let script = format!(
        "{WAIT_LOG_SH}dd if=/dev/urandom of=/tmp/l1data bs=1024 count=4096 2>/dev/null; echo L1SUM=$(md5sum </tmp/l1data)\n\
         (sleep 900 | nc -l -p 5000 >/tmp/fromguest) &\n\
         {run} & P=$!\n\
         i=0; until [ -e /sys/class/net/tap0 ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done\n\
         ip addr add 10.0.2.1/24 dev tap0 && ip link set tap0 up && echo TAP-UP\n\
         wait_log /tmp/g.log RX-LISTEN $P && {{\n\
         i=0; until nc 10.0.2.15 5001 </tmp/l1data; do i=$((i+1)); [ $i -gt 20 ] && break; sleep 0.5; done; echo L1-SENT; }}\n\
         wait_log /tmp/g.log BULK-DONE $P\n\
         s=/sys/class/net/tap0/statistics\n\
         echo TAPSTATS=$(cat $s/rx_packets) $(cat $s/rx_bytes) $(cat $s/tx_packets) $(cat $s/tx_bytes) $(cat $s/rx_dropped) $(cat $s/tx_dropped)\n\
         wait $P; echo IVMM-RC=$?\n\
         echo FROMGUEST=$(md5sum </tmp/fromguest) $(wc -c </tmp/fromguest)\n\
         cat /tmp/g.log\n"
    );
    let out = lab
        .run_shell(&script, RunOptions::new().timeout(Duration::from_secs(600)))
        .expect("lab run");
    let c = &out.console;
    for l in c.lines().filter(|l| {
        [
            "TAPSTATS=",
            "MAC=",
            "FEATURES=",
            "packets",
            "SUM=",
            "FROMGUEST=",
            "-DONE=",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        eprintln!("{l}");
    }
    let ctx = || format!("console:\n{c}\nL1 log:\n{}", out.l1_log);
    assert!(c.contains("TAP-UP"), "tap0 never appeared in L1: {}", ctx());
    assert_eq!(value(&out, "IVMM-RC="), "0", "{}", ctx());

    // The MAC derived from the TAP name (config::default_mac("tap0")).
    assert_eq!(value(&out, "MAC="), "52:54:00:b5:4a:63", "{}", ctx());
    // Negotiated features, bit N is character N: CSUM 0, GUEST_CSUM 1, MAC 5,
    // GUEST_TSO4/6 7/8, HOST_TSO4/6 11/12, MRG_RXBUF 15, STATUS 16, VERSION_1 32.
    let features = value(&out, "FEATURES=").as_bytes();
    for bit in [0usize, 1, 5, 7, 8, 11, 12, 15, 16, 32] {
        assert_eq!(
            features.get(bit),
            Some(&b'1'),
            "feature bit {bit}: {}",
            ctx()
        );
    }

    // busybox ping: "3 packets transmitted, 3 packets received, 0% packet loss"
    assert!(
        c.contains("3 packets transmitted, 3 packets received"),
        "{}",
        ctx()
    );

    // Guest -> L1 (transmit, HOST_TSO) and L1 -> guest (receive, GUEST_TSO
    // with mergeable buffers), byte for byte.
    assert_eq!(value(&out, "TX-DONE="), "0", "{}", ctx());
    let tx_sum = value(&out, "TXSUM=")
        .split_whitespace()
        .next()
        .unwrap_or_default();
    let from_guest: Vec<&str> = value(&out, "FROMGUEST=").split_whitespace().collect();
    assert_eq!(from_guest, [tx_sum, "-", &BULK.to_string()], "{}", ctx());
    let l1_sum = value(&out, "L1SUM=")
        .split_whitespace()
        .next()
        .unwrap_or_default();
    let rx: Vec<&str> = value(&out, "RXSUM=").split_whitespace().collect();
    assert_eq!(rx, [l1_sum, "-", &BULK.to_string()], "{}", ctx());

    // Offloads at work: 4 MiB each way in frames larger than one MTU on
    // average means GSO frames crossed the TAP in both directions (ACKs and
    // pings included in the counts).
    let stats: Vec<u64> = value(&out, "TAPSTATS=")
        .split_whitespace()
        .map(|v| v.parse().expect("counter"))
        .collect();
    let [rx_packets, rx_bytes, tx_packets, tx_bytes, ..] = stats[..] else {
        panic!("TAPSTATS: {}", ctx());
    };
    assert!(rx_bytes >= BULK && tx_bytes >= BULK, "{stats:?}");
    assert!(
        rx_bytes / rx_packets.max(1) > 1514,
        "guest -> L1 frames average {} bytes: no TSO? {stats:?}",
        rx_bytes / rx_packets.max(1)
    );
    assert!(
        tx_bytes / tx_packets.max(1) > 1514,
        "L1 -> guest frames average {} bytes: no TSO? {stats:?}",
        tx_bytes / tx_packets.max(1)
    );
}

/// Guest: ping over a NIC with a given MAC, unload and reload the driver
/// (a device reset and a second activation), ping again.
const GUEST_RELOAD: &str = "up() { ip link set eth0 up && ip addr add 10.0.3.15/24 dev eth0; }
wait_ping() { i=0; until ping -c 1 -W 2 10.0.3.1 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 30 ] && break; done; }
up || exit 9
echo MAC=$(cat /sys/class/net/eth0/address)
wait_ping; echo FIRST: $(ping -c 2 -W 5 10.0.3.1 | grep transmitted)
rmmod virtio_net && echo REMOVED=$(ls /sys/class/net | grep -c eth)
modprobe virtio_net && echo RELOADED
up || exit 8
wait_ping; echo SECOND: $(ping -c 2 -W 5 10.0.3.1 | grep transmitted)";

#[test]
fn explicit_mac_is_used_and_the_nic_works_again_after_a_driver_reload() {
    let lab = lab();
    let run = ivmm_command(
        &[
            "--serial",
            "none",
            "--console-log",
            "/tmp/g.log",
            "--net",
            "tap=tap1,mac=52:54:00:12:34:56",
        ],
        GUEST_RELOAD,
    );
    let script = format!(
        "{run} & P=$!\n\
         i=0; until [ -e /sys/class/net/tap1 ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done\n\
         ip addr add 10.0.3.1/24 dev tap1 && ip link set tap1 up && echo TAP-UP\n\
         wait $P; echo IVMM-RC=$?\n\
         cat /tmp/g.log\n"
    );
    let out = lab
        .run_shell(&script, RunOptions::new().timeout(Duration::from_secs(400)))
        .expect("lab run");
    let c = &out.console;
    let ctx = || format!("console:\n{c}\nL1 log:\n{}", out.l1_log);
    assert!(c.contains("TAP-UP"), "{}", ctx());
    assert_eq!(value(&out, "IVMM-RC="), "0", "{}", ctx());
    assert_eq!(value(&out, "MAC="), "52:54:00:12:34:56", "{}", ctx());
    let received = "2 packets transmitted, 2 packets received";
    assert!(value(&out, "FIRST:").contains(received), "{}", ctx());
    assert_eq!(value(&out, "REMOVED="), "0", "eth0 must go away: {}", ctx());
    assert!(c.contains("RELOADED"), "{}", ctx());
    assert!(value(&out, "SECOND:").contains(received), "{}", ctx());
}
