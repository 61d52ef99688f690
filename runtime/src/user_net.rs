//! `microvm run --network user`: the guest's eth0 reaches the world through passt, the
//! user-mode network stack podman uses for rootless containers, started for this one VM.
//!
//! passt turns the guest's frames into ordinary host sockets: the guest's TCP connection to
//! a server becomes a connect(2) by passt, and a published port (`-p 8080:80`) is a socket
//! passt listens on. Nothing is added to the host's network: no tap, bridge, route or NAT
//! rule, and no privilege is needed. Because published ports are plain listening sockets,
//! the host firewall's INPUT chain filters them as it filters any local service (a bridge
//! network's DNAT sends published traffic through FORWARD instead; see docs/SECURITY.md).
//!
//! Chosen over a stack of our own (slirp-style NAT written here) because passt is kept by
//! Red Hat, fuzzed, sandboxes itself (its own namespaces, seccomp, and `nobody`), and
//! speaks the length-prefixed stream our virtio-net device speaks. We hand it one end of a
//! socketpair (`passt --fd`), so no socket file exists, and `--one-off` makes it exit when
//! the VMM's end closes, however the VMM ends.
//!
//! The guest's addresses are those of QEMU's user networking, which users already know:
//! 10.0.2.15/24, gateway 10.0.2.2 (which is the host: passt maps it to the host's loopback),
//! DNS 10.0.2.3 (forwarded to the host's resolver).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{anyhow, Context};

pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
const PREFIX_LEN: u8 = 24;
/// A locally administered address, as QEMU gives its first NIC.
pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// The kernel's own IP configuration of eth0 at boot (Documentation/admin-guide/nfs/
/// nfsroot.rst, `ip=`): static, so the guest waits for no DHCP (and the guest kernel needs no
/// DHCP client).
pub fn kernel_ip_param() -> String {
    format!("ip={GUEST_ADDR}::{GATEWAY}:255.255.255.0::eth0:off")
}

/// A gratuitous ARP from the guest's addresses (RFC 5227, section 3), length-prefixed for
/// passt's socket. passt learns the guest's MAC address from the frames it receives and
/// until then sends to 00:00:00:00:00:00, which the guest drops; a guest with a static
/// address that only listens (a server behind `-p`) would send nothing and never see a
/// connection. So we announce the guest before it boots.
fn announcement() -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + 42);
    frame.extend_from_slice(&42u32.to_be_bytes());
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&GUEST_MAC);
    // EtherType ARP; Ethernet, IPv4, address lengths 6 and 4; a request.
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&GUEST_ADDR.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&GUEST_ADDR.octets());
    frame
}

/// The container's /etc/resolv.conf under this network.
pub fn resolv_conf() -> String {
    format!("nameserver {DNS}\n")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// One `-p [IP:]HOST:CONTAINER[/tcp|udp]`, as docker and podman take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl FromStr for Publish {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let bad = |why: &str| anyhow!("publish {text:?}: {why} (expected [IP:]HOST_PORT:CONTAINER_PORT[/tcp|udp])");
        let (ports, protocol) = match text.rsplit_once('/') {
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some(_) => return Err(bad("the protocol is tcp or udp")),
            None => (text, Protocol::Tcp),
        };
        let (host, container) = ports.rsplit_once(':').ok_or_else(|| bad("no container port"))?;
        let (host_ip, host_port) = match host.rsplit_once(':') {
            Some((ip, port)) => {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                (Some(ip.parse::<IpAddr>().map_err(|_| bad("not an IP address"))?), port)
            }
            None => (None, host),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("ports are 1 to 65535"));
        Ok(Self { host_ip, host_port: port(host_port)?, container_port: port(container)?, protocol })
    }
}

impl Publish {
    fn host_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), self.host_port)
    }

    /// passt's spelling: `[ADDR/]HOST:GUEST`.
    fn passt_spec(&self) -> String {
        let addr = self.host_ip.map(|ip| format!("{ip}/")).unwrap_or_default();
        format!("{addr}{}:{}", self.host_port, self.container_port)
    }

    /// Fails, naming the port, if it cannot be bound now (in use, or an address this host
    /// does not have): passt would only warn, and the user would find out from a client.
    fn check_free(&self) -> anyhow::Result<()> {
        let addr = self.host_addr();
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        let bound = match self.protocol {
            Protocol::Tcp => TcpListener::bind(addr).map(drop),
            Protocol::Udp => UdpSocket::bind(addr).map(drop),
        };
        bound.with_context(|| format!("publish {addr}/{proto}: cannot listen there"))
    }
}

/// A running passt, serving one VM; killed when dropped before the VM has its socket end.
pub struct UserNetwork {
    passt: crate::helper::Helper,
    /// The VMM's end of the socketpair.
    pub socket: Arc<UnixStream>,
}

