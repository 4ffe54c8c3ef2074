//! `husk history IMAGE`: the image config's `history`, newest first, each
//! entry matched to its layer (entries marked `empty_layer` have none), as
//! Docker shows it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::digest::Digest;
use crate::format::{self, human_age, parse_rfc3339};
use crate::progress::human_size;
use crate::sizes::{self, SizeError};
use crate::store::{Image, Store};

/// Errors building an image's history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The config's history is malformed.
    #[error("malformed history in the config of image {image}")]
    BadConfig {
        /// The image.
        image: Digest,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// More history entries claim a layer than the image has (Docker's check).
    #[error("image {0}: too many non-empty layers in History section")]
    TooManyLayers(Digest),
    /// A layer's size could not be found.
    #[error(transparent)]
    Size(#[from] SizeError),
}

/// One entry of the config's `history`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct HistoryEntry {
    /// When, RFC 3339.
    #[serde(default)]
    pub created: Option<String>,
    /// The command that made it.
    #[serde(default)]
    pub created_by: Option<String>,
    /// Who.
    #[serde(default)]
    pub author: Option<String>,
    /// A comment (`husk commit -m`).
    #[serde(default)]
    pub comment: Option<String>,
    /// True when the step made no layer.
    #[serde(default)]
    pub empty_layer: Option<bool>,
}

#[derive(Deserialize)]
struct WithHistory {
    #[serde(default)]
    history: Option<Vec<HistoryEntry>>,
}

/// The history entries of a config blob (none if it has no `history`).
pub fn entries(config_raw: &[u8]) -> Result<Vec<HistoryEntry>, serde_json::Error> {
    Ok(serde_json::from_slice::<WithHistory>(config_raw)?
        .history
        .unwrap_or_default())
}

/// One row of `husk history`.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryRow {
    /// The image id, on the newest row only (`<missing>` elsewhere, as Docker
    /// shows for layers that are not images of their own).
    pub id: Option<Digest>,
    /// The entry.
    pub entry: HistoryEntry,
    /// The unpacked size of its layer (0 for an empty layer).
    pub size: u64,
}

/// The rows of `husk history`, newest first.
pub fn history(store: &Store, image: &Image) -> Result<Vec<HistoryRow>, HistoryError> {
    let list = entries(&image.config_raw).map_err(|source| HistoryError::BadConfig {
        image: image.id.clone(),
        source,
    })?;
    let layers = sizes::layer_sizes(store, image)?;
    let mut next = layers.iter();
    let mut rows = Vec::with_capacity(list.len());
    for entry in list {
        let size = if entry.empty_layer.unwrap_or(false) {
            0
        } else {
            *next
                .next()
                .ok_or_else(|| HistoryError::TooManyLayers(image.id.clone()))?
        };
        rows.push(HistoryRow {
            id: None,
            entry,
            size,
        });
    }
    rows.reverse();
    if let Some(first) = rows.first_mut() {
        first.id = Some(image.id.clone());
    }
    Ok(rows)
}

/// How `husk history` prints.
#[derive(Clone, Copy, Debug, Default)]
pub struct HistoryFormat {
    /// `--no-trunc`: full ids and commands.
    pub no_trunc: bool,
    /// `-q`: ids only.
    pub quiet: bool,
    /// `--human=false`: RFC 3339 times and sizes in bytes.
    pub raw: bool,
}

/// Docker's `history` table (IMAGE, CREATED, CREATED BY, SIZE, COMMENT), or
/// the ids alone with `quiet`.
pub fn history_table(rows: &[HistoryRow], f: HistoryFormat, now: SystemTime) -> String {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let id = |r: &HistoryRow| match &r.id {
        Some(d) if f.no_trunc => d.to_string(),
        Some(d) => d.short().to_string(),
        None => "<missing>".to_string(),
    };
    if f.quiet {
        return rows.iter().map(|r| id(r) + "\n").collect();
    }
    let mut table = vec![
        ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
            .map(String::from)
            .to_vec(),
    ];
    for r in rows {
        let created = match r.entry.created.as_deref() {
            Some(c) if f.raw => c.to_string(),
            Some(c) => parse_rfc3339(c)
                .map(|t| human_age(now - t))
                .unwrap_or_else(|| "N/A".into()),
            None => "N/A".into(),
        };
        let by = r
            .entry
            .created_by
            .as_deref()
            .unwrap_or("")
            .replace('\t', " ");
        let by = if f.no_trunc { by } else { ellipsis(&by, 45) };
        let size = if f.raw {
            r.size.to_string()
        } else {
            human_size(r.size)
        };
        table.push(vec![
            id(r),
            created,
            by,
            size,
            r.entry.comment.clone().unwrap_or_default(),
        ]);
    }
    format::table(&table)
}

