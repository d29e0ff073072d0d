//! `certs`: everything about keys and certificates. The platform CA (generated on first start
//! into the data directory, key file mode 0600, or loaded from configured files), the server
//! certificate for TLS listeners, client certificates for mTLS device login, the CRL, and the
//! rustls server configuration.
//!
//! Invariants: client private keys are returned once and never stored; TLS is 1.2 and 1.3 only;
//! no OpenSSL.

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("io on {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, CertError>;

/// The rustls server configuration type, re-exported for callers.
pub type RustlsServerConfig = rustls::ServerConfig;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |err| CertError::Io {
        path: path.to_path_buf(),
        err,
    }
}

fn write_private(path: &Path, data: &str) -> Result<()> {
    std::fs::write(path, data).map_err(io(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    }
    Ok(())
}

/// A client certificate just issued. The key is in here once and nowhere else.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// Lower-case hex serial.
    pub serial: String,
    pub expire: OffsetDateTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("serial", &self.serial)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The platform certificate authority.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("key", &"<redacted>").finish_non_exhaustive()
    }
}

fn random_serial() -> (SerialNumber, String) {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[0] &= 0x7f; // positive INTEGER
    if b[0] == 0 {
        b[0] = 1; // no leading zero byte, so the hex form is canonical
    }
    let hex = b.iter().map(|x| format!("{x:02x}")).collect();
    (SerialNumber::from_slice(&b), hex)
}

impl Ca {
    /// Loads `ca.crt`/`ca.key` from `dir` (or the configured files), creating them on first
    /// start.
    pub fn load_or_create(dir: &Path, configured: Option<(&Path, &Path)>) -> Result<Ca> {
        let (cert_path, key_path) = match configured {
            Some((c, k)) => (c.to_path_buf(), k.to_path_buf()),
            None => (dir.join("ca.crt"), dir.join("ca.key")),
        };
        if cert_path.exists() && key_path.exists() {
            let pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            return Ca::from_pem(&pem, &key_pem);
        }
        if configured.is_some() {
            return Err(CertError::Invalid(format!(
                "configured CA files {} / {} not found",
                cert_path.display(),
                key_path.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ca = Ca::generate()?;
        write_private(&key_path, &ca.key_pem())?;
        std::fs::write(&cert_path, &ca.pem).map_err(io(&cert_path))?;
        tracing::info!(path = %cert_path.display(), "generated the platform CA");
        Ok(ca)
    }

    /// A CA from its certificate and key (PEM).
    pub fn from_pem(pem: &str, key_pem: &str) -> Result<Ca> {
        let key = KeyPair::from_pem(key_pem)?;
        // Re-create an issuer with the same name and key: what it signs verifies against
        // the certificate as distributed.
        let params = CertificateParams::from_ca_cert_pem(pem)?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert,
            key,
            pem: pem.to_string(),
        })
    }

    /// A new CA (kept nowhere yet).
    pub fn generate() -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Fluxgate CA");
        dn.push(DnType::OrganizationName, "Fluxgate");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::days(3650);
        params.serial_number = Some(random_serial().0);
        let cert = params.self_signed(&key)?;
        let pem = cert.pem();
        Ok(Ca { cert, key, pem })
    }

    /// The CA's private key (PEM), for keeping it where the cluster's nodes share it.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The CA certificate as distributed (PEM).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate for `hosts` (DNS names or IP addresses), valid one year.
    pub fn issue_server(&self, hosts: &[String]) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            hosts.first().cloned().unwrap_or_else(|| "fluxgate".into()),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::days(365);
        params.serial_number = Some(random_serial().0);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client certificate with CN = `client_id`, valid from now for `ttl` (or, for tests of
    /// expiry, over an explicit window).
    pub fn issue_client(
        &self,
        client_id: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued> {
        if not_after <= not_before {
            return Err(CertError::Invalid("certificate would expire before it starts".into()));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, client_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before;
        params.not_after = not_after;
        let (serial, hex) = random_serial();
        params.serial_number = Some(serial);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: hex,
            expire: not_after,
        })
    }

    /// The certificate revocation list for these (hex serial, revocation time) pairs.
    pub fn crl(&self, revoked: &[(String, OffsetDateTime)], number: u64) -> Result<String> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(number.max(1)),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .filter_map(|(hex, at)| {
                    let bytes = (0..hex.len() / 2)
                        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                        .collect::<Option<Vec<u8>>>()?;
                    Some(RevokedCertParams {
                        serial_number: SerialNumber::from_slice(&bytes),
                        revocation_time: *at,
                        reason_code: None,
                        invalidity_date: None,
                    })
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.cert, &self.key)?.pem()?)
    }

    /// A rustls server configuration (TLS 1.2 and 1.3) that asks for, but does not require, a
    /// client certificate signed by this CA.
    pub fn server_config(&self, cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| CertError::Invalid(format!("server certificate: {e}")))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| CertError::Invalid(format!("server key: {e}")))?
            .ok_or_else(|| CertError::Invalid("no private key in the server key file".into()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut self.pem.as_bytes()) {
            let c = c.map_err(|e| CertError::Invalid(format!("CA certificate: {e}")))?;
            roots.add(c)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| CertError::Invalid(format!("client verifier: {e}")))?;
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?;
        Ok(Arc::new(cfg))
    }
}

