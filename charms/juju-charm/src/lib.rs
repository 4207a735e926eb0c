//! Juju machine charms in Rust: the hook context, typed hook tools, relation databags as
//! types, the workload as a systemd service, the `run` entry point that turns errors into
//! statuses, and (feature `testing`) a state-transition harness that runs the real charm
//! binary against fake hook tools.
//!
//! A charm is one binary that Juju runs as `dispatch`:
//!
//! ```no_run
//! use juju_charm::{CharmError, CharmResult, Context, Event, Status};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(rename_all = "kebab-case")]
//! struct Config {
//!     port: u16,
//! }
//!
//! fn charm(ctx: &Context) -> CharmResult {
//!     match &ctx.event {
//!         Event::Install | Event::ConfigChanged => {
//!             let config: Config = ctx.config()?;
//!             if config.port < 1024 {
//!                 return Err(CharmError::blocked(format!("port {} is privileged", config.port)));
//!             }
//!             ctx.status_set(&Status::active(""))?;
//!         }
//!         _ => {}
//!     }
//!     Ok(())
//! }
//!
//! fn main() {
//!     juju_charm::run(charm)
//! }
//! ```

mod context;
mod databag;
mod error;
pub mod files;
mod run;
pub mod systemd;
mod tools;
mod types;

#[cfg(feature = "testing")]
pub mod testing;

pub use context::{host_path, Context, Event, HookAction, HookRelation, FS_ROOT_VAR};
pub use databag::{databag, from_databag, to_databag};
pub use error::{Error, Result};
pub use run::{dispatch, run, CharmError, CharmResult, ResultExt};
pub use systemd::{ServiceUnit, Systemd};
pub use tools::{Address, BindAddress, Goal, GoalState, HookTools, Network};
pub use types::{Databag, LogLevel, Port, Protocol, RelationId, Status, StatusName};
