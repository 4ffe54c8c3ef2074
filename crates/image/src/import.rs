//! `husk import`: an image made from a root directory, offline (Docker's
//! `docker import`). The directory becomes one uncompressed layer; the image
//! config gets a default command and `PATH`; the result is written as an OCI
//! image layout and loaded like any other.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::digest::Digest;
use crate::load::{LoadError, Loaded, load_layout};
use crate::reference::Reference;
use crate::store::Store;

/// Errors importing a directory.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The name is not a valid image reference.
    #[error("invalid image name {0:?}")]
    BadName(String),
    /// The source is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// Reading the directory or writing the layout failed.
    #[error("cannot write the image layout in {path}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Loading the layout into the store failed.
    #[error("cannot load the imported image")]
    Load(#[source] LoadError),
}

/// What the imported image runs by default.
#[derive(Debug, Clone, Default)]
pub struct ImportConfig {
    /// The image's Cmd (empty: none).
    pub cmd: Vec<String>,
    /// Extra `KEY=value` environment (Docker's default PATH is always set).
    pub env: Vec<String>,
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_owned(),
        source,
    }
}

fn put_blob(layout: &Path, bytes: &[u8]) -> Result<(Digest, u64), ImportError> {
    let d = Digest::of(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let p = dir.join(d.to_string().trim_start_matches("sha256:"));
    std::fs::write(&p, bytes).map_err(io_err(&p))?;
    Ok((d, bytes.len() as u64))
}

/// Imports `dir` as image `name` (tag `latest` if none is given).
pub fn import_dir(
    store: &Store,
    dir: &Path,
    name: &str,
    config: &ImportConfig,
) -> Result<Vec<Loaded>, ImportError> {
    if !dir.is_dir() {
        return Err(ImportError::NotADirectory(dir.to_owned()));
    }
    let full = Reference::parse(name)
        .ok()
        .and_then(|r| r.tagged())
        .ok_or_else(|| ImportError::BadName(name.to_owned()))?;
    let layout =
        std::env::temp_dir().join(format!("husk-import-{}-{}", std::process::id(), nanos()));
    let result = write_layout(&layout, dir, &full, config)
        .and_then(|()| load_layout(store, &layout, None).map_err(ImportError::Load));
    let _ = std::fs::remove_dir_all(&layout);
    result
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn write_layout(
    layout: &Path,
    dir: &Path,
    full_name: &str,
    config: &ImportConfig,
) -> Result<(), ImportError> {
    std::fs::create_dir_all(layout).map_err(io_err(layout))?;
    // The layer: the directory's tree, symlinks kept as symlinks.
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir).map_err(io_err(dir))?;
    let layer = tar.into_inner().map_err(io_err(dir))?;
    let (layer_digest, layer_size) = put_blob(layout, &layer)?;
    let mut env = vec![DEFAULT_PATH.to_owned()];
    env.extend(config.env.iter().cloned());
    let mut cfg = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": env },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest.to_string()] },
        "history": [ { "created_by": format!("husk import {}", dir.display()) } ],
    });
    if !config.cmd.is_empty() {
        cfg["config"]["Cmd"] = json!(config.cmd);
    }
    let cfg_bytes = serde_json::to_vec(&cfg).map_err(|e| ImportError::Io {
        path: layout.to_owned(),
        source: e.into(),
    })?;
    let (cfg_digest, cfg_size) = put_blob(layout, &cfg_bytes)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest.to_string(), "size": cfg_size },
        "layers": [ { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest.to_string(), "size": layer_size } ],
    });
    let man_bytes = serde_json::to_vec(&manifest).map_err(|e| ImportError::Io {
        path: layout.to_owned(),
        source: e.into(),
    })?;
    let (man_digest, man_size) = put_blob(layout, &man_bytes)?;
    let mut annotations = BTreeMap::new();
    annotations.insert("org.opencontainers.image.ref.name", full_name);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [ {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": man_digest.to_string(),
            "size": man_size,
            "annotations": annotations,
        } ],
    });
    let write = |name: &str, bytes: &[u8]| -> Result<(), ImportError> {
        let p = layout.join(name);
        let mut f = std::fs::File::create(&p).map_err(io_err(&p))?;
        f.write_all(bytes).map_err(io_err(&p))
    };
    write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    write(
        "index.json",
        &serde_json::to_vec(&index).unwrap_or_default(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_a_directory_as_an_image() {
        let base = std::env::temp_dir().join(format!("husk-import-test-{}", std::process::id()));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/hello"), b"#!/bin/sh\necho hi\n").unwrap();
        std::os::unix::fs::symlink("hello", root.join("bin/hi")).unwrap();
        let store = Store::open(base.join("store")).unwrap();
        let cfg = ImportConfig {
            cmd: vec!["/bin/hello".into()],
            env: vec!["A=b".into()],
        };
        let loaded = import_dir(&store, &root, "demo", &cfg).unwrap();
        assert_eq!(loaded.len(), 1);
        assert!(
            loaded[0].lines().iter().any(|l| l.contains("demo:latest")),
            "{:?}",
            loaded[0].lines()
        );
        let image = crate::pull::resolve_or_pull(
            &store,
            "demo",
            &crate::registry::RegistryOptions::for_store(&store),
            &crate::progress::NoProgress,
        )
        .unwrap();
        assert_eq!(
            image.config.config.as_ref().map(|c| c.cmd.clone()),
            Some(Some(vec!["/bin/hello".to_string()]))
        );
        let rootfs = store
            .rootfs(&image, crate::unpack::UnpackLimits::default())
            .unwrap();
        assert_eq!(
            std::fs::read(rootfs.path.join("bin/hello")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::read_link(rootfs.path.join("bin/hi")).unwrap(),
            Path::new("hello")
        );
        assert!(matches!(
            import_dir(&store, &root, "Bad Name!", &cfg),
            Err(ImportError::BadName(_))
        ));
        assert!(matches!(
            import_dir(&store, &base.join("nope"), "x", &cfg),
            Err(ImportError::NotADirectory(_))
        ));
        drop(rootfs);
        let _ = std::fs::remove_dir_all(&base);
    }
}
