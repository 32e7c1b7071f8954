//! The farms the agent's jobs go to: each resolved once (config file,
//! token, certificates) from the flags a job's `mexec` was given, and kept
//! with its one `Connector` for the agent's life.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::Mutex;

use mexec_common::connector::Connector;
use mexec_common::farm::{Farm, FarmFlags};
use mexec_proto::v1::AgentFarm;
use prost::Message;

/// Resolved farms, by the flags that named them.
#[derive(Debug, Default)]
pub struct Farms {
    known: Mutex<HashMap<Vec<u8>, (Farm, Connector)>>,
}

impl Farms {
    /// The farm `flags` name, resolved as its `mexec` would.
    pub fn get(&self, flags: &AgentFarm) -> Result<(Farm, Connector), String> {
        let key = flags.encode_to_vec();
        if let Some(known) = self.known.lock().ok().and_then(|k| k.get(&key).cloned()) {
            return Ok(known);
        }
        let (farm, _) = Farm::resolve(&farm_flags(flags)).map_err(|err| err.to_string())?;
        let connector = farm.connector().keep_connections();
        if let Ok(mut known) = self.known.lock() {
            known.insert(key, (farm.clone(), connector.clone()));
        }
        Ok((farm, connector))
    }
}

fn farm_flags(flags: &AgentFarm) -> FarmFlags {
    let path = |bytes: &Option<bytes::Bytes>| {
        bytes
            .as_ref()
            .map(|b| PathBuf::from(OsString::from_vec(b.to_vec())))
    };
    FarmFlags {
        config: path(&flags.config),
        nodes: flags.nodes.clone(),
        gatekeeper: flags.gatekeeper.clone(),
        token_file: path(&flags.token_file),
        tls_ca: path(&flags.tls_ca),
        tls_cert: path(&flags.tls_cert),
        tls_key: path(&flags.tls_key),
        munge: flags.munge,
        munge_socket: path(&flags.munge_socket),
    }
}
