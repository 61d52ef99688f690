//! A container's network as its caller made it (podman's CNI, docker's libnetwork, a CNI
//! plugin under containerd): the VMM process sits in the network namespace the caller prepared
//! and this module carries that network into the guest, as Kata's default `tcfilter` model does:
//!
//! 1. find the caller's interface there (the first non-loopback Ethernet link, a veth as CNI's
//!    bridge plugin and docker make it), its MAC, MTU, IPv4 address and default gateway;
//! 2. open a tap device beside it (`IFF_TAP | IFF_NO_PI`, not persistent: it disappears with
//!    the VMM process, however that ends), with the same MTU, up;
//! 3. join the two with an ingress qdisc on each and a u32 match-all filter whose action is
//!    `mirred egress redirect` to the other (`tc filter add dev veth ingress ... action mirred
//!    egress redirect dev tap`, both ways): every frame the bridge sends the veth goes to the
//!    guest, every frame the guest sends leaves through the veth, and the namespace's own stack
//!    sees neither;
//! 4. give the guest's card the veth's MAC (so the bridge's neighbours and forwarding tables
//!    stay right) and the address and route through the kernel's `ip=` parameter.
//!
//! Netlink through the `rtnetlink` crate (on a current-thread tokio runtime that ends before
//! the VMM's threads are confined); the tap itself through TUNSETIFF, which netlink cannot do
//! (the kernel refuses to create tun/tap links over rtnetlink).
//!
//! Nothing is left behind: the tap goes with its descriptor (the VMM process), and `delete`
//! removes the ingress qdisc, and with it the filter, from the caller's interface
//! ([`detach`]); a stale one (a VMM process killed before its `delete`) is replaced when the
//! next container attaches in the same namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use anyhow::{anyhow, bail, Context};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// The tap's name in the container's network namespace.
pub const TAP_NAME: &str = "microvm0";
/// `_IOW('T', 202, int)` (linux/if_tun.h); the libc crate does not carry it.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// ETH_P_ALL, the protocol of a filter that sees every frame. The kernel takes it in network
/// byte order and the crate passes the number through as given (without the conversion a
/// filter shows as `protocol [768]` and matches nothing).
const ETH_P_ALL: u16 = 0x0003u16.to_be();

/// The caller's interface, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub address: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
}

impl Interface {
    /// The kernel's `ip=` parameter for the guest's eth0 (static, no autoconfiguration).
    pub fn kernel_ip_param(&self) -> Option<String> {
        let (address, prefix) = self.address?;
        let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0));
        let gateway = self.gateway.map(|g| g.to_string()).unwrap_or_default();
        Some(format!("ip={address}::{gateway}:{mask}::eth0:off"))
    }
}

/// The network carried into the guest: the tap (the card's backend) and the interface it
/// stands beside.
pub struct Attached {
    pub tap: File,
    pub interface: Interface,
}

/// Steps 1 to 3 in the current network namespace; `None` when it has no interface but
/// loopback (`--network none`).
pub fn attach() -> anyhow::Result<Option<Attached>> {
    with_netlink(|handle| async move {
        let Some(interface) = find_interface(&handle).await? else { return Ok(None) };
        let tap = open_tap(TAP_NAME)?;
        let tap_index = link_index(&handle, TAP_NAME).await?;
        join(&handle, &interface, tap_index)
            .await
            .with_context(|| format!("network: join {} and {TAP_NAME}", interface.name))?;
        Ok(Some(Attached { tap, interface }))
    })
}

/// Undoes step 3 on the caller's interface in the network namespace at `namespace` (the tap
/// is gone with the VMM process). A namespace that is gone already has nothing to undo.
pub fn detach(namespace: &std::path::Path) -> anyhow::Result<()> {
    let Ok(file) = File::open(namespace) else { return Ok(()) };
    // setns moves only the calling thread into the namespace: a thread of its own keeps this
    // process where it is.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("network namespace {}: setns", namespace.display()))?;
                with_netlink(|handle| async move {
                    if let Some(interface) = find_interface(&handle).await? {
                        remove_ingress(&handle, interface.index).await;
                    }
                    Ok(())
                })
            })
            .join()
            .map_err(|_| anyhow!("network: the detaching thread panicked"))?
    })
}

/// Runs `work` with a netlink handle in the calling thread's network namespace, on a
/// current-thread runtime that ends with it (no thread outlives the call).
fn with_netlink<T, F>(work: impl FnOnce(Handle) -> F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("network: start netlink")?;
    runtime.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection().context("network: netlink socket")?;
        tokio::spawn(connection);
        work(handle).await
    })
}

