//! MQTT retained messages: one row per topic, replaced or deleted as the broker says.

use crate::db::{params, Db};
use crate::{Result, Store};

/// A retained message as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedRow {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub props: Vec<u8>,
    pub expires_at_ms: u64,
}

impl Store {
    pub fn retained_all(&self) -> Result<Vec<RetainedRow>> {
        self.conn()?.query_map(
            "SELECT topic, payload, qos, props, expires_at_ms FROM retained ORDER BY topic",
            &[],
            |r| {
                Ok(RetainedRow {
                    topic: r.get(0)?,
                    payload: r.get(1)?,
                    qos: r.get(2)?,
                    props: r.get(3)?,
                    expires_at_ms: r.get::<i64>(4)?.max(0) as u64,
                })
            },
        )
    }

    /// Applies puts (`Some`) and deletes (`None`) in order, in one transaction.
    pub fn retained_apply(&self, ops: &[(String, Option<RetainedRow>)]) -> Result<()> {
        self.write(|tx| {
            for (topic, row) in ops {
                match row {
                    Some(r) => {
                        tx.execute(
                            "INSERT INTO retained(topic, payload, qos, props, expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                             ON CONFLICT(topic) DO UPDATE SET payload = excluded.payload, qos = excluded.qos,
                             props = excluded.props, expires_at_ms = excluded.expires_at_ms",
                            &params![topic, r.payload, r.qos, r.props, r.expires_at_ms as i64],
                        )?;
                    }
                    None => {
                        tx.execute("DELETE FROM retained WHERE topic = ?1", &params![topic])?;
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_replace_delete_in_order() {
        let (_d, s) = crate::testutil::store();
        let row = |p: &[u8]| RetainedRow {
            topic: "a/b".into(),
            payload: p.to_vec(),
            qos: 1,
            props: vec![1, 1],
            expires_at_ms: 0,
        };
        s.retained_apply(&[("a/b".into(), Some(row(b"1"))), ("a/b".into(), Some(row(b"2")))])
            .expect("apply");
        assert_eq!(s.retained_all().expect("all"), vec![row(b"2")]);
        s.retained_apply(&[("a/b".into(), None)]).expect("delete");
        assert!(s.retained_all().expect("all").is_empty());
    }
}