/// At most `max` characters, the last replaced by `…` when cut (Docker's
/// `stringutils.Ellipsis`).
fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Manifest, RootFs};

    fn image(config: serde_json::Value, layers: usize) -> Image {
        let raw = serde_json::to_vec(&config).unwrap();
        let parsed: crate::spec::ImageConfig = serde_json::from_slice(&raw).unwrap();
        let _ = RootFs::default();
        let d = |i: usize| crate::spec::Descriptor {
            media_type: crate::spec::OCI_LAYER_TAR.into(),
            digest: Digest::of(format!("{i}").as_bytes()),
            size: 1,
            platform: None,
            annotations: Default::default(),
            urls: vec![],
        };
        Image {
            id: Digest::of(&raw),
            manifest_digest: Digest::of(b"m"),
            manifest: Manifest {
                schema_version: 2,
                media_type: None,
                config: d(99),
                layers: (0..layers).map(d).collect(),
                annotations: Default::default(),
            },
            config: parsed,
            config_raw: raw,
            repo_tags: vec![],
            repo_digests: vec![],
        }
    }

    #[test]
    fn matches_entries_to_layers_newest_first() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let ids: Vec<Digest> = (0..2).map(|i| Digest::of(&[i])).collect();
        // Sizes come from the cache: no blobs needed.
        std::fs::create_dir_all(d.path().join("sizes")).unwrap();
        std::fs::write(d.path().join("sizes").join(ids[0].hex()), "4260000").unwrap();
        std::fs::write(d.path().join("sizes").join(ids[1].hex()), "12").unwrap();
        let img = image(
            serde_json::json!({
                "architecture": "amd64", "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": ids},
                "history": [
                    {"created": "2024-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:7625ddfd589fb824ee39f1b1eb387b98f3676420ff52f26eb9d975151e889667 in / "},
                    {"created": "2024-01-01T00:00:01Z", "created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]", "empty_layer": true},
                    {"created": "2024-01-03T00:00:00Z", "created_by": "husk commit", "comment": "fixed it"},
                ],
            }),
            2,
        );
        let rows = history(&store, &img).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].id, Some(img.id.clone()));
        assert_eq!(rows[0].size, 12);
        assert_eq!(rows[1].size, 0);
        assert_eq!(rows[2].size, 4_260_000);
        let now = UNIX_EPOCH + std::time::Duration::from_secs(1_704_240_000 + 7200);
        let t = history_table(&rows, HistoryFormat::default(), now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "IMAGE          CREATED       CREATED BY                                      SIZE      COMMENT"
        );
        assert_eq!(
            lines[1],
            format!(
                "{}   2 hours ago   husk commit                                     12B       fixed it",
                img.id.short()
            )
        );
        assert_eq!(
            lines[3],
            "<missing>      2 days ago    /bin/sh -c #(nop) ADD file:7625ddfd589fb824e…   4.26MB"
        );
        let q = history_table(
            &rows,
            HistoryFormat {
                quiet: true,
                no_trunc: true,
                ..Default::default()
            },
            now,
        );
        assert_eq!(q, format!("{}\n<missing>\n<missing>\n", img.id));
        let full = history_table(
            &rows,
            HistoryFormat {
                no_trunc: true,
                raw: true,
                ..Default::default()
            },
            now,
        );
        assert!(full.contains("eb9d975151e889667 in /"), "{full}");
        assert!(full.contains("2024-01-03T00:00:00Z"), "{full}");
        assert!(full.contains("   4260000\n"), "{full}");
    }

    #[test]
    fn refuses_more_layered_entries_than_layers_and_bad_history() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let img = image(
            serde_json::json!({
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [{"created_by": "x"}],
            }),
            0,
        );
        assert!(matches!(
            history(&store, &img),
            Err(HistoryError::TooManyLayers(_))
        ));
        let img = image(
            serde_json::json!({
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": "nope",
            }),
            0,
        );
        assert!(matches!(
            history(&store, &img),
            Err(HistoryError::BadConfig { .. })
        ));
        // No history at all: no rows.
        let img = image(
            serde_json::json!({"rootfs": {"type": "layers", "diff_ids": []}}),
            0,
        );
        assert!(history(&store, &img).unwrap().is_empty());
    }
}
