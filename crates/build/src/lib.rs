//! `husk build`: a Dockerfile and its context into an image, each RUN step
//! in its own microVM.
//!
//! [`dockerfile`] parses and checks (pure); [`shell`] is Docker's word
//! processing (quotes, escapes, `$VAR` expansion); [`context`] reads the
//! untrusted build context (`.dockerignore`, globs, symlinks kept) and
//! writes COPY/ADD layers on the host; [`cache`] is the build cache in the
//! store; [`builder`] runs the steps, RUN through
//! [`husk_runtime::engine::Engine`]. The CLI only parses flags and prints
//! the [`Event`]s it is given.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod builder;
pub mod cache;
pub mod context;
pub mod dockerfile;
pub mod shell;

pub use builder::{BuildError, BuildOptions, Builder, Built, Event, Network, Progress, Quiet};
