//! husk's image handling: an on-disk OCI image store, pulls from OCI distribution
//! registries, `docker save`/OCI archive loads, safe layer unpacking into a shared
//! read-only rootfs, and resolution of the container process from the image config.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod digest;
mod fsutil;
pub mod load;
pub mod process;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod spec;
pub mod store;
pub mod unpack;

pub use digest::Digest;
pub use load::{LoadError, Loaded, load, load_layout};
pub use process::{ProcessError, ProcessSpec, ProcessUser, RunOverrides, resolve_process};
pub use progress::{NoProgress, Progress, ProgressEvent, StderrProgress};
pub use pull::{PullError, PullOutcome, pull};
pub use reference::Reference;
pub use registry::{RegistryError, RegistryOptions, login, logout};
pub use store::{Image, ImageSummary, Rootfs, Store, StoreError};
pub use unpack::{UnpackError, UnpackLimits, Unpacker};