/// Removes `index`'s ingress qdisc and its filters, if it has one.
async fn remove_ingress(handle: &Handle, index: u32) {
    let Ok(index) = i32::try_from(index) else { return };
    let mut request = handle.qdisc().del(index);
    request.message_mut().header.parent = TcHandle::INGRESS;
    request.message_mut().header.handle = TcHandle::from(0xffff_0000);
    // None there (the usual case at attach) is not an error.
    let _ = request.execute().await;
}

/// Step 1.
async fn find_interface(handle: &Handle) -> anyhow::Result<Option<Interface>> {
    let links: Vec<LinkMessage> = handle.link().get().execute().try_collect().await.context("network: list links")?;
    let Some(link) = links.into_iter().find(is_callers_interface) else { return Ok(None) };
    let index = link.header.index;
    let mut interface = Interface { name: String::new(), index, mac: [0; 6], mtu: 1500, address: None, gateway: None };
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::IfName(name) => interface.name.clone_from(name),
            LinkAttribute::Mtu(mtu) => interface.mtu = *mtu,
            LinkAttribute::Address(mac) => {
                interface.mac = mac.as_slice().try_into().map_err(|_| anyhow!("network: link {index}: a {}-byte address", mac.len()))?
            }
            _ => {}
        }
    }
    let addresses: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .with_context(|| format!("network: addresses of {}", interface.name))?;
    interface.address = addresses.iter().find_map(|a| {
        a.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
            _ => None,
        })
    });
    let routes: Vec<_> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .context("network: routes")?;
    interface.gateway = routes
        .iter()
        .filter(|r| r.header.destination_prefix_length == 0)
        .filter(|r| r.attributes.contains(&RouteAttribute::Oif(index)))
        .find_map(|r| {
            r.attributes.iter().find_map(|attr| match attr {
                RouteAttribute::Gateway(RouteAddress::Inet(gateway)) => Some(*gateway),
                _ => None,
            })
        });
    Ok(Some(interface))
}

/// Not loopback, has an Ethernet address, and is not a tap we made.
fn is_callers_interface(link: &LinkMessage) -> bool {
    let ethernet = link.attributes.iter().any(|a| matches!(a, LinkAttribute::Address(mac) if mac.len() == 6));
    let ours = link.attributes.iter().any(|a| matches!(a, LinkAttribute::LinkInfo(info) if info.contains(&LinkInfo::Kind(InfoKind::Tun))));
    !link.header.flags.contains(LinkFlags::Loopback) && ethernet && !ours
}

async fn link_index(handle: &Handle, name: &str) -> anyhow::Result<u32> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let link = links.try_next().await.with_context(|| format!("network: find {name}"))?;
    link.map(|l| l.header.index).ok_or_else(|| anyhow!("network: {name} vanished"))
}

/// Steps 2 (MTU, up) and 3.
async fn join(handle: &Handle, interface: &Interface, tap: u32) -> anyhow::Result<()> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(tap).mtu(interface.mtu).up().build())
        .execute()
        .await
        .context("set the tap's MTU and bring it up")?;
    // What a container killed before its `delete` left on the interface.
    remove_ingress(handle, interface.index).await;
    for (from, to) in [(interface.index, tap), (tap, interface.index)] {
        let index = i32::try_from(from).context("interface index")?;
        handle.qdisc().add(index).ingress().execute().await.with_context(|| format!("ingress qdisc on link {from}"))?;
        handle
            .traffic_filter(index)
            .add()
            .ingress()
            .protocol(ETH_P_ALL)
            .redirect(to)
            .context("mirred filter")?
            .execute()
            .await
            .with_context(|| format!("redirect filter from link {from} to link {to}"))?;
    }
    Ok(())
}

/// Step 2: a tap named `name`, alive as long as the returned descriptor.
fn open_tap(name: &str) -> anyhow::Result<File> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("network: /dev/net/tun (is the tun module loaded? modprobe tun)")?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        bail!("network: tap name {name:?} too long");
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which lives across the call; the
    // descriptor is ours.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("network: create tap {name}"));
    }
    Ok(tun)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn the_kernel_parameter_carries_address_mask_and_gateway() {
        let mut interface = Interface {
            name: "eth0".into(),
            index: 2,
            mac: [0x8e, 0xcf, 0xeb, 0xe1, 0x70, 0x22],
            mtu: 1500,
            address: Some((Ipv4Addr::new(10, 88, 0, 2), 16)),
            gateway: Some(Ipv4Addr::new(10, 88, 0, 1)),
        };
        assert_eq!(interface.kernel_ip_param().unwrap(), "ip=10.88.0.2::10.88.0.1:255.255.0.0::eth0:off");
        interface.gateway = None;
        interface.address = Some((Ipv4Addr::new(192, 168, 7, 9), 24));
        assert_eq!(interface.kernel_ip_param().unwrap(), "ip=192.168.7.9:::255.255.255.0::eth0:off");
        interface.address = None;
        assert_eq!(interface.kernel_ip_param(), None);
    }
}
