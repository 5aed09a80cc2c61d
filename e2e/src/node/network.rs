//! The node's network on this machine: a Linux bridge for the Pods (the CNI `bridge` plugin
//! attaches them), the sysctls a node needs (saved first, restored by `cleanup.sh`), and an
//! egress guard: no packet from a Pod, nor one to a Service address that kube-proxy did not
//! translate, ever leaves the machine.

use std::path::Path;
use std::process::Command;

/// The bridge the CNI plugin attaches Pods to; its address is the node's.
pub const BRIDGE: &str = "keyway0";
/// The node's IP: the bridge's address, where the API server listens for Pods and the kubelet.
pub const NODE_IP: &str = "10.244.0.1";
/// The Pods' addresses (host-local IPAM on the bridge).
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The Services' cluster IPs.
pub const SERVICE_CIDR: &str = "10.96.0.0/24";
/// The `kubernetes` Service's IP: the first of [`SERVICE_CIDR`].
pub const API_SERVICE_IP: &str = "10.96.0.1";
/// The `kube-dns` Service's IP (the kubelet's `clusterDNS`).
pub const DNS_IP: &str = "10.96.0.10";

/// Sysctls the node sets (here, or in the kubelet and kube-proxy); saved before the first
/// change and restored by cleanup.sh.
const SAVED_SYSCTLS: [&str; 9] = [
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/ipv4/conf/all/route_localnet",
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Saves the sysctls, sets those a node needs, creates the bridge and the egress guard.
pub(crate) fn setup(state: &Path) -> anyhow::Result<()> {
    let saved = state.join("sysctl.saved");
    if !saved.exists() {
        let mut text = String::new();
        for key in SAVED_SYSCTLS {
            if let Ok(v) = std::fs::read_to_string(Path::new("/proc/sys").join(key)) {
                text.push_str(&format!("{} {}\n", key.replace('/', "."), v.trim()));
            }
        }
        std::fs::write(&saved, text)?;
    }
    // Routing between the bridge and the host, and Service NAT for traffic between two Pods
    // of the same bridge (which is bridged, not routed, without this).
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1")?;

    ip(&["link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE])?;
    ip(&["link", "set", BRIDGE, "up"])?;

    // After DNAT, a Pod's packet is for a Pod or for the node itself (INPUT, not FORWARD);
    // anything else would leave the machine: dropped.
    iptables(&["-t", "mangle", "-N", "KEYWAY-NODE-EGRESS"])?;
    iptables(&[
        "-t",
        "mangle",
        "-A",
        "KEYWAY-NODE-EGRESS",
        "-d",
        POD_CIDR,
        "-j",
        "RETURN",
    ])?;
    iptables(&["-t", "mangle", "-A", "KEYWAY-NODE-EGRESS", "-j", "DROP"])?;
    iptables(&[
        "-t",
        "mangle",
        "-I",
        "FORWARD",
        "-s",
        POD_CIDR,
        "-m",
        "comment",
        "--comment",
        "keyway e2e node: pods never reach beyond this machine",
        "-j",
        "KEYWAY-NODE-EGRESS",
    ])?;
    // A Service address kube-proxy has not translated (yet) would follow the default route.
    iptables(&["-t", "filter", "-N", "KEYWAY-NODE-SERVICES"])?;
    iptables(&[
        "-t",
        "filter",
        "-A",
        "KEYWAY-NODE-SERVICES",
        "-d",
        SERVICE_CIDR,
        "-j",
        "REJECT",
    ])?;
    iptables(&[
        "-t",
        "filter",
        "-I",
        "OUTPUT",
        "-m",
        "comment",
        "--comment",
        "keyway e2e node: untranslated service addresses stay here",
        "-j",
        "KEYWAY-NODE-SERVICES",
    ])?;
    iptables(&[
        "-t",
        "filter",
        "-I",
        "FORWARD",
        "-m",
        "comment",
        "--comment",
        "keyway e2e node: untranslated service addresses stay here",
        "-j",
        "KEYWAY-NODE-SERVICES",
    ])?;
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

fn iptables(args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["-w"];
    all.extend_from_slice(args);
    run("iptables", &all)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
