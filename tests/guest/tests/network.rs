//! `microvm run`'s networks, end to end: `--network user` (virtio-net through passt) with
//! published ports and outbound connections, and `--network none`. The host side is this
//! test process: in the nested bed that is L1, whose default route goes through a dummy
//! uplink (tests/bed/nested.sh), as passt needs one.
//!
//! Inputs, set by tests/run.sh: MICROVM_BIN, MICROVM_KERNEL_DIR, MICROVM_AGENT,
//! MICROVM_TEST_ROOTFS_DIR.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use guest_tests::Case;
use test_support::KillAfter;

/// A port nobody listens on now (the kernel's pick; free again once dropped).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP GET with a short timeout: the body, or why not.
fn http_get(addr: SocketAddr) -> Result<String, String> {
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| format!("read: {e}"))?;
    Ok(answer)
}

/// Removes an iptables rule when dropped, so a failing test leaves L1's firewall as it was.
struct Rule(Vec<String>);

impl Rule {
    fn insert(spec: &[&str]) -> Self {
        let spec: Vec<String> = spec.iter().map(|s| (*s).to_owned()).collect();
        let status = std::process::Command::new("iptables").arg("-I").args(&spec).status().unwrap();
        assert!(status.success(), "iptables -I {spec:?}");
        Self(spec)
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables").arg("-D").args(&self.0).status();
    }
}

/// `-p PORT:80` (which implies `--network user`) serves the host from busybox httpd in the guest, and since a published
/// port is a listening socket of passt's, the host's INPUT chain filters it like any local
/// service (with a bridge network's DNAT, INPUT would never see it).
#[test]
fn a_published_port_serves_the_host_and_input_rules_filter_it() {
    let case = Case::new("publish");
    let port = free_port();
    let publish = format!("{port}:80");
    let script = "mkdir /www && echo hello-from-the-guest > /www/index.html && echo ready && exec httpd -f -p 80 -h /www";
    let mut child = case
        // --init: httpd as the container's PID 1 would ignore SIGTERM, as under runc.
        .command("rootfs-busybox", &["--init", "-p", &publish], &["sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _limit = KillAfter::new(child.id(), Duration::from_secs(300), "microvm run httpd");
    let mut ready = [0u8; 6];
    child.stdout.as_mut().unwrap().read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"ready\n");

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // httpd listens a moment after the shell's echo.
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        match http_get(addr) {
            Ok(page) if page.contains("hello-from-the-guest") => break page,
            other => assert!(Instant::now() < deadline, "no page from the guest: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");

    {
        let _drop = Rule::insert(&["INPUT", "-p", "tcp", "--dport", &port.to_string(), "-j", "DROP"]);
        let blocked = http_get(addr);
        assert!(blocked.is_err(), "an INPUT rule dropping port {port} let the page through: {blocked:?}");
    }
    assert!(http_get(addr).is_ok_and(|p| p.contains("hello-from-the-guest")), "the page is back without the rule");

    // SAFETY: kill takes plain integers; the pid is our unreaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "httpd ends with SIGTERM's status");
    // passt goes when the VMM's end of its socket closes (assert_nothing_left waits for it).
    case.assert_nothing_left();
    assert!(TcpListener::bind(addr).is_ok(), "the published port is free again");
}

/// Under `--network user` the container reaches a server on the host through the gateway,
/// and its resolv.conf names passt's DNS forwarder.
#[test]
fn outbound_tcp_reaches_a_server_on_the_host() {
    let case = Case::new("outbound");
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut request = [0u8; 1024];
        let n = conn.read(&mut request).unwrap();
        conn.write_all(b"HTTP/1.0 200 OK\r\n\r\nfrom-the-host\n").unwrap();
        String::from_utf8_lossy(&request[..n]).into_owned()
    });
    let url = format!("http://10.0.2.2:{port}/from-the-guest");
    let script = format!("cat /etc/resolv.conf && wget -q -O - {url}");
    let out = case.run("rootfs-busybox", &["--network", "user"], &["sh", "-c", &script]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "nameserver 10.0.2.3\nfrom-the-host\n", "{out:?}");
    let request = server.join().unwrap();
    assert!(request.starts_with("GET /from-the-guest HTTP/1.1"), "{request}");
    case.assert_nothing_left();
}

/// `--network none`: no network card, loopback only, and nothing to publish.
#[test]
fn network_none_has_loopback_only() {
    let case = Case::new("none");
    let out = case.run("rootfs-busybox", &["--network", "none"], &["sh", "-c", "tail -n +3 /proc/net/dev | cut -d: -f1"]);
    assert_eq!((out.code, out.stdout.split_whitespace().collect::<Vec<_>>()), (Some(0), vec!["lo"]), "{out:?}");
    let out = case.run("rootfs-busybox", &["--network", "none", "-p", "8080:80"], &["true"]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert_eq!(out.error_lines(), ["microvm: publish: --network none has no ports to publish"], "{out:?}");
    case.assert_nothing_left();
}

/// A malformed `-p` and a port already in use: one line naming it, exit 125, no VM, no passt.
#[test]
fn a_bad_publish_is_one_line_and_leaves_nothing() {
    let case = Case::new("badpublish");
    let out = case.run("rootfs-busybox", &["-p", "80"], &["true"]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert_eq!(out.error_lines().len(), 1, "{out:?}");
    assert!(out.stderr.contains("publish \"80\": no container port"), "{out:?}");

    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let out = case.run("rootfs-busybox", &["-p", &format!("127.0.0.1:{port}:80")], &["true"]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert_eq!(out.error_lines().len(), 1, "{out:?}");
    assert!(out.stderr.contains(&format!("publish 127.0.0.1:{port}/tcp: cannot listen there: ")), "{out:?}");
    case.assert_nothing_left();
}
