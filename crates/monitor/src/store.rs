//! The monitor's sled database. Trees: `versions` (a version's windows and
//! history, postcard), `labeled` (a model's recent labeled rows, postcard),
//! `policies` and `signals` (protobuf), `actions` (a model's last action
//! time), `counters` (`dropped`: the log records the servers reported
//! dropped, a big-endian u64), `joins` (the label join, postcard: written
//! at a graceful shutdown, removed when read at the next open). Windows and
//! counters are flushed every `persist_ms`; policies and signals are
//! written before the call that made them returns.

use std::path::Path;

use evergreen_proto::v1 as pb;
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::service::MonitorError;

pub struct Store {
    db: sled::Db,
    versions: sled::Tree,
    labeled: sled::Tree,
    policies: sled::Tree,
    signals: sled::Tree,
    actions: sled::Tree,
    /// The label join, written at a graceful shutdown (one record).
    joins: sled::Tree,
    counters: sled::Tree,
}

fn internal(e: impl std::fmt::Display) -> MonitorError {
    MonitorError::Internal(format!("monitor store: {e}"))
}

/// Key of the dropped-records count in the `counters` tree.
const DROPPED: &[u8] = b"dropped";

pub fn version_key(model: &str, version: u64) -> Vec<u8> {
    let mut k = model.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn split_version_key(k: &[u8]) -> Option<(String, u64)> {
    let i = k.iter().position(|b| *b == 0)?;
    let v: [u8; 8] = k.get(i + 1..)?.try_into().ok()?;
    Some((
        String::from_utf8(k[..i].to_vec()).ok()?,
        u64::from_be_bytes(v),
    ))
}

impl Store {
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create monitor.data_dir {}: {e}", dir.display())
        })?;
        let db = sled::open(dir.join("db"))
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", dir.display()))?;
        Ok(Store {
            versions: db.open_tree("versions")?,
            labeled: db.open_tree("labeled")?,
            policies: db.open_tree("policies")?,
            signals: db.open_tree("signals")?,
            actions: db.open_tree("actions")?,
            joins: db.open_tree("joins")?,
            counters: db.open_tree("counters")?,
            db,
        })
    }

    fn put<T: Serialize>(tree: &sled::Tree, key: &[u8], v: &T) -> Result<(), MonitorError> {
        let bytes = postcard::to_stdvec(v).map_err(internal)?;
        tree.insert(key, bytes).map_err(internal)?;
        Ok(())
    }

    /// Everything a tree holds that still decodes (a record written by
    /// another build that does not is skipped with a warning).
    fn all<T: DeserializeOwned>(tree: &sled::Tree, what: &str) -> Vec<(sled::IVec, T)> {
        tree.iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| match postcard::from_bytes(&v) {
                Ok(t) => Some((k, t)),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an undecodable {what} record");
                    None
                }
            })
            .collect()
    }

    pub fn put_version<T: Serialize>(
        &self,
        model: &str,
        version: u64,
        v: &T,
    ) -> Result<(), MonitorError> {
        Self::put(&self.versions, &version_key(model, version), v)
    }

    pub fn versions<T: DeserializeOwned>(&self) -> Vec<((String, u64), T)> {
        Self::all(&self.versions, "window")
            .into_iter()
            .filter_map(|(k, v)| Some((split_version_key(&k)?, v)))
            .collect()
    }

    pub fn put_labeled<T: Serialize>(&self, model: &str, v: &T) -> Result<(), MonitorError> {
        Self::put(&self.labeled, model.as_bytes(), v)
    }

    pub fn labeled<T: DeserializeOwned>(&self) -> Vec<(String, T)> {
        Self::all(&self.labeled, "labeled-rows")
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect()
    }

    pub fn put_policy(&self, p: &pb::Policy) -> Result<(), MonitorError> {
        self.policies
            .insert(p.model.as_bytes(), p.encode_to_vec())
            .map_err(internal)?;
        self.db.flush().map_err(internal)?;
        Ok(())
    }

    pub fn policies(&self) -> Vec<pb::Policy> {
        self.policies
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(_, v)| pb::Policy::decode(&*v).ok())
            .collect()
    }

    /// Stores a signal under a fresh id (set on `s`) and the model's action
    /// time, durably.
    pub fn add_signal(&self, s: &mut pb::Signal, at: f64) -> Result<(), MonitorError> {
        s.id = self.db.generate_id().map_err(internal)? + 1;
        self.signals
            .insert(s.id.to_be_bytes(), s.encode_to_vec())
            .map_err(internal)?;
        self.actions
            .insert(s.model.as_bytes(), &at.to_be_bytes())
            .map_err(internal)?;
        self.db.flush().map_err(internal)?;
        Ok(())
    }

    /// Signals with id > `after`, oldest first.
    pub fn signals_after(&self, after: u64) -> Vec<pb::Signal> {
        self.signals
            .range((after + 1).to_be_bytes()..)
            .filter_map(Result::ok)
            .filter_map(|(_, v)| pb::Signal::decode(&*v).ok())
            .collect()
    }

    /// Each model's last action time (unix seconds).
    pub fn actions(&self) -> Vec<(String, f64)> {
        self.actions
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let b: [u8; 8] = (*v).try_into().ok()?;
                Some((
                    String::from_utf8_lossy(&k).into_owned(),
                    f64::from_be_bytes(b),
                ))
            })
            .collect()
    }

    pub fn put_joins<T: Serialize>(&self, joins: &T) -> Result<(), MonitorError> {
        Self::put(&self.joins, b"joins", joins)
    }

    /// The label join a graceful shutdown wrote, removed as it is read (a
    /// crash later must not bring back joins already used).
    pub fn take_joins<T: DeserializeOwned>(&self) -> Option<T> {
        let bytes = match self.joins.remove(b"joins") {
            Ok(Some(b)) => b,
            _ => return None,
        };
        if let Err(e) = self.db.flush() {
            tracing::warn!(error = %e, "cannot flush after taking the label join");
        }
        postcard::from_bytes(&bytes)
            .map_err(|e| tracing::warn!(error = %e, "skipping an undecodable label join"))
            .ok()
    }

    /// Stores the count of log records the servers reported dropped
    /// (flushed by the caller).
    pub fn put_dropped(&self, dropped: u64) -> Result<(), MonitorError> {
        self.counters
            .insert(DROPPED, &dropped.to_be_bytes())
            .map_err(internal)?;
        Ok(())
    }

    /// The stored count of dropped log records (0 when never stored).
    pub fn dropped(&self) -> u64 {
        self.counters
            .get(DROPPED)
            .ok()
            .flatten()
            .and_then(|v| <[u8; 8]>::try_from(&*v).ok())
            .map_or(0, u64::from_be_bytes)
    }

    pub fn flush(&self) -> Result<(), MonitorError> {
        self.db.flush().map_err(internal)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dropped_count_survives_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.dropped(), 0, "never stored: 0");
            store.put_dropped(41).unwrap();
            store.put_dropped(42).unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.dropped(), 42);
    }
}
