//! The cluster's certificates and the rustls configurations built from them.
//!
//! One cluster CA signs one certificate per node. A node certificate names its node in the
//! subject alternative name `node-<id>` (plus `localhost` and the node's IP addresses) and serves
//! for both server and client authentication, so the same identity accepts and dials. This module
//! writes and loads those files and checks a certificate against a node id; it holds no sockets.
//!
//! Everything uses the aws-lc-rs provider, passed to each builder explicitly: no process-global
//! provider is installed here.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::RootCertStore;
use rustls::client::{Resumption, verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use super::TransportError;
use crate::config::NodeId;

/// The one application protocol a node speaks.
pub(super) const ALPN: &[u8] = b"helixflow/1";

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const CA_YEARS: i32 = 20;
const NODE_YEARS: i32 = 10;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The DNS name a node's certificate must be valid for; the TLS server name dialled.
pub(super) fn node_name(node: NodeId) -> String {
    node.to_string()
}

fn node_cert_file(node: NodeId) -> String {
    format!("{}.pem", node_name(node))
}

fn node_key_file(node: NodeId) -> String {
    format!("{}.key", node_name(node))
}

/// Writes a new cluster CA and one certificate per node into `dir`: `ca.pem`, `ca.key`,
/// `node-<id>.pem`, `node-<id>.key` (keys mode 0600). Each node certificate has the common name
/// "helixflow node <id>", the DNS names `node-<id>` and `localhost` and the given IP addresses,
/// is signed by the CA and serves for both server and client authentication.
///
/// Refuses to overwrite an existing `ca.key`: a new CA would orphan every certificate it signed.
pub fn init_certs(
    dir: &Path,
    cluster: &str,
    nodes: &[(NodeId, Vec<IpAddr>)],
) -> Result<(), TransportError> {
    fs::create_dir_all(dir).map_err(|source| TransportError::Io {
        file: dir.to_owned(),
        source,
    })?;
    let ca_key_path = dir.join(CA_KEY);
    if ca_key_path.exists() {
        return Err(TransportError::Config {
            file: ca_key_path,
            why: "already exists; refusing to overwrite the cluster CA (issue more node \
                  certificates with it, or remove it to start a new cluster)"
                .to_owned(),
        });
    }
    for (i, (node, _)) in nodes.iter().enumerate() {
        if nodes[..i].iter().any(|(other, _)| other == node) {
            return Err(TransportError::Config {
                file: dir.join(node_cert_file(*node)),
                why: format!("{node} is listed twice"),
            });
        }
    }

    let ca_key = KeyPair::generate()?;
    let ca_params = ca_params(ca_subject(cluster));
    let ca_cert = ca_params.self_signed(&ca_key)?;
    // `create_new` makes the refusal above hold even against a concurrent init.
    write_file(
        &ca_key_path,
        ca_key.serialize_pem().as_bytes(),
        FileKind::Secret,
        Existing::Refuse,
    )?;
    write_file(
        &dir.join(CA_CERT),
        ca_cert.pem().as_bytes(),
        FileKind::Public,
        Existing::Replace,
    )?;
    let issuer = Issuer::new(ca_params, ca_key);
    for (node, ips) in nodes {
        let (cert, key) = node_cert(&issuer, *node, ips)?;
        write_node_files(dir, *node, &cert, &key, Existing::Replace)?;
    }
    Ok(())
}

/// Issues one more node certificate with the existing CA in `dir`, for a node joining later.
/// Refuses to overwrite an existing `node-<id>.key`.
pub fn issue_node_cert(dir: &Path, node: NodeId, ips: &[IpAddr]) -> Result<(), TransportError> {
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    let key_path = dir.join(node_key_file(node));
    if key_path.exists() {
        return Err(TransportError::Config {
            file: key_path,
            why: "already exists; remove it first to issue a new certificate".to_owned(),
        });
    }
    let ca_der = read_cert(&ca_cert_path)?;
    let ca_key_pem = read_text(&ca_key_path)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| TransportError::Config {
        file: ca_key_path.clone(),
        why: format!("not a usable private key: {e}"),
    })?;
    // The issuer name of the new certificate must equal the CA's subject byte for byte, so it is
    // read back from the CA certificate rather than rebuilt from the cluster name.
    let subject = subject_of(&ca_der).ok_or_else(|| TransportError::Config {
        file: ca_cert_path.clone(),
        why: "subject name is not one this tool writes".to_owned(),
    })?;
    let issuer = Issuer::new(ca_params(subject), ca_key);
    let (cert, key) = node_cert(&issuer, node, ips)?;

    // Proves ca.key belongs to ca.pem and the issuer name matched, before anything is written.
    let cert_der = CertificateDer::from(cert.der().to_vec());
    check_signed_by(&cert_der, &ca_der).map_err(|e| TransportError::Config {
        file: ca_key_path,
        why: format!("a certificate signed with it does not verify against {CA_CERT}: {e}"),
    })?;
    write_node_files(dir, node, &cert, &key, Existing::Refuse)
}

