//! husk's image handling: an on-disk OCI image store, pulls from and pushes to OCI
//! distribution registries, `docker save`/OCI archive loads, safe layer unpacking into a shared
//! read-only rootfs, and resolution of the container process from the image config.
//!
//! What the CLI calls, command by command:
//!
//! ```no_run
//! use husk_image::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::open(Store::default_root())?; // $HUSK_ROOT, /var/lib/husk, ~/.local/share/husk
//! let opts = RegistryOptions::for_store(&store); // auth.json + $HUSK_INSECURE_REGISTRIES
//!
//! // husk pull alpine
//! let input = "alpine";
//! if reference::uses_default_tag(input) {
//!     eprintln!("Using default tag: latest");
//! }
//! let out = pull(&store, &Reference::parse(input)?, &opts, &StderrProgress::new())?;
//! println!("{}", Reference::parse(input)?); // docker.io/library/alpine:latest
//!
//! // husk load -i file.tar   (docker save or OCI archive, optionally gzip/zstd)
//! for img in load(&store, std::fs::File::open("file.tar")?, None)? {
//!     for line in img.lines() {
//!         println!("{line}");
//!     }
//! }
//!
//! // husk push 127.0.0.1:5000/app:v1 (the image's own manifest bytes, blobs the registry has skipped)
//! let pushed = push(&store, &Reference::parse("127.0.0.1:5000/app:v1")?, &opts, &StderrProgress::new())?;
//! # let _ = pushed;
//!
//! // husk images / husk image inspect / husk rmi
//! print!("{}", format::images_table(&store.images()?, std::time::SystemTime::now()));
//! println!("{}", serde_json::to_string_pretty(&store.inspect("alpine")?)?);
//! for line in store.remove("alpine", false)? {
//!     println!("{line}");
//! }
//!
//! // husk run [-e/-w/-u/--entrypoint] IMAGE [CMD...]
//! let image = resolve_or_pull(&store, "alpine", &opts, &StderrProgress::new())?;
//! let rootfs = store.rootfs(&image, UnpackLimits::default())?; // keep alive while the VM runs
//! let spec = resolve_process(
//!     &image.config,
//!     Some(&rootfs.path),
//!     &RunOverrides { cmd: vec!["echo".into(), "hi".into()], ..Default::default() },
//!     &|k| std::env::var(k).ok(),
//! )?;
//! // spec.args, spec.env, spec.cwd, spec.user.{uid,gid,additional_gids} → the guest agent.
//! # let _ = (out, spec);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod commit;
pub mod df;
pub mod digest;
pub mod export;
pub mod format;
mod fsutil;
pub mod history;
pub mod import;
pub mod load;
pub mod process;
pub mod progress;
pub mod prune;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod save;
pub mod sizes;
pub mod spec;
pub mod store;
mod tree;
pub mod unpack;

pub use commit::{
    Change, CommitChanges, CommitError, CommitOptions, LayerInfo, commit, layer_descriptor,
    layer_from_upper, put_image, store_layer, store_upper_layer,
};
pub use df::{ContainerUsage, UsageRow, dir_size, disk_usage, disk_usage_table};
pub use digest::Digest;
pub use export::{ExportError, export};
pub use history::{HistoryError, HistoryFormat, HistoryRow, history, history_table};
pub use import::{ImportConfig, ImportError, import_dir};
pub use load::{LoadError, Loaded, load, load_layout};
pub use process::{ProcessError, ProcessSpec, ProcessUser, RunOverrides, resolve_process};
pub use progress::{NoProgress, Progress, ProgressEvent, StderrProgress};
pub use prune::{PruneError, PruneReport, prune};
pub use pull::{PullError, PullOutcome, pull, resolve_or_pull};
pub use push::{PushError, PushOutcome, push};
pub use reference::Reference;
pub use registry::{RegistryError, RegistryOptions, login, logout};
pub use save::{SaveError, save};
pub use sizes::SizeError;
pub use store::{GcGuard, Image, ImageSummary, Rootfs, Store, StoreError};
pub use unpack::{UnpackError, UnpackLimits, Unpacker};
