//! `--net nat` and `--net tap=` on a bridge, in the lab: stock Debian
//! guests (their own virtio_net, busybox udhcpc/nslookup/wget/ping) on
//! ivmm's NAT network inside L1. L1 has no NIC of its own; "upstream"
//! (DNS and HTTP server) and the TAP peer live in network namespaces the
//! script makes in L1, so no packet leaves L1.

use std::time::Duration;

mod common;

use ivmm_tests::RunOptions;

use common::{ivmm_command, nested_lab as lab, value, NETNS_SH, WAIT_LOG_SH};

/// Guest side of DHCP: udhcpc with a script that prints the lease and
/// configures eth0, its default route and resolver.
const DHCP: &str = r#"printf '#!/bin/sh\n[ "$1" = bound ]||exit 0\necho LEASE-$interface ip=$ip router=$router dns=$dns host=$hostname mtu=$mtu\nip addr add $ip/$mask dev $interface\nip route add default via $router\necho nameserver $dns >/etc/resolv.conf\n' >/tmp/d.sh; chmod +x /tmp/d.sh
ip link set eth0 up; udhcpc -i eth0 -f -n -q -t 10 -T 3 -s /tmp/d.sh
"#;

/// Guest A: lease, ping the gateway, resolve through ivmm's forwarder,
/// HTTP through NAT; then stay up for guest B.
const GUEST_A: &str = r#"echo PINGGW=$(ping -c 2 -W 3 10.0.2.1|grep -c 'bytes from')
echo RESOLVED=$(nslookup upstream.test|awk '/^Address/{a=$NF}END{print a}')
wget -q -O - http://upstream.test/cgi-bin/peer
wget -q -O /tmp/b http://upstream.test/blob; echo BLOB=$(md5sum </tmp/b)
echo A-DONE; sleep 600"#;

/// Guest B: lease on eth0 (NAT), ping every other low address there (A),
/// then eth1 (a TAP on the test's own bridge) to the peer namespace.
const GUEST_B: &str = r#"for i in 2 3 4 5 6; do p=10.0.2.$i; ip addr show eth0|grep -q "$p/"&&continue; ping -c 2 -W 2 $p >/dev/null&&echo REACHED=$p; done
ip link set eth1 up; ip addr add 10.5.0.15/24 dev eth1
echo TAPPEER=$(ping -c 3 -W 3 10.5.0.2|grep -c 'bytes from')"#;

