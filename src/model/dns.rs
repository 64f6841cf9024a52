//! DNS records: names registered for containers (Weave's `PUT /name/{id}/{ip}`),
//! stored one row per record and published to the DNS server ([`crate::dns::Dns`])
//! before the write that changed them answers.

use super::schema::{Record, Row};
use super::txn::Change;
use super::{Error, Model, State};
use crate::names::{normalize_fqdn, valid_container_id};
use crate::store::Txn;
use std::net::IpAddr;

fn fqdn(name: &str) -> Result<String, Error> {
    normalize_fqdn(name).ok_or_else(|| Error::BadName(name.to_string()))
}

impl Model {
    /// Registers `fqdn` for `container` at `ip`.
    pub fn put_record(&self, container: &str, ip: IpAddr, name: &str) -> Result<(), Error> {
        if !valid_container_id(container) {
            return Err(Error::BadContainerId);
        }
        let r = Record {
            container: container.to_string(),
            ip,
            fqdn: fqdn(name)?,
        };
        self.write(|st| {
            if st.records.contains(&r) {
                return Ok(Change::guarded((), Row::Record(r.clone()).stored()).names());
            }
            st.records.insert(r.clone());
            let txn = Txn::ops(vec![Row::Record(r.clone()).put()]);
            Ok(Change::stored((), txn, move |st: &mut State| {
                st.records.remove(&r);
            })
            .names())
        })
    }

    /// Removes the records of `container` at `ip` (only `name`'s, when given).
    pub fn delete_records(&self, container: &str, ip: IpAddr, name: Option<&str>) -> Result<usize, Error> {
        let name = name.map(fqdn).transpose()?;
        self.write(|st| {
            let gone: Vec<Record> = st
                .records
                .iter()
                .filter(|r| r.container == container && r.ip == ip && name.as_ref().is_none_or(|f| *f == r.fqdn))
                .cloned()
                .collect();
            if gone.is_empty() {
                return Err(Error::NoRecord {
                    container: container.to_string(),
                    ip,
                });
            }
            for r in &gone {
                st.records.remove(r);
            }
            let ops = gone.iter().map(|r| Row::Record(r.clone()).delete()).collect();
            let n = gone.len();
            Ok(Change::stored(n, Txn::ops(ops), move |st: &mut State| st.records.extend(gone)).names())
        })
    }

    pub fn records(&self) -> Vec<Record> {
        self.state.lock().records.iter().cloned().collect()
    }

    pub fn domain(&self) -> String {
        self.state.lock().domain.clone()
    }
}
