//! The node cluster's certificates, made with `openssl`: one CA that signs the API server's
//! serving certificate (trusted by Pods through `kube-root-ca.crt`, so it names the
//! `kubernetes` Service's IP and DNS names) and the API server's client certificate for the
//! kubelet (which trusts the CA for client authentication).

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone)]
pub(crate) struct Pki {
    pub ca_cert: PathBuf,
    pub apiserver_cert: PathBuf,
    pub apiserver_key: PathBuf,
    pub kubelet_client_cert: PathBuf,
    pub kubelet_client_key: PathBuf,
}

/// Writes the certificates into `dir`. `ips` and `dns` are the API server certificate's SANs.
pub(crate) fn create(dir: &Path, ips: &[&str], dns: &[&str]) -> anyhow::Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let p = |name: &str| dir.join(name);
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&p("ca.key")),
        "-out",
        s(&p("ca.crt")),
        "-days",
        "2",
        "-subj",
        "/CN=keyway-e2e-node-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ])?;
    let mut san: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
    san.extend(dns.iter().map(|d| format!("DNS:{d}")));
    leaf(
        dir,
        "apiserver",
        "/CN=kube-apiserver",
        &format!("subjectAltName={}", san.join(",")),
        "serverAuth",
    )?;
    leaf(
        dir,
        "apiserver-kubelet-client",
        "/O=system:masters/CN=kube-apiserver-kubelet-client",
        "basicConstraints=CA:FALSE",
        "clientAuth",
    )?;
    Ok(Pki {
        ca_cert: p("ca.crt"),
        apiserver_cert: p("apiserver.crt"),
        apiserver_key: p("apiserver.key"),
        kubelet_client_cert: p("apiserver-kubelet-client.crt"),
        kubelet_client_key: p("apiserver-kubelet-client.key"),
    })
}

fn leaf(dir: &Path, name: &str, subject: &str, ext: &str, usage: &str) -> anyhow::Result<()> {
    let p = |suffix: &str| dir.join(format!("{name}.{suffix}"));
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        s(&p("key")),
        "-out",
        s(&p("csr")),
        "-subj",
        subject,
    ])?;
    let extfile = p("ext");
    std::fs::write(
        &extfile,
        format!(
            "{ext}\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
        ),
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        s(&p("csr")),
        "-CA",
        s(&dir.join("ca.crt")),
        "-CAkey",
        s(&dir.join("ca.key")),
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        s(&p("crt")),
        "-extfile",
        s(&extfile),
    ])
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {} failed: {}",
        args.first().copied().unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
