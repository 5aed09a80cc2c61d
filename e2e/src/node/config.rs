//! The node components' configuration files, as text.

use super::network::{DNS_IP, NODE_IP, POD_CIDR};
use std::path::Path;

/// The node's name (the kubelet's `--hostname-override`).
pub const NODE_NAME: &str = "keyway-node";
/// The pod sandbox image (containerd's `sandbox_image`), built from the pause binary.
pub const PAUSE_IMAGE: &str = "keyway.local/pause:dev";
/// The kubelet's cgroup root: everything the node runs is under `/keyway-node` in every
/// hierarchy, which is how cleanup.sh finds what is left.
pub const CGROUP_ROOT: &str = "/keyway-node";

fn d(p: &Path) -> String {
    p.display().to_string()
}

/// containerd with its own root, state and socket under the node's run directory, the CRI
/// plugin on the Debian runc and CNI plugins, network namespaces kept under its state dir.
pub(crate) fn containerd(run: &Path) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{sock}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_unprivileged_ports = false
  # Root here has no CAP_SYS_RESOURCE (a sandboxed VM): lowering a process's oom_score_adj
  # below containerd's fails ("failed to update /proc/self/oom_score_adj: Permission
  # denied" from runc), so containers get at least containerd's.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{runc_root}"
        SystemdCgroup = false
"#,
        root = d(&run.join("containerd")),
        state = d(&run.join("containerd-state")),
        sock = d(&containerd_socket(run)),
        opt = d(&run.join("containerd-opt")),
        cni_conf = d(&run.join("cni/net.d")),
        runc_root = d(&run.join("runc")),
    )
}

/// containerd's socket.
pub(crate) fn containerd_socket(run: &Path) -> std::path::PathBuf {
    run.join("containerd.sock")
}

/// A bridge network with host-local addresses; no masquerade (Pods talk to the node and to
/// each other only), hairpin so a Pod reaches itself through its Service.
pub(crate) fn cni(run: &Path) -> String {
    format!(
        r#"{{
  "cniVersion": "0.4.0",
  "name": "keyway",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{bridge}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "ranges": [[{{"subnet": "{POD_CIDR}", "gateway": "{NODE_IP}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}],
        "dataDir": "{ipam}"
      }}
    }},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
  ]
}}
"#,
        bridge = super::network::BRIDGE,
        ipam = d(&run.join("cni/ipam")),
    )
}

/// The kubelet for this machine: cgroupfs driver (cgroup v1 here, no systemd), swap allowed,
/// its ports on free numbers, API server clients authenticated by the node CA and authorized
/// with SubjectAccessReviews, no eviction on a shared development disk, the cluster DNS.
pub(crate) struct Kubelet<'a> {
    pub run: &'a Path,
    pub ca_cert: &'a Path,
    pub resolv_conf: &'a Path,
    pub port: u16,
    pub healthz_port: u16,
}

impl Kubelet<'_> {
    pub(crate) fn config(&self) -> String {
        format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: {CGROUP_ROOT}
failSwapOn: false
address: {NODE_IP}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: "{ca}"}}
authorization:
  mode: Webhook
clusterDNS: ["{DNS_IP}"]
clusterDomain: cluster.local
resolvConf: "{resolv}"
podLogsDir: "{pod_logs}"
containerRuntimeEndpoint: "unix://{sock}"
imageServiceEndpoint: "unix://{sock}"
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Absolute floors: the disk is shared with builds of other work, so a percentage of it
# would evict test Pods whenever someone else fills it.
evictionHard: {{"memory.available": "100Mi", "nodefs.available": "64Mi", "imagefs.available": "64Mi", "nodefs.inodesFree": "1%", "imagefs.inodesFree": "1%"}}
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
fileCheckFrequency: 10s
rotateCertificates: false
serverTLSBootstrap: false
shutdownGracePeriod: 0s
localStorageCapacityIsolation: true
"#,
            port = self.port,
            healthz = self.healthz_port,
            ca = d(self.ca_cert),
            resolv = d(self.resolv_conf),
            sock = d(&containerd_socket(self.run)),
            pod_logs = d(&self.run.join("pod-logs")),
        )
    }
}

/// kube-proxy in iptables mode; it changes no machine-wide conntrack sysctl and serves
/// NodePorts on the node IP only (no `route_localnet`).
pub(crate) fn kube_proxy(kubeconfig: &Path, healthz_port: u16, metrics_port: u16) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: "{kc}"
mode: iptables
clusterCIDR: {POD_CIDR}
hostnameOverride: {NODE_NAME}
healthzBindAddress: 127.0.0.1:{healthz_port}
metricsBindAddress: 127.0.0.1:{metrics_port}
nodePortAddresses: ["{NODE_IP}/32"]
iptables:
  localhostNodePorts: false
  syncPeriod: 30s
  minSyncPeriod: 0s
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#,
        kc = d(kubeconfig),
    )
}

/// A kubeconfig that authenticates with a static token and verifies the node CA.
pub(crate) fn kubeconfig(server: &str, ca_cert: &Path, token: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: node
  cluster:
    server: {server}
    certificate-authority: "{ca}"
users:
- name: component
  user:
    token: {token}
contexts:
- name: node
  context: {{cluster: node, user: component}}
current-context: node
"#,
        ca = d(ca_cert),
    )
}

/// CoreDNS as a cluster runs it: a Deployment in kube-system behind the `kube-dns` Service,
/// answering for `cluster.local` from the API server. It forwards nothing: names outside the
/// cluster fail here instead of leaving the machine.
pub(crate) fn coredns() -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: coredns, namespace: kube-system}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "system:coredns"}}
rules:
- {{apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}}
- {{apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "system:coredns"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}}
subjects: [{{kind: ServiceAccount, name: coredns, namespace: kube-system}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: coredns, namespace: kube-system}}
data:
  Corefile: |
    .:1053 {{
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {{
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 5
        }}
        loadbalance
    }}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: coredns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{k8s-app: kube-dns}}}}
  template:
    metadata: {{labels: {{k8s-app: kube-dns}}}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      containers:
      - name: coredns
        image: keyway.local/coredns:dev
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {{name: dns, containerPort: 1053, protocol: UDP}}
        - {{name: dns-tcp, containerPort: 1053, protocol: TCP}}
        readinessProbe: {{httpGet: {{path: /ready, port: 8181}}, periodSeconds: 2}}
        livenessProbe: {{httpGet: {{path: /health, port: 8080}}, periodSeconds: 10}}
        resources: {{requests: {{cpu: 10m, memory: 32Mi}}, limits: {{memory: 128Mi}}}}
        securityContext:
          runAsNonRoot: true
          runAsUser: 65532
          readOnlyRootFilesystem: true
          allowPrivilegeEscalation: false
          capabilities: {{drop: [ALL]}}
        volumeMounts: [{{name: config, mountPath: /etc/coredns, readOnly: true}}]
      volumes: [{{name: config, configMap: {{name: coredns}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  clusterIP: {DNS_IP}
  selector: {{k8s-app: kube-dns}}
  ports:
  - {{name: dns, port: 53, targetPort: 1053, protocol: UDP}}
  - {{name: dns-tcp, port: 53, targetPort: 1053, protocol: TCP}}
"#
    )
}