impl UserNetwork {
    /// Checks `publish`, then starts passt with them. `None` when this host has no default
    /// route: passt takes the guest's view of the outside from the interface it goes
    /// through, and refuses to start without one; the container then has loopback only,
    /// as under `--network none`, and a warning says so.
    pub fn start(publish: &[Publish]) -> anyhow::Result<Option<Self>> {
        if !has_default_route() {
            anyhow::ensure!(
                publish.is_empty(),
                "publish: this host has no default IPv4 route, which passt (the user-mode network) needs"
            );
            eprintln!("microvm: network user: this host has no default IPv4 route; the container has loopback only");
            return Ok(None);
        }
        for p in publish {
            p.check_free()?;
        }
        let (ours, theirs) = UnixStream::pair().context("network: socketpair")?;
        // dup(2) leaves close-on-exec off, so passt inherits this copy (std's are all
        // close-on-exec); ours is closed once passt has it.
        let inherited = nix::unistd::dup(&theirs).context("network: dup")?;
        let mut command = Command::new("passt");
        command
            .args(["--foreground", "--quiet", "--one-off", "--ipv4-only", "--no-dhcp"])
            .args(["--fd", &inherited.as_raw_fd().to_string()])
            .args(["--address", &GUEST_ADDR.to_string(), "--netmask", &PREFIX_LEN.to_string()])
            .args(["--gateway", &GATEWAY.to_string(), "--dns-forward", &DNS.to_string()])
            // passt reports to syslog and, failing that, to stderr, which would interleave
            // with the container's; what it could fail on is checked before it starts.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A process group of its own: passt signals its group when it sets itself up
            // (seen: SIGTERM and SIGCONT), which must not reach us or a terminal's job.
            .process_group(0);
        for p in publish {
            let flag = if p.protocol == Protocol::Tcp { "--tcp-ports" } else { "--udp-ports" };
            command.args([flag, &p.passt_spec()]);
        }
        let spawned = command.spawn();
        drop((inherited, theirs));
        let child = spawned.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                anyhow!("network user: passt not found (install the passt package, or run with --network none)")
            }
            _ => anyhow!("network user: start passt: {e}"),
        })?;
        let network = Self { passt: crate::helper::Helper::new(child), socket: Arc::new(ours) };
        // The socket is empty and blocking: this write does not wait.
        (&*network.socket).write_all(&announcement()).context("network: announce the guest to passt")?;
        Ok(Some(network))
    }

    /// The VMM holds its socket now: see [`crate::helper`].
    pub fn handed_over(mut self) {
        self.passt.handed_over();
    }
}

/// What `--network user` will do on this host, for `microvm check`.
pub fn availability() -> String {
    let passt = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("passt").is_file()));
    match (passt, has_default_route()) {
        (true, true) => "user (passt) and none; published ports are host sockets, filtered by INPUT".into(),
        (false, _) => "none only: passt not found (install the passt package for --network user)".into(),
        (true, false) => "none only: no default IPv4 route for passt to use".into(),
    }
}

/// Whether /proc/net/route has a default route (destination 0.0.0.0, flags RTF_UP).
fn has_default_route() -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/route") else { return false };
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let up = fields.get(3).and_then(|f| u16::from_str_radix(f, 16).ok()).is_some_and(|f| f & 1 != 0);
        fields.get(1) == Some(&"00000000") && fields.get(7) == Some(&"00000000") && up
    })
}


#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn publish_takes_docker_spellings() {
        let p: Publish = "8080:80".parse().unwrap();
        assert_eq!(p, Publish { host_ip: None, host_port: 8080, container_port: 80, protocol: Protocol::Tcp });
        assert_eq!(p.passt_spec(), "8080:80");
        let p: Publish = "127.0.0.1:5353:53/udp".parse().unwrap();
        assert_eq!((p.host_ip, p.protocol), (Some("127.0.0.1".parse().unwrap()), Protocol::Udp));
        assert_eq!(p.passt_spec(), "127.0.0.1/5353:53");
        let p: Publish = "[::1]:8443:443/tcp".parse().unwrap();
        assert_eq!(p.host_ip, Some("::1".parse().unwrap()));
    }

    #[test]
    fn the_announcement_is_one_gratuitous_arp() {
        let frame = announcement();
        assert_eq!((frame.len(), &frame[..4]), (4 + 42, &[0u8, 0, 0, 42][..]));
        assert_eq!(&frame[4 + 6..4 + 12], &GUEST_MAC);
        // Sender and target protocol addresses are both the guest's.
        assert_eq!(&frame[4 + 28..4 + 32], &GUEST_ADDR.octets());
        assert_eq!(&frame[4 + 38..], &GUEST_ADDR.octets());
    }

    #[test]
    fn malformed_publish_names_itself() {
        for bad in ["80", "0:80", "8080:99999", "x:80", "8080:80/sctp", "1.2.3:8080:80", ""] {
            let e = bad.parse::<Publish>().unwrap_err().to_string();
            assert!(e.starts_with(&format!("publish {bad:?}: ")), "{e}");
        }
    }

    #[test]
    fn a_port_in_use_is_refused_by_name() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let p: Publish = format!("127.0.0.1:{port}:80").parse().unwrap();
        let e = format!("{:#}", p.check_free().unwrap_err());
        assert!(e.starts_with(&format!("publish 127.0.0.1:{port}/tcp: cannot listen there: ")), "{e}");
    }
}
