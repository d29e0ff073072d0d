//! Issued client certificates: serial, owner, expiry and revocation.

use crate::db::{params, Db, Row};
use crate::{Change, Result, Store, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertRecord {
    pub serial: String,
    pub domain_id: String,
    pub client_id: String,
    /// Expiry, Unix seconds.
    pub expire: i64,
    /// Revocation time, Unix seconds.
    pub revoked_at: Option<i64>,
}

fn from_row(r: &Row) -> Result<CertRecord> {
    Ok(CertRecord {
        serial: r.get(0)?,
        domain_id: r.get(1)?,
        client_id: r.get(2)?,
        expire: r.get(3)?,
        revoked_at: r.get(4)?,
    })
}

const COLUMNS: &str = "serial, domain_id, client_id, expire, revoked_at";

impl Store {
    /// Records an issued certificate; the client must exist in the domain. The certificate is
    /// bound to this client record (its creation time): a client deleted and created again
    /// under the same id does not inherit it.
    pub fn insert_cert(&self, c: &CertRecord) -> Result<()> {
        self.write(|tx| {
            let created: Option<i64> = tx.query_opt(
                "SELECT created_at FROM clients WHERE domain_id = ?1 AND id = ?2",
                &params![c.domain_id, c.client_id],
                |r| r.get(0),
            )?;
            let Some(created) = created else {
                return Err(StoreError::not_found("client"));
            };
            tx.execute(
                "INSERT INTO certs (serial, domain_id, client_id, expire, created_at, client_created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &params![c.serial, c.domain_id, c.client_id, c.expire, crate::now_micros(), created],
            )
            .map_err(|e| crate::conflict(e, "serial already exists"))?;
            Ok(())
        })
    }

    pub fn cert(&self, domain: &str, serial: &str) -> Result<CertRecord> {
        let c = self.conn()?;
        c.query_opt(
            &format!("SELECT {COLUMNS} FROM certs WHERE domain_id = ?1 AND serial = ?2"),
            &params![domain, serial],
            from_row,
        )?
        .ok_or(StoreError::not_found("certificate"))
    }

    /// A certificate by serial alone (TLS login).
    pub fn cert_by_serial(&self, serial: &str) -> Result<Option<CertRecord>> {
        let c = self.conn()?;
        c.query_opt(
            &format!("SELECT {COLUMNS} FROM certs WHERE serial = ?1"),
            &params![serial],
            from_row,
        )
    }

    /// TLS login: the certificate and, when the client record it was issued for still exists,
    /// that client (a client re-created under the same id is another record: `None`).
    pub fn cert_login(&self, serial: &str) -> Result<Option<(CertRecord, Option<crate::ClientAuth>)>> {
        let c = self.conn()?;
        let Some((rec, bound)) = c.query_opt(
            &format!("SELECT {COLUMNS}, client_created_at FROM certs WHERE serial = ?1"),
            &params![serial],
            |r| Ok((from_row(r)?, r.get::<Option<i64>>(5)?)),
        )?
        else {
            return Ok(None);
        };
        let client = match bound {
            None => None,
            Some(created) => c.query_opt(
                "SELECT c.domain_id, c.id, c.secret, c.status, d.status FROM clients c JOIN domains d ON d.id = c.domain_id
                 WHERE c.domain_id = ?1 AND c.id = ?2 AND c.created_at = ?3",
                &params![rec.domain_id, rec.client_id, created],
                crate::clients::auth_row,
            )?,
        };
        Ok(Some((rec, client)))
    }

    pub fn client_certs(&self, domain: &str, client: &str) -> Result<Vec<CertRecord>> {
        let c = self.conn()?;
        c.query_map(
            &format!("SELECT {COLUMNS} FROM certs WHERE domain_id = ?1 AND client_id = ?2 ORDER BY created_at, serial"),
            &params![domain, client],
            from_row,
        )
    }

    /// Marks a certificate revoked (idempotent); returns the record.
    /// Revokes a certificate and announces `CertRevoked`.
    pub fn revoke_cert(&self, domain: &str, serial: &str, at: i64) -> Result<CertRecord> {
        self.write_announcing(|tx, changes| {
            let n = tx.execute(
                "UPDATE certs SET revoked_at = COALESCE(revoked_at, ?3) WHERE domain_id = ?1 AND serial = ?2",
                &params![domain, serial, at],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("certificate"));
            }
            let c = tx.query_row(
                &format!("SELECT {COLUMNS} FROM certs WHERE serial = ?1"),
                &params![serial],
                from_row,
            )?;
            changes.push(Change::CertRevoked {
                domain_id: c.domain_id.clone(),
                client_id: c.client_id.clone(),
                serial: c.serial.clone(),
            });
            Ok(c)
        })
    }

    /// Every revoked certificate (for the CRL).
    pub fn revoked_certs(&self) -> Result<Vec<CertRecord>> {
        let c = self.conn()?;
        c.query_map(
            &format!("SELECT {COLUMNS} FROM certs WHERE revoked_at IS NOT NULL ORDER BY revoked_at, serial"),
            &[],
            from_row,
        )
    }
}