/// The serial number (lower-case hex, no leading zero bytes) of a DER certificate.
pub fn serial_of(der: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial INTEGER, ... } }
    fn header(b: &[u8]) -> Option<(u8, usize, usize)> {
        let tag = *b.first()?;
        let l0 = *b.get(1)?;
        if l0 < 0x80 {
            return Some((tag, 2, l0 as usize));
        }
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        Some((tag, 2 + n, len))
    }
    let (t, h, _) = header(der)?;
    if t != 0x30 {
        return None;
    }
    let tbs = der.get(h..)?;
    let (t, h, _) = header(tbs)?;
    if t != 0x30 {
        return None;
    }
    let mut rest = tbs.get(h..)?;
    let (t, h, l) = header(rest)?;
    if t == 0xa0 {
        rest = rest.get(h + l..)?;
    }
    let (t, h, l) = header(rest)?;
    if t != 0x02 {
        return None;
    }
    let mut serial = rest.get(h..h + l)?;
    while serial.len() > 1 && serial[0] == 0 {
        serial = &serial[1..];
    }
    Some(serial.iter().map(|x| format!("{x:02x}")).collect())
}

/// Parses a TTL like "8760h", "30d", "15m", "3600s" or "3600" (seconds).
pub fn parse_ttl(s: &str) -> Option<time::Duration> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1),
        'm' => (&s[..s.len() - 1], 60),
        'h' => (&s[..s.len() - 1], 3600),
        'd' => (&s[..s.len() - 1], 86400),
        _ => (s, 1),
    };
    let v: i64 = num.parse().ok()?;
    (v > 0).then(|| time::Duration::seconds(v.saturating_mul(mult)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_persists_and_issues_verifiable_client_certs() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = Ca::load_or_create(dir.path(), None).expect("ca");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("ca.key"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = Ca::load_or_create(dir.path(), None).expect("reload");
        assert_eq!(ca.pem(), again.pem(), "the same CA after a restart");
        let now = OffsetDateTime::now_utc();
        let issued = again
            .issue_client("dev-1", now, now + time::Duration::hours(1))
            .expect("issue");
        let der = rustls_pemfile::certs(&mut issued.cert_pem.as_bytes())
            .next()
            .expect("one")
            .expect("der");
        assert_eq!(serial_of(&der).as_deref(), Some(issued.serial.as_str()));
        // A server config accepting certificates of this CA builds.
        let (c, k) = again
            .issue_server(&["localhost".into(), "127.0.0.1".into()])
            .expect("server");
        again.server_config(&c, &k).expect("config");
        assert!(again
            .crl(&[(issued.serial.clone(), now)], 1)
            .expect("crl")
            .contains("BEGIN X509 CRL"));
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("2h"), Some(time::Duration::hours(2)));
        assert_eq!(parse_ttl("30"), Some(time::Duration::seconds(30)));
        assert_eq!(parse_ttl("-1h"), None);
        assert_eq!(parse_ttl("soon"), None);
    }
}
