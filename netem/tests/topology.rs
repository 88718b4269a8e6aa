//! Topology: namespaces are created, wired as the layout says, reachable
//! (or not) as they should be, and removed on drop and by cleanup.
//!
//! Needs root; every test prints why and passes when not root. Tests that
//! call `cleanup` use a prefix of their own, because the others run in
//! parallel in this process with the project prefix.

// Test helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread;
use std::time::Duration;

use netem::topology::{
    cleanup, leftovers, offload_state, run_in, Layout, NetNs, Topology, TopologyError, DST_IF,
    LINK_DST_IF, LINK_SRC_IF, MTU, PREFIX, SRC_IF,
};

fn is_root(test: &str) -> bool {
    // SAFETY: geteuid(2) takes no arguments and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping {test}: network namespaces need root");
    }
    root
}

/// Runs `ip ARGS` and returns stdout, panicking with stderr on failure.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Names `ip netns list` shows (its lines are `name` or `name (id: N)`).
fn netns_list() -> Vec<String> {
    ip(&["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Binds a listener in `ns` on `addr`, and serves one connection there:
/// reads 4 bytes and echoes them reversed, returning the peer's address.
fn echo_server(ns: &NetNs, addr: std::net::Ipv4Addr) -> (u16, thread::JoinHandle<SocketAddr>) {
    let listener = run_in(ns, || TcpListener::bind((addr, 0)))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let mut buf = [0; 4];
        conn.read_exact(&mut buf).unwrap();
        buf.reverse();
        conn.write_all(&buf).unwrap();
        peer
    });
    (port, server)
}

/// Connects from `ns` and checks the echo.
fn exchange(ns: &NetNs, to: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    run_in(ns, || {
        let mut conn = TcpStream::connect_timeout(&to, timeout)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.write_all(b"abcd")?;
        let mut buf = [0; 4];
        conn.read_exact(&mut buf)?;
        assert_eq!(&buf, b"dcba");
        Ok(())
    })
    .unwrap()
}

fn assert_gone(names: &[String]) {
    let listed = netns_list();
    for name in names {
        assert!(!listed.contains(name), "{name} still in `ip netns list`");
    }
}

#[test]
fn direct_src_reaches_dst_and_drop_removes_everything() {
    if !is_root("direct_src_reaches_dst_and_drop_removes_everything") {
        return;
    }
    // IPv6 is turned off inside the namespaces from a thread that entered
    // them; the root namespace's setting must not move.
    let root_v6 = || std::fs::read_to_string("/proc/sys/net/ipv6/conf/default/disable_ipv6").ok();
    let root_v6_before = root_v6();
    let run_id = Topology::new_run_id();
    let topo = Topology::create(&run_id, Layout::Direct).unwrap();
    assert_eq!(root_v6(), root_v6_before);
    let dst_v6 = run_in(&NetNs::open(topo.dst_ns()).unwrap(), || {
        std::fs::read_to_string("/proc/sys/net/ipv6/conf/default/disable_ipv6").ok()
    })
    .unwrap();
    if let Some(v) = dst_v6 {
        assert_eq!(v.trim(), "1");
    }
    assert_eq!(topo.src_ns(), format!("{PREFIX}{run_id}-src"));
    assert_eq!(topo.dst_ns(), format!("{PREFIX}{run_id}-dst"));
    assert_eq!(topo.link_ns(), None);
    assert_eq!(topo.link_src_if(), None);
    let names = topo.namespaces();
    let listed = netns_list();
    for name in &names {
        assert!(listed.contains(name), "{name} not in {listed:?}");
    }

    // The addresses live only in the namespaces, each on its veth end.
    let root_addrs = ip(&["-4", "-o", "addr", "show"]);
    assert!(!root_addrs.contains(&format!(" {}/", topo.src_addr())));
    assert!(!root_addrs.contains(&format!(" {}/", topo.dst_addr())));
    let src_addrs = ip(&["-n", topo.src_ns(), "-4", "-o", "addr"]);
    let on_veth = format!("{SRC_IF}    inet {}/24", topo.src_addr());
    assert!(src_addrs.contains(&on_veth), "{src_addrs}");
    let lo = ip(&["-n", topo.dst_ns(), "-o", "link", "show", "dev", "lo"]);
    assert!(lo.contains(",UP"), "loopback down: {lo}");
    let veth = ip(&["-n", topo.dst_ns(), "-o", "link", "show", "dev", DST_IF]);
    assert!(veth.contains(&format!("mtu {MTU}")), "{veth}");

    let src = NetNs::open(topo.src_ns()).unwrap();
    let dst = NetNs::open(topo.dst_ns()).unwrap();
    // Direct leaves offloads alone (kernel netem copes), which also shows
    // that the relayed test's "all off" reads real state.
    let defaults = offload_state(&src, SRC_IF).unwrap();
    assert!(defaults.tso && defaults.tx_checksum, "{defaults:?}");

    let (port, server) = echo_server(&dst, topo.dst_addr());
    exchange(
        &src,
        SocketAddr::from((topo.dst_addr(), port)),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(server.join().unwrap().ip(), topo.src_addr());

    // A child process entered through the Command helper sees dst's
    // interface and address, which the root namespace does not have.
    let out = dst
        .command("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.contains(DST_IF) && out.contains(&topo.dst_addr().to_string()),
        "{out}"
    );

    drop((src, dst));
    drop(topo);
    assert_gone(&names);
}

#[test]
fn relayed_link_namespace_does_not_bridge() {
    if !is_root("relayed_link_namespace_does_not_bridge") {
        return;
    }
    let topo = Topology::create(&Topology::new_run_id(), Layout::Relayed).unwrap();
    let link_ns = topo.link_ns().unwrap().to_owned();
    assert!(link_ns.starts_with(PREFIX) && link_ns.ends_with("-link"));
    assert_eq!(topo.link_src_if(), Some(LINK_SRC_IF));
    assert_eq!(topo.link_dst_if(), Some(LINK_DST_IF));
    // One /24 for both ends: the relay forwards frames, not packets.
    assert_eq!(topo.src_addr().octets()[..3], topo.dst_addr().octets()[..3]);

    let link = NetNs::open(&link_ns).unwrap();
    let src = NetNs::open(topo.src_ns()).unwrap();
    let dst = NetNs::open(topo.dst_ns()).unwrap();
    for (ns, iface) in [
        (&src, SRC_IF),
        (&dst, DST_IF),
        (&link, LINK_SRC_IF),
        (&link, LINK_DST_IF),
    ] {
        let state = offload_state(ns, iface).unwrap();
        assert_eq!(state.harmful(), None, "{} {iface}: {state:?}", ns.name());
        let line = ip(&["-n", ns.name(), "-o", "link", "show", "dev", iface]);
        assert!(line.contains(&format!("mtu {MTU}")), "{line}");
        assert!(line.contains("LOWER_UP"), "{line}");
    }
    // No IPv6 chatter on the link.
    for ns in [&src, &dst, &link] {
        let v6 = ip(&["-n", ns.name(), "-6", "-o", "addr", "show"]);
        assert!(v6.trim().is_empty(), "{}: {v6}", ns.name());
    }
    // The link namespace has nothing but its two ends and loopback, and no
    // addresses.
    let links = ip(&["-n", &link_ns, "-o", "link", "show"]);
    assert_eq!(links.lines().count(), 3, "{links}");
    assert!(
        ip(&["-n", &link_ns, "-4", "-o", "addr", "show", "scope", "global"])
            .trim()
            .is_empty()
    );

    let (port, server) = echo_server(&dst, topo.dst_addr());
    let to = SocketAddr::from((topo.dst_addr(), port));
    assert!(
        exchange(&src, to, Duration::from_secs(1)).is_err(),
        "src reached dst with nothing forwarding in the link namespace"
    );

    // A kernel bridge in place of the relay makes it one segment: the
    // layout is right, only the forwarding was missing.
    for cmd in [
        "link add br0 type bridge".to_owned(),
        format!("link set dev {LINK_SRC_IF} master br0"),
        format!("link set dev {LINK_DST_IF} master br0"),
        "link set dev br0 up".to_owned(),
    ] {
        let args: Vec<&str> = ["-n", link_ns.as_str()]
            .into_iter()
            .chain(cmd.split_whitespace())
            .collect();
        ip(&args);
    }
    ip(&["-n", topo.src_ns(), "neigh", "flush", "all"]);
    let mut result = exchange(&src, to, Duration::from_secs(2));
    for _ in 0..5 {
        if result.is_ok() {
            break;
        }
        result = exchange(&src, to, Duration::from_secs(2));
    }
    result.unwrap();
    assert_eq!(server.join().unwrap().ip(), topo.src_addr());

    let names = topo.namespaces();
    assert_eq!(names.len(), 3);
    drop((src, dst, link));
    topo.destroy().unwrap();
    assert_gone(&names);
}

#[test]
fn two_topologies_at_once_get_distinct_names_and_subnets() {
    if !is_root("two_topologies_at_once_get_distinct_names_and_subnets") {
        return;
    }
    let a = thread::spawn(|| Topology::create(&Topology::new_run_id(), Layout::Relayed));
    let b = thread::spawn(|| Topology::create(&Topology::new_run_id(), Layout::Relayed));
    let (a, b) = (a.join().unwrap().unwrap(), b.join().unwrap().unwrap());
    assert_ne!(a.run_id(), b.run_id());
    for name in a.namespaces() {
        assert!(!b.namespaces().contains(&name));
    }
    assert_ne!(a.subnet(), b.subnet());
    assert_ne!(a.src_addr(), b.src_addr());
    let listed = netns_list();
    for name in a.namespaces().iter().chain(&b.namespaces()) {
        assert!(listed.contains(name), "{name} not in {listed:?}");
    }
    let names = [a.namespaces(), b.namespaces()].concat();
    drop((a, b));
    assert_gone(&names);
}

#[test]
fn existing_namespace_is_refused_and_left_alone() {
    if !is_root("existing_namespace_is_refused_and_left_alone") {
        return;
    }
    let run_id = Topology::new_run_id();
    let taken = format!("{PREFIX}{run_id}-dst");
    ip(&["netns", "add", &taken]);
    let err = Topology::create(&run_id, Layout::Direct).unwrap_err();
    let listed = netns_list();
    ip(&["netns", "delete", &taken]);
    assert!(
        matches!(err, TopologyError::NamespaceExists { ref name } if *name == taken),
        "{err}"
    );
    assert!(
        listed.contains(&taken),
        "a namespace we did not create was deleted"
    );
    assert!(!listed.contains(&format!("{PREFIX}{run_id}-src")));
}

/// Removes `other-ns-test` and the other veth pair, if present.
fn remove_others() {
    let _ = Command::new("ip")
        .args(["netns", "delete", "other-ns-test"])
        .output();
    let _ = Command::new("ip")
        .args(["link", "delete", "othertest-v"])
        .output();
}

/// Calls [`remove_others`] even if an assert fails.
struct Others;

impl Drop for Others {
    fn drop(&mut self) {
        remove_others();
    }
}

#[test]
fn cleanup_removes_leaked_topologies_and_nothing_else() {
    if !is_root("cleanup_removes_leaked_topologies_and_nothing_else") {
        return;
    }
    const MINE: &str = "msbtc-";
    remove_others(); // left by an earlier, aborted run of this test
    let _others = Others;
    ip(&["netns", "add", "other-ns-test"]);
    ip(&[
        "link",
        "add",
        "othertest-v",
        "type",
        "veth",
        "peer",
        "name",
        "othertest-p",
    ]);
    // A stray pair in the root namespace carrying the prefix.
    ip(&[
        "link",
        "add",
        "msbtc-stray",
        "type",
        "veth",
        "peer",
        "name",
        "msbtc-strayp",
    ]);

    let leaked =
        Topology::create_with_prefix(MINE, &Topology::new_run_id(), Layout::Relayed).unwrap();
    let mut expected = leaked.namespaces();
    expected.sort();
    std::mem::forget(leaked);

    let found = leftovers(MINE).unwrap();
    assert_eq!(found.namespaces, expected);
    let mut links = found.links.clone();
    links.sort();
    assert_eq!(links, ["msbtc-stray", "msbtc-strayp"]);

    let report = cleanup(MINE).unwrap();
    let mut removed = report.namespaces.clone();
    removed.sort();
    assert_eq!(removed, expected);
    let mut removed_links = report.links.clone();
    removed_links.sort();
    assert_eq!(removed_links, ["msbtc-stray", "msbtc-strayp"]);

    assert!(leftovers(MINE).unwrap().is_empty());
    assert_gone(&expected);
    assert!(netns_list().contains(&"other-ns-test".to_owned()));
    assert!(ip(&["-o", "link", "show", "dev", "othertest-v"]).contains("othertest-v"));
    // Nothing left: a second pass removes nothing.
    assert!(cleanup(MINE).unwrap().is_empty());
}

#[test]
fn bad_arguments_are_typed_errors() {
    if !is_root("bad_arguments_are_typed_errors") {
        return;
    }
    assert!(matches!(
        Topology::create("has-dash", Layout::Direct),
        Err(TopologyError::InvalidRunId { .. })
    ));
    assert!(matches!(
        Topology::create_with_prefix("x", "abc", Layout::Direct),
        Err(TopologyError::InvalidPrefix { .. })
    ));
    // An empty prefix would match every namespace on the machine.
    assert!(matches!(
        cleanup(""),
        Err(TopologyError::InvalidPrefix { .. })
    ));
    let err = NetNs::open("msb-surely-not-a-namespace").unwrap_err();
    assert!(
        matches!(err, netem::topology::NetNsError::Open { .. }),
        "{err}"
    );
}

#[test]
fn without_root_the_error_says_so() {
    if !is_root("without_root_the_error_says_so") {
        return;
    }
    // Drop privileges on one thread only: the raw syscall changes this
    // thread's credentials, unlike libc's setresuid, which changes all.
    let result = thread::spawn(|| {
        // SAFETY: setresuid(2) takes three integers; -1 keeps the real and
        // saved uid (root), so nothing else is affected and the thread ends
        // right after.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, -1i32, 65534u32, -1i32) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let create = Topology::create(&Topology::new_run_id(), Layout::Direct);
        let clean = cleanup(PREFIX);
        (create.err(), clean.err())
    })
    .join()
    .unwrap();
    match result {
        (
            Some(TopologyError::NeedsRoot { euid: 65534 }),
            Some(TopologyError::NeedsRoot { euid: 65534 }),
        ) => {}
        other => panic!("expected NeedsRoot twice, got {other:?}"),
    }
    let msg = TopologyError::NeedsRoot { euid: 65534 }.to_string();
    assert!(msg.contains("root") && msg.contains("65534"), "{msg}");
}
