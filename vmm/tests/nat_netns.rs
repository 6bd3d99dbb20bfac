//! `--net nat` on this host, inside network namespaces the tests make
//! (`unshare -n -m`, with a private tmpfs on /run for ivmm's registry):
//! nothing touches the host's own interfaces, routes or firewall, and the
//! namespaces vanish with their last process. A tiny idle guest keeps
//! ivmm running; a "guest" network namespace on a veth port of ivmm's
//! bridge, with the guest NIC's MAC, plays the guest, so DHCP, DNS and
//! NAT are exercised through the real bridge, nftables and sockets. (The
//! lab's tests do the same with a stock kernel on virtio-net.)
//!
//! Needs root (network namespaces, bridges) and the busybox of the guest
//! fixtures (`scripts/fetch-guest.sh`) for udhcpc, nslookup, httpd, wget.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{p, Scratch, IVMM};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the NAT tests need root (network namespaces and bridges); run the suite as root"
    );
    assert!(
        Path::new("/dev/kvm").exists(),
        "no /dev/kvm: the NAT tests run a tiny guest"
    );
}

fn busybox() -> PathBuf {
    let bb = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest/busybox");
    assert!(
        bb.is_file(),
        "{} is missing: run scripts/fetch-guest.sh (the README's test command does)",
        bb.display()
    );
    bb
}

/// Compiles `tests/guest/dns_responder.c` (static) into `dir`.
fn dns_responder(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/guest/dns_responder.c");
    let out = dir.join("dns_responder");
    let status = Command::new("gcc")
        .args(["-static", "-O2", "-o", p(&out), p(&src)])
        .status()
        .expect("gcc");
    assert!(status.success(), "gcc dns_responder.c failed");
    out
}

/// The shell functions every script uses: `wait_for FILE` (up to 20 s)
/// and `netns` (common/netns.sh: a namespace kept alive by a sleeper; prints
/// its pid once the namespace exists).
const PRELUDE: &str = concat!(
    r#"
wait_for() { i=0; until [ -e "$1" ]; do i=$((i+1)); [ $i -gt 200 ] && { echo "TIMEOUT waiting for $1"; return 1; }; sleep 0.1; done; }
"#,
    include_str!("common/netns.sh"),
    r#"mount -t tmpfs tmpfs /run
mount -t sysfs sysfs /sys
ip link set lo up
"#
);

struct Env {
    dir: Scratch,
    kernel: String,
}

fn env(name: &str) -> Env {
    require_root();
    let dir = Scratch::new("nat", name);
    let kernel = dir.join("idle.elf");
    std::fs::write(&kernel, common::tiny_guest::pvh_elf_idle(b'N')).expect("write kernel");
    Env {
        kernel: p(&kernel).to_owned(),
        dir,
    }
}

/// Runs `script` as root in new network, mount and pid namespaces;
/// returns stdout+stderr. Everything it started (servers, sleepers) dies
/// with the pid namespace's first process, and `timeout` bounds the run.
fn in_namespaces(env: &Env, script: &str) -> String {
    let full = format!(
        "set -u\nBB={bb}\nIVMM={ivmm}\nK={k}\nD={d}\n{PRELUDE}\n{script}\n",
        bb = p(&busybox()),
        ivmm = IVMM,
        k = env.kernel,
        d = p(&env.dir),
    );
    let out = Command::new("timeout")
        .args([
            "-k",
            "5",
            "180",
            "unshare",
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "sh",
            "-c",
        ])
        .arg(&full)
        .output()
        .expect("run unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    text
}

/// The value after `KEY=` on the first line that has it.
fn value<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.split_once(key).map(|(_, v)| v.trim()))
        .unwrap_or_else(|| panic!("no {key} in:\n{out}"))
}

/// ivmm with the idle guest and one NAT NIC; `$1` is the MAC, the rest
/// extra `--net` options. Prints nothing; sets P to its pid.
const START_IVMM: &str = r#"
start_ivmm() { mac=$1; shift; "$IVMM" run --kernel "$K" --mem 64M --serial none --shutdown-timeout 1 --net "nat,mac=$mac$*" 2>>"$D/ivmm.err" & P=$!; }
attached() { wait_for /sys/class/net/ivmm${1}n0/master && basename "$(readlink /sys/class/net/ivmm${1}n0/master)"; }
"#;

