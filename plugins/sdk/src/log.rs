//! The host's structured log, tagged with the plugin and the request. Never
//! log credentials.
//!
//! ```ignore
//! use wasm_broker_sdk::log;
//! log::info!("created database {database}");
//! ```

pub use crate::bindings::wasm_broker::plugin::log::Level;
#[doc(inline)]
pub use crate::{
    __wasm_broker_log_debug as debug, __wasm_broker_log_error as error,
    __wasm_broker_log_info as info, __wasm_broker_log_warn as warn,
};

/// Writes `message` at `level`; the macros [`info!`] ... format it.
pub fn write(level: Level, message: &str) {
    crate::imports::log::log(level, message);
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wasm_broker_log_debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, &::std::format!($($arg)*)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wasm_broker_log_info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, &::std::format!($($arg)*)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wasm_broker_log_warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, &::std::format!($($arg)*)) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __wasm_broker_log_error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, &::std::format!($($arg)*)) };
}