fn ca_subject(cluster: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "helixflow");
    dn.push(DnType::CommonName, format!("helixflow {cluster} CA"));
    dn
}

fn ca_params(subject: DistinguishedName) -> CertificateParams {
    let year = current_year();
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    // Constrained to end-entity certificates: a node key can never mint an intermediate CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + CA_YEARS, 1, 1);
    params
}

fn node_cert(
    issuer: &Issuer<'_, KeyPair>,
    node: NodeId,
    ips: &[IpAddr],
) -> Result<(rcgen::Certificate, KeyPair), TransportError> {
    let year = current_year();
    let mut params = CertificateParams::new(vec![node_name(node), "localhost".to_owned()])?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "helixflow");
    dn.push(DnType::CommonName, format!("helixflow node {}", node.0));
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + NODE_YEARS, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert, key))
}

fn current_year() -> i32 {
    const SECONDS_PER_YEAR: u64 = 31_556_952; // 365.2425 days
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // A u64 of seconds divided by a year fits an i32 for the next two billion years.
    1970 + i32::try_from(seconds / SECONDS_PER_YEAR).unwrap_or(0)
}

fn write_node_files(
    dir: &Path,
    node: NodeId,
    cert: &rcgen::Certificate,
    key: &KeyPair,
    existing: Existing,
) -> Result<(), TransportError> {
    write_file(
        &dir.join(node_key_file(node)),
        key.serialize_pem().as_bytes(),
        FileKind::Secret,
        existing,
    )?;
    write_file(
        &dir.join(node_cert_file(node)),
        cert.pem().as_bytes(),
        FileKind::Public,
        Existing::Replace,
    )
}

/// Whether a file holds a private key (mode 0600) or may be read by anyone.
#[derive(Clone, Copy)]
enum FileKind {
    Secret,
    Public,
}

/// What to do when the file is already there.
#[derive(Clone, Copy)]
enum Existing {
    Refuse,
    Replace,
}

fn write_file(
    path: &Path,
    contents: &[u8],
    kind: FileKind,
    existing: Existing,
) -> Result<(), TransportError> {
    let io = |source| TransportError::Io {
        file: path.to_owned(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true);
    match existing {
        Existing::Refuse => options.create_new(true),
        Existing::Replace => options.create(true).truncate(true),
    };
    #[cfg(unix)]
    if let FileKind::Secret = kind {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == ErrorKind::AlreadyExists {
            TransportError::Config {
                file: path.to_owned(),
                why: "already exists; refusing to overwrite it".to_owned(),
            }
        } else {
            io(e)
        }
    })?;
    // `mode` applies only on creation; a replaced key file keeps no wider permissions.
    #[cfg(unix)]
    if let FileKind::Secret = kind {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}

fn read_text(path: &Path) -> Result<String, TransportError> {
    fs::read_to_string(path).map_err(|source| TransportError::Io {
        file: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem = read_text(path)?;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::Config {
            file: path.to_owned(),
            why: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TransportError::Config {
            file: path.to_owned(),
            why: "holds no certificate".to_owned(),
        });
    }
    Ok(certs)
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, TransportError> {
    let mut certs = read_certs(path)?;
    // `read_certs` returns at least one certificate.
    Ok(certs.swap_remove(0))
}

/// What a node presents and trusts: the cluster CA and its own certificate and key.
pub struct NodeIdentity {
    pub(super) node: NodeId,
    pub(super) ca: CertificateDer<'static>,
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node", &self.node)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Loads `ca.pem`, `node-<id>.pem` and `node-<id>.key` from `dir`, and checks that the key
    /// matches the certificate, that the certificate is signed by the CA and that it is valid
    /// for `node-<id>`. Errors name the offending file.
    pub fn load(dir: &Path, node: NodeId) -> Result<NodeIdentity, TransportError> {
        let ca_path = dir.join(CA_CERT);
        let cert_path = dir.join(node_cert_file(node));
        let key_path = dir.join(node_key_file(node));
        let ca = read_cert(&ca_path)?;
        let chain = read_certs(&cert_path)?;
        let key_pem = read_text(&key_path)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            TransportError::Config {
                file: key_path.clone(),
                why: format!("not a PEM private key: {e}"),
            }
        })?;

        roots(&ca).map_err(|e| TransportError::Config {
            file: ca_path.clone(),
            why: format!("not a usable CA certificate: {e}"),
        })?;
        let leaf = &chain[0]; // `read_certs` returns at least one certificate.
        ParsedCertificate::try_from(leaf).map_err(|e| TransportError::Config {
            file: cert_path.clone(),
            why: format!("not a valid certificate: {e}"),
        })?;
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(|e| {
            TransportError::Config {
                file: key_path,
                why: format!("does not fit {}: {e}", node_cert_file(node)),
            }
        })?;
        check_signed_by(leaf, &ca).map_err(|e| TransportError::Config {
            file: cert_path.clone(),
            why: format!("not signed by the CA in {CA_CERT}: {e}"),
        })?;
        check_node_name(leaf, node).map_err(|e| TransportError::Config {
            file: cert_path,
            why: format!("not valid for {node}: {e}"),
        })?;
        Ok(NodeIdentity {
            node,
            ca,
            chain,
            key,
        })
    }

    /// The node this identity belongs to.
    pub fn node(&self) -> NodeId {
        self.node
    }
}

fn roots(ca: &CertificateDer<'static>) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(roots)
}

fn check_signed_by(
    cert: &CertificateDer<'_>,
    ca: &CertificateDer<'static>,
) -> Result<(), rustls::Error> {
    let parsed = ParsedCertificate::try_from(cert)?;
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots(ca)?,
        &[],
        UnixTime::now(),
        provider().signature_verification_algorithms.all,
    )
}