#[test]
fn a_guest_on_the_nat_network_gets_a_lease_dns_and_masqueraded_http() {
    let env = env("full");
    let dns = dns_responder(&env.dir);
    let www = env.dir.join("www");
    std::fs::create_dir_all(www.join("cgi-bin")).expect("www");
    let payload: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(www.join("blob"), &payload).expect("blob");
    let cgi = www.join("cgi-bin/peer");
    std::fs::write(
        &cgi,
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\nPEER=%s\\n' \"$REMOTE_ADDR\"\n",
    )
    .expect("cgi");
    Command::new("chmod")
        .args(["755", p(&cgi)])
        .status()
        .expect("chmod");
    std::fs::write(
        env.dir.join("dhcp.sh"),
        "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\n\
         echo LEASE ip=$ip subnet=$subnet router=$router dns=$dns hostname=$hostname mtu=$mtu lease=$lease serverid=$serverid\n\
         ip addr add $ip/24 dev $interface && ip route add default via $router\n",
    )
    .expect("dhcp.sh");
    Command::new("chmod")
        .args(["755", p(&env.dir.join("dhcp.sh"))])
        .status()
        .expect("chmod");

    let script = format!(
        r#"{START_IVMM}
# "upstream": a namespace behind a veth, the only way out; DNS and HTTP live there.
UP=$(netns)
ip link add up0 type veth peer name up1 && ip link set up1 netns $UP
ip addr add 192.0.2.1/24 dev up0 && ip link set up0 up && ip route add default via 192.0.2.2
nsenter -t $UP -n sh -c 'ip link set lo up; ip addr add 192.0.2.2/24 dev up1; ip link set up1 up'
nsenter -t $UP -n {dns} 192.0.2.2 53 upstream.test 192.0.2.2 >"$D/dns.log" 2>&1 &
nsenter -t $UP -n "$BB" httpd -f -p 192.0.2.2:80 -h "$D/www" &
echo "nameserver 192.0.2.2" >"$D/resolv.conf" && mount --bind "$D/resolv.conf" /etc/resolv.conf
start_ivmm 52:54:00:aa:bb:01
BR=$(attached $P) && echo BRIDGE=$BR
echo ALIAS=$(cat /sys/class/net/$BR/ifalias)
echo GATEWAY=$(ip -4 -o addr show dev $BR | awk '{{print $4}}')
echo FORWARD=$(cat /proc/sys/net/ipv4/ip_forward)
echo USERS=$(ls /run/ivmm/nat/$BR/users)
# "guest": a namespace on a port of ivmm's bridge with the NIC's MAC.
G=$(netns)
ip link add g0 type veth peer name g1 && ip link set g1 netns $G && ip link set g0 master $BR up
in_guest() {{ nsenter -t $G -n "$@"; }}
in_guest sh -c 'ip link set lo up; ip link set g1 address 52:54:00:aa:bb:01; ip link set g1 up'
in_guest "$BB" udhcpc -i g1 -f -n -q -t 5 -T 2 -s "$D/dhcp.sh" 2>&1 | grep LEASE
echo PING=$(in_guest "$BB" ping -c 2 -W 3 10.0.2.1 | grep -c 'bytes from')
echo NSLOOKUP=$(in_guest "$BB" nslookup upstream.test 10.0.2.1 2>&1 | grep -A1 'Name:' | grep Address | awk '{{print $NF}}')
echo NXDOMAIN=$(in_guest "$BB" nslookup nowhere.test 10.0.2.1 2>&1 | grep -c -i "can't find\|NXDOMAIN")
# A hostile guest: random datagrams of many sizes at the DNS and DHCP ports.
for i in 1 2 3 4 5 6 7 8 9 10 11 12; do head -c $((i*i*9)) /dev/urandom >"$D/junk"
  in_guest bash -c "cat '$D/junk' >/dev/udp/10.0.2.1/53; cat '$D/junk' >/dev/udp/10.0.2.1/67"; done
echo AFTER-JUNK=$(in_guest "$BB" nslookup upstream.test 10.0.2.1 2>&1 | grep -A1 'Name:' | grep Address | awk '{{print $NF}}')
echo NAT-SECCOMP=$(for t in /proc/$P/task/*; do [ "$(cat $t/comm)" = ivmm-nat ] && awk '/^Seccomp:/ {{print $2}}' $t/status; done)
echo HTTP-$(in_guest "$BB" wget -q -O - http://192.0.2.2/cgi-bin/peer)
in_guest "$BB" wget -q -O "$D/got" http://192.0.2.2/blob; echo BLOB=$(md5sum <"$D/got" | cut -d' ' -f1)
echo SERVED=$(md5sum <"$D/www/blob" | cut -d' ' -f1)
cat "$D/dns.log"
kill -TERM $P; wait $P; echo IVMM-RC=$?
echo LINKS-AFTER=$(ls /sys/class/net | grep -c '^ivmm')
echo RUN-AFTER=$(ls /run/ivmm/nat | grep -c '^ivmm-')
cat "$D/ivmm.err"
"#,
        dns = p(&dns)
    );
    let out = in_namespaces(&env, &script);
    assert_eq!(value(&out, "BRIDGE="), "ivmm-0a000200", "{out}");
    assert_eq!(value(&out, "ALIAS="), "ivmm NAT network 10.0.2.0/24");
    assert_eq!(value(&out, "GATEWAY="), "10.0.2.1/24");
    assert_eq!(value(&out, "FORWARD="), "1");
    let lease = value(&out, "LEASE ");
    for want in [
        "ip=10.0.2.",
        "subnet=255.255.255.0",
        "router=10.0.2.1",
        "dns=10.0.2.1",
        "mtu=1500",
        "lease=3600",
        "serverid=10.0.2.1",
        "hostname=ivmm-guest",
    ] {
        assert!(lease.contains(want), "lease lacks {want}: {lease}");
    }
    assert_eq!(value(&out, "PING="), "2", "{out}");
    // The name resolved through ivmm's forwarder; the upstream saw the
    // query come from the host side (192.0.2.1), not the guest.
    assert_eq!(value(&out, "NSLOOKUP="), "192.0.2.2", "{out}");
    assert!(
        out.contains("QUERY upstream.test type 1 from 192.0.2.1"),
        "{out}"
    );
    assert_ne!(value(&out, "NXDOMAIN="), "0", "{out}");
    // Garbage at both ports changed nothing, and the service thread runs
    // under its own filter (2: SECCOMP_MODE_FILTER).
    assert_eq!(value(&out, "AFTER-JUNK="), "192.0.2.2", "{out}");
    assert_eq!(value(&out, "NAT-SECCOMP="), "2", "{out}");
    // Masquerade: the HTTP server saw the host's address, and the bytes
    // came through intact.
    assert_eq!(value(&out, "HTTP-PEER="), "192.0.2.1", "{out}");
    assert_eq!(value(&out, "BLOB="), value(&out, "SERVED="), "{out}");
    // Power button, the idle guest ignores it, hard stop after 1 s.
    assert_eq!(value(&out, "IVMM-RC="), "4", "{out}");
    assert_eq!(value(&out, "LINKS-AFTER="), "0", "{out}");
    assert_eq!(value(&out, "RUN-AFTER="), "0", "{out}");
    assert!(!out.contains("seccomp"), "{out}");
}

#[test]
fn processes_share_a_network_and_the_last_one_or_the_next_start_removes_it() {
    let env = env("share");
    let script = format!(
        r#"{START_IVMM}
start_ivmm 52:54:00:aa:bb:01; A=$P; echo A-ON=$(attached $A)
start_ivmm 52:54:00:aa:bb:02; B=$P; echo B-ON=$(attached $B)
echo USERS=$(ls /run/ivmm/nat/ivmm-0a000200/users | wc -l) PORTS=$(ls /sys/class/net/ivmm-0a000200/brif | wc -l)
kill -KILL $A; wait $A
echo AFTER-A-KILLED=$(ls /sys/class/net | grep -c '^ivmm-')
kill -TERM $B; wait $B; echo B-RC=$?
echo AFTER-B=$(ls /sys/class/net | grep -c '^ivmm') $(ls /run/ivmm/nat | grep -c '^ivmm-')
start_ivmm 52:54:00:aa:bb:03; C=$P; attached $C >/dev/null
kill -KILL $C; wait $C
echo LEFT-BY-KILL=$(ls /sys/class/net | grep -c '^ivmm-') $(ls /run/ivmm/nat | grep -c '^ivmm-')
start_ivmm 52:54:00:aa:bb:04; E=$P; attached $E >/dev/null
echo USERS-AFTER-SWEEP=$(ls /run/ivmm/nat/ivmm-0a000200/users)
echo E-PID=$E
kill -TERM $E; wait $E
echo AFTER-ALL=$(ls /sys/class/net | grep -c '^ivmm') $(ls /run/ivmm/nat | grep -c '^ivmm-')
# The tables went too: creating one again (NLM_F_EXCL) would fail otherwise.
start_ivmm 52:54:00:aa:bb:06; echo AGAIN-ON=$(attached $P); kill -TERM $P; wait $P
cat "$D/ivmm.err"
"#
    );
    let out = in_namespaces(&env, &script);
    assert_eq!(value(&out, "A-ON="), "ivmm-0a000200", "{out}");
    assert_eq!(value(&out, "B-ON="), "ivmm-0a000200", "{out}");
    assert_eq!(value(&out, "USERS="), "2 PORTS=2", "{out}");
    // A killed user leaves the network to the other.
    assert_eq!(value(&out, "AFTER-A-KILLED="), "1", "{out}");
    assert_eq!(value(&out, "B-RC="), "4", "{out}");
    // B, the last live user, removed bridge and registry (A's TAP went with A).
    assert_eq!(value(&out, "AFTER-B="), "0 0", "{out}");
    // SIGKILL leaves the bridge and registry behind (its TAP goes)...
    assert_eq!(value(&out, "LEFT-BY-KILL="), "1 1", "{out}");
    // ...and the next start sweeps them: only the new user is registered.
    assert_eq!(
        value(&out, "USERS-AFTER-SWEEP="),
        value(&out, "E-PID="),
        "{out}"
    );
    assert_eq!(value(&out, "AFTER-ALL="), "0 0", "{out}");
    assert_eq!(value(&out, "AGAIN-ON="), "ivmm-0a000200", "{out}");
}

#[test]
fn subnets_in_use_are_refused_by_name_or_skipped_by_default() {
    let env = env("collide");
    let script = format!(
        r#"{START_IVMM}
ip link add busy0 type veth peer name busy1 && ip addr add 10.0.2.7/24 dev busy0 && ip link set busy0 up
"$IVMM" run --kernel "$K" --mem 64M --serial none --net nat,subnet=10.0.2.0/24 2>"$D/refused.err"; echo REFUSED-RC=$?
echo REFUSED-MSG=$(cat "$D/refused.err")
echo AFTER-REFUSAL=$(ls /sys/class/net | grep -c '^ivmm')
start_ivmm 52:54:00:aa:bb:05; echo DEFAULT-ON=$(attached $P)
echo DEFAULT-GW=$(ip -4 -o addr show dev ivmm-0a000300 | awk '{{print $4}}')
kill -TERM $P; wait $P
"$IVMM" run --kernel "$K" --net nat,subnet=10.9.0.0/30 2>&1; echo TINY-RC=$?
"#
    );
    let out = in_namespaces(&env, &script);
    assert_eq!(value(&out, "REFUSED-RC="), "1", "{out}");
    let msg = value(&out, "REFUSED-MSG=");
    assert!(
        msg.contains("subnet=10.0.2.0/24") && msg.contains("10.0.2.0/24 (on busy0)"),
        "{msg}"
    );
    assert_eq!(value(&out, "AFTER-REFUSAL="), "0", "{out}");
    assert_eq!(value(&out, "DEFAULT-ON="), "ivmm-0a000300", "{out}");
    assert_eq!(value(&out, "DEFAULT-GW="), "10.0.3.1/24", "{out}");
    assert!(out.contains("/8 to /29"), "{out}");
}
