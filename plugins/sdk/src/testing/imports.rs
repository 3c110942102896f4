//! The fakes behind the same functions the host's imports have, one module
//! per WIT interface: the wrappers call `crate::imports::<interface>::...`,
//! which is this module anywhere but in a component (see `lib.rs`).

/// The `sql` interface.
pub(crate) mod sql {
    pub(crate) use super::super::sql::{get_server_info, query};
}

/// The `redis` interface.
pub(crate) mod redis {
    pub(crate) use super::super::redis::{command, get_server_info};
}

/// The `http` interface.
pub(crate) mod http {
    pub(crate) use super::super::http::{get_server_info, send};
}

/// The `tcp` interface.
pub(crate) mod tcp {
    pub(crate) use super::super::tcp::{
        ByteStream, connect, encoded_placeholder, get_credentials, get_server_info,
    };
}

/// The `kv` interface.
pub(crate) mod kv {
    pub(crate) use super::super::kv::{delete, get, list_keys, set};
}

/// The `config` interface.
pub(crate) mod config {
    pub(crate) use super::super::kv::config_get as get;
}

/// The `log` interface.
pub(crate) mod log {
    pub(crate) use super::super::kv::log;
}