/// Checks that `cert` (already verified against the CA) is valid for `node-<id>`.
pub(super) fn check_node_name(
    cert: &CertificateDer<'_>,
    node: NodeId,
) -> Result<(), rustls::Error> {
    let parsed = ParsedCertificate::try_from(cert)?;
    let name = ServerName::try_from(node_name(node))
        .map_err(|e| rustls::Error::General(format!("{node} is not a DNS name: {e}")))?;
    verify_server_name(&parsed, &name)
}

/// TLS for accepting: TLS 1.3 only, client certificates required and verified against the CA.
pub(super) fn server_config(
    identity: &NodeIdentity,
) -> Result<rustls::ServerConfig, TransportError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&identity.ca)?),
        provider.clone(),
    )
    .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: every connection presents and checks certificates in full, and the
    // identity check after the handshake always sees the peer's own certificate.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// TLS for dialling: TLS 1.3 only, the server verified against the CA, this node's
/// certificate presented.
pub(super) fn client_config(
    identity: &NodeIdentity,
) -> Result<rustls::ClientConfig, TransportError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&identity.ca)?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// The subject name of a DER certificate, for the attribute and string types [`init_certs`]
/// writes (one attribute per RDN). rcgen reads certificates only with its `x509-parser` feature,
/// which this crate does not enable; these few lines of DER walking stand in for it.
fn subject_of(der: &[u8]) -> Option<DistinguishedName> {
    let (certificate, _) = der_element(der, 0x30)?;
    let (tbs, _) = der_element(certificate, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        (_, rest) = der_element(rest, 0xa0)?; // version
    }
    (_, rest) = der_element(rest, 0x02)?; // serial number
    (_, rest) = der_element(rest, 0x30)?; // signature algorithm
    (_, rest) = der_element(rest, 0x30)?; // issuer
    (_, rest) = der_element(rest, 0x30)?; // validity
    let (mut subject, _) = der_element(rest, 0x30)?;
    let mut dn = DistinguishedName::new();
    while !subject.is_empty() {
        let (rdn, after) = der_element(subject, 0x31)?;
        subject = after;
        let (attribute, more) = der_element(rdn, 0x30)?;
        if !more.is_empty() {
            return None;
        }
        let (oid, value) = der_element(attribute, 0x06)?;
        let tag = *value.first()?;
        let (value, _) = der_element(value, tag)?;
        let kind = match oid {
            [0x55, 0x04, 0x03] => DnType::CommonName,
            [0x55, 0x04, 0x0a] => DnType::OrganizationName,
            [0x55, 0x04, 0x0b] => DnType::OrganizationalUnitName,
            _ => return None,
        };
        let text = std::str::from_utf8(value).ok()?;
        let value = match tag {
            0x0c => DnValue::Utf8String(text.to_owned()),
            0x13 => DnValue::PrintableString(text.try_into().ok()?),
            _ => return None,
        };
        dn.push(kind, value);
    }
    Some(dn)
}

/// Splits one DER element with the given tag off `input`: (its contents, what follows).
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&head, rest) = rest.split_first()?;
    let (len, rest) = if head < 0x80 {
        (usize::from(head), rest)
    } else {
        let count = usize::from(head & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(count)?;
        let len = bytes
            .iter()
            .fold(0usize, |len, byte| len << 8 | usize::from(*byte));
        (len, rest)
    };
    rest.split_at_checked(len)
}

/// Where an identity's files would be, for messages.
#[cfg(test)]
pub(super) fn node_files(dir: &Path, node: NodeId) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        dir.join(node_cert_file(node)),
        dir.join(node_key_file(node)),
    )
}