#[test]
fn nat_guests_get_leases_dns_and_nat_reach_each_other_and_a_tap_bridge_peer() {
    let lab = lab();
    let guest_a = ivmm_command(
        &[
            "--mem",
            "256M",
            "--serial",
            "none",
            "--console-log",
            "/tmp/a.log",
            "--net",
            "nat",
        ],
        &format!("{DHCP}{GUEST_A}"),
    );
    let guest_b = ivmm_command(
        &[
            "--mem",
            "256M",
            "--serial",
            "none",
            "--console-log",
            "/tmp/b.log",
            "--net",
            "nat",
            "--net",
            "tap=taptest",
        ],
        &format!("{DHCP}{GUEST_B}"),
    );
    let script = format!(
        r#"{WAIT_LOG_SH}{NETNS_SH}ip link set lo up
# upstream: DNS (upstream.test) and HTTP, behind a veth; L1's default route.
UP=$(netns)
ip link add up0 type veth && ip link set veth0 netns $UP
ip addr add 192.0.2.1/24 dev up0 && ip link set up0 up && ip route add default via 192.0.2.2
nsenter -t $UP -n sh -c 'ip link set lo up; ip link set veth0 name up1; ip addr add 192.0.2.2/24 dev up1; ip link set up1 up'
mkdir -p /tmp/www/cgi-bin
printf '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\nHTTPPEER=%%s\\n" "$REMOTE_ADDR"\n' >/tmp/www/cgi-bin/peer; chmod 755 /tmp/www/cgi-bin/peer
dd if=/dev/urandom of=/tmp/www/blob bs=1024 count=512 2>/dev/null; echo SERVED=$(md5sum </tmp/www/blob)
nsenter -t $UP -n {{files}}/dns_responder 192.0.2.2 53 upstream.test 192.0.2.2 >/tmp/dns.log 2>&1 &
nsenter -t $UP -n httpd -f -p 192.0.2.2:80 -h /tmp/www &
echo nameserver 192.0.2.2 >/etc/resolv.conf
# the TAP peer: a namespace on a bridge the test makes itself.
PR=$(netns)
ip link add brtest type bridge && ip link set brtest up
ip link add pv0 type veth && ip link set veth0 netns $PR && ip link set pv0 master brtest && ip link set pv0 up
nsenter -t $PR -n sh -c 'ip link set veth0 name pv1; ip addr add 10.5.0.2/24 dev pv1; ip link set pv1 up'
{guest_a} & A=$!
wait_log /tmp/a.log LEASE-eth0 $A || echo A-NO-LEASE
{guest_b} & B=$!
i=0; until [ -e /sys/class/net/taptest ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done
ip link set taptest master brtest && ip link set taptest up && echo TAP-ON-BRIDGE
echo BRIDGE-PORTS=$(ls /sys/class/net/ivmm-0a000200/brif | grep -c '^ivmm')
wait $B; echo B-RC=$?
wait_log /tmp/a.log A-DONE $A
kill -TERM $A; wait $A; echo A-RC=$?
echo LINKS-AFTER=$(ls /sys/class/net | grep -c '^ivmm')
echo RUN-AFTER=$(ls /run/ivmm/nat | grep -c '^ivmm-')
echo DNS-LOG; cat /tmp/dns.log
echo A-LOG; cat /tmp/a.log; echo B-LOG; cat /tmp/b.log
kill $UP $PR
"#
    );
    let out = lab
        .run_shell(
            &script,
            RunOptions::new()
                .file(
                    "dns_responder",
                    &common::static_binary("dns_responder"),
                    true,
                )
                .timeout(Duration::from_secs(900)),
        )
        .expect("lab run");
    let c = &out.console;
    let ctx = || format!("console:\n{c}\nL1 log:\n{}", out.l1_log);
    for l in c.lines().filter(|l| {
        [
            "LEASE-",
            "PING",
            "RESOLVED=",
            "HTTPPEER=",
            "BLOB=",
            "SERVED=",
            "PEER=",
            "-RC=",
            "AFTER=",
            "QUERY",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        eprintln!("{l}");
    }
    // Both guests: a lease on 10.0.2.0/24 with ivmm's gateway as router
    // and DNS server, MTU 1500; different addresses.
    let leases: Vec<&str> = c.lines().filter(|l| l.contains("LEASE-eth0 ")).collect();
    assert_eq!(leases.len(), 2, "{}", ctx());
    let ips: Vec<&str> = leases
        .iter()
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("ip=")))
        .collect();
    assert_eq!(ips.len(), 2, "{}", ctx());
    assert_ne!(ips[0], ips[1], "{}", ctx());
    for l in &leases {
        for want in [
            "ip=10.0.2.",
            "router=10.0.2.1",
            "dns=10.0.2.1",
            "mtu=1500",
            "host=ivmm-guest",
        ] {
            assert!(l.contains(want), "{l} lacks {want}: {}", ctx());
        }
    }
    assert_eq!(value(&out, "PINGGW="), "2", "{}", ctx());
    // Resolved through the forwarder, which asked upstream from L1's side.
    assert_eq!(value(&out, "RESOLVED="), "192.0.2.2", "{}", ctx());
    assert!(
        c.contains("QUERY upstream.test type 1 from 192.0.2.1"),
        "{}",
        ctx()
    );
    // Masquerade: the server saw L1's upstream address, not the guest's.
    assert_eq!(value(&out, "HTTPPEER="), "192.0.2.1", "{}", ctx());
    let served = value(&out, "SERVED=")
        .split_whitespace()
        .next()
        .unwrap_or_default();
    let got = value(&out, "BLOB=")
        .split_whitespace()
        .next()
        .unwrap_or_default();
    assert_eq!(got, served, "{}", ctx());
    // The two guests reach each other on the NAT bridge.
    assert_eq!(value(&out, "BRIDGE-PORTS="), "2", "{}", ctx());
    assert_eq!(value(&out, "REACHED="), ips[0], "{}", ctx());
    // tap=: the second NIC reaches the peer on the test's own bridge.
    assert!(c.contains("TAP-ON-BRIDGE"), "{}", ctx());
    assert_eq!(value(&out, "TAPPEER="), "3", "{}", ctx());
    // Both ended cleanly (B by its command, A by SIGTERM -> power button),
    // and the last one removed ivmm's bridge and registry.
    assert_eq!(value(&out, "B-RC="), "0", "{}", ctx());
    assert_eq!(value(&out, "A-RC="), "0", "{}", ctx());
    assert_eq!(value(&out, "LINKS-AFTER="), "0", "{}", ctx());
    assert_eq!(value(&out, "RUN-AFTER="), "0", "{}", ctx());
}
