//! Hostile layers: each attack is refused or contained, and nothing outside the rootfs
//! changes.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::snapshot;
use husk_image::{UnpackError, UnpackLimits, Unpacker};

/// A scratch area: `outside/` (with a victim file) beside `rootfs/`.
struct Arena {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    rootfs: PathBuf,
    outside: PathBuf,
}

impl Arena {
    fn new() -> Arena {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let rootfs = base.join("rootfs");
        let outside = base.join("outside");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::write(outside.join("victim.txt"), b"original").unwrap();
        std::fs::write(outside.join("sub/other.txt"), b"other").unwrap();
        Arena {
            _tmp: tmp,
            base,
            rootfs,
            outside,
        }
    }

    /// Everything in the arena except the rootfs.
    fn outside_state(&self) -> Vec<(PathBuf, Vec<u8>)> {
        snapshot(&self.base)
            .into_iter()
            .filter(|(p, _)| !p.starts_with("rootfs"))
            .collect()
    }

    fn unpacker(&self) -> Unpacker {
        Unpacker::new(&self.rootfs, UnpackLimits::default()).unwrap()
    }

    /// Applies layers in order; returns the first error.
    fn apply(&self, layers: &[Vec<u8>], limits: UnpackLimits) -> Result<(), UnpackError> {
        let mut u = Unpacker::new(&self.rootfs, limits).unwrap();
        for l in layers {
            u.apply_compressed(&l[..], None)?;
        }
        Ok(())
    }

    fn abs_outside(&self) -> String {
        self.outside.display().to_string()
    }
}

/// A raw tar writer that puts any bytes in names (the tar crate's builder refuses `..`).
struct Raw(Vec<u8>);

impl Raw {
    fn new() -> Raw {
        Raw(Vec::new())
    }

    fn entry(&mut self, kind: u8, name: &str, link: &str, data: &[u8], mode: u32) -> &mut Raw {
        let mut h = [0u8; 512];
        assert!(
            name.len() < 100 && link.len() < 100,
            "keep test names short"
        );
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |field: &mut [u8], v: u64| {
            let s = format!("{:0width$o}\0", v, width = field.len() - 1);
            field.copy_from_slice(s.as_bytes());
        };
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 1_700_000_000);
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.0.extend_from_slice(&h);
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Raw {
        self.entry(b'0', name, "", data, 0o644)
    }

    fn dir(&mut self, name: &str) -> &mut Raw {
        self.entry(b'5', name, "", b"", 0o755)
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Raw {
        self.entry(b'2', name, target, b"", 0o777)
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Raw {
        self.entry(b'1', name, target, b"", 0o644)
    }

    fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.0);
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

/// Sets the first header's size field (GNU base-256, for sizes octal cannot hold).
fn patch_size(raw: &mut [u8], size: u64) {
    let field = &mut raw[124..136];
    field.fill(0);
    field[0] = 0x80;
    field[4..].copy_from_slice(&size.to_be_bytes());
    raw[148..156].copy_from_slice(b"        ");
    let sum: u32 = raw[..512].iter().map(|b| u32::from(*b)).sum();
    raw[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn hostile(e: &UnpackError) -> bool {
    matches!(e, UnpackError::Hostile { .. })
}

#[test]
fn dotdot_entries_are_refused() {
    let a = Arena::new();
    let before = a.outside_state();
    for name in [
        "../outside/pwned",
        "a/../../outside/pwned",
        "./../victim.txt",
    ] {
        let layer = Raw::new().dir("a").file(name, b"evil").finish();
        let err = a.apply(&[layer], UnpackLimits::default()).unwrap_err();
        assert!(hostile(&err), "{name}: {err}");
        assert!(err.to_string().contains(".."), "{err}");
    }
    assert_eq!(a.outside_state(), before);
}

#[test]
fn absolute_paths_are_contained() {
    let a = Arena::new();
    let before = a.outside_state();
    let target = format!("{}/victim.txt", a.abs_outside());
    let layer = Raw::new()
        .file(&target, b"evil")
        .file("/etc/abs", b"x")
        .finish();
    a.apply(&[layer], UnpackLimits::default()).unwrap();
    assert_eq!(a.outside_state(), before);
    // Written inside instead.
    let inside = a.rootfs.join(target.trim_start_matches('/'));
    assert_eq!(std::fs::read(inside).unwrap(), b"evil");
    assert_eq!(std::fs::read(a.rootfs.join("etc/abs")).unwrap(), b"x");
}

#[test]
fn symlink_to_outside_then_write_through_it_same_layer() {
    let a = Arena::new();
    let before = a.outside_state();
    let abs = a.abs_outside();
    let layer = Raw::new()
        .symlink("escape", &abs)
        .file("escape/pwned", b"evil")
        .symlink("rel", "../../../../../../../../../..")
        .file("rel/pwned2", b"evil")
        .finish();
    a.apply(&[layer], UnpackLimits::default()).unwrap();
    assert_eq!(a.outside_state(), before);
    assert!(!a.outside.join("pwned").exists());
    // The absolute link resolved inside the rootfs, as in a chroot.
    let contained = a.rootfs.join(abs.trim_start_matches('/')).join("pwned");
    assert_eq!(std::fs::read(contained).unwrap(), b"evil");
    assert_eq!(std::fs::read(a.rootfs.join("pwned2")).unwrap(), b"evil");
}

#[test]
fn symlink_planted_by_earlier_layer_is_not_written_through() {
    let a = Arena::new();
    let before = a.outside_state();
    let abs = a.abs_outside();
    let l1 = Raw::new()
        .symlink("etc", &abs)
        .symlink("victim", &format!("{abs}/victim.txt"))
        .finish();
    let l2 = Raw::new()
        .file("etc/victim.txt", b"evil via dir link")
        .file("etc/sub/other.txt", b"evil")
        .file("victim", b"evil via final link")
        .finish();
    a.apply(&[l1, l2], UnpackLimits::default()).unwrap();
    assert_eq!(a.outside_state(), before);
    // The final-component symlink was replaced by a file, not followed.
    let md = std::fs::symlink_metadata(a.rootfs.join("victim")).unwrap();
    assert!(md.is_file());
    assert_eq!(
        std::fs::read(a.rootfs.join("victim")).unwrap(),
        b"evil via final link"
    );
}

#[test]
fn hardlinks_out_of_the_rootfs_are_refused() {
    let a = Arena::new();
    let before = a.outside_state();
    let abs = a.abs_outside();
    let cases = vec![
        Raw::new()
            .hardlink("leak", "../outside/victim.txt")
            .finish(),
        Raw::new()
            .hardlink("leak", &format!("{abs}/victim.txt"))
            .finish(),
        Raw::new()
            .symlink("s", &abs)
            .hardlink("leak", "s/victim.txt")
            .finish(),
        Raw::new().dir("d").hardlink("leak", "d").finish(),
    ];
    for layer in cases {
        let err = a.apply(&[layer], UnpackLimits::default()).unwrap_err();
        assert!(hostile(&err), "{err}");
    }
    assert_eq!(a.outside_state(), before);
    // And nothing in the rootfs shares the victim's inode.
    use std::os::unix::fs::MetadataExt;
    let victim = std::fs::metadata(a.outside.join("victim.txt")).unwrap();
    assert_eq!(victim.nlink(), 1);
}

#[test]
fn whiteouts_and_opaque_markers_cannot_reach_outside() {
    let a = Arena::new();
    let before = a.outside_state();
    let abs = a.abs_outside();
    let l1 = Raw::new().symlink("d", &abs).finish();
    let l2 = Raw::new()
        .file("d/.wh.victim.txt", b"")
        .file("d/sub/.wh..wh..opq", b"")
        .file(&format!("{abs}/.wh.victim.txt"), b"")
        .finish();
    a.apply(&[l1, l2], UnpackLimits::default()).unwrap();
    assert_eq!(a.outside_state(), before);
    let err = a
        .apply(
            &[Raw::new().file("../.wh.outside", b"").finish()],
            UnpackLimits::default(),
        )
        .unwrap_err();
    assert!(hostile(&err), "{err}");
    assert_eq!(a.outside_state(), before);
}

#[test]
fn symlink_loops_are_refused() {
    let a = Arena::new();
    let before = a.outside_state();
    let layer = Raw::new()
        .symlink("a", "b")
        .symlink("b", "a")
        .file("a/x", b"x")
        .finish();
    let err = a.apply(&[layer], UnpackLimits::default()).unwrap_err();
    assert!(err.to_string().contains("symbolic links"), "{err}");
    assert_eq!(a.outside_state(), before);
}

#[test]
fn decompression_bomb_is_bounded() {
    let a = Arena::new();
    let before = a.outside_state();
    // 32 MiB of zeros gzips to ~32 KiB; the limit is 8 MiB.
    let zeros = vec![0u8; 32 << 20];
    let layer = Raw::new().file("bomb", &zeros).finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 1 << 20);
    let limits = UnpackLimits {
        max_bytes: 8 << 20,
        max_entries: 1000,
    };
    let err = a.apply(&[gz], limits).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    // Refused before writing: the size is known from the header.
    assert!(!a.rootfs.join("bomb").exists());
    assert_eq!(a.outside_state(), before);

    // A header claiming a huge size with no data behind it.
    let mut raw = Raw::new().file("huge", b"").finish();
    patch_size(&mut raw, 1u64 << 40);
    let err = a.apply(&[raw], limits).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    assert_eq!(a.outside_state(), before);
}

#[test]
fn entry_count_bomb_is_bounded() {
    let a = Arena::new();
    let mut raw = Raw::new();
    for i in 0..3000 {
        raw.file(&format!("f{i}"), b"");
    }
    let layer = raw.finish();
    let limits = UnpackLimits {
        max_bytes: 1 << 30,
        max_entries: 1000,
    };
    let err = a.apply(&[layer], limits).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 1000 }),
        "{err}"
    );
    let n = std::fs::read_dir(&a.rootfs).unwrap().count();
    assert!(n <= 1000, "{n} entries written");
}

#[test]
fn oversized_extension_records_are_refused() {
    let a = Arena::new();
    // A GNU long name claiming 8 GiB.
    let mut raw = Raw::new()
        .entry(b'L', "././@LongLink", "", b"", 0o644)
        .finish();
    patch_size(&mut raw, 8u64 << 30);
    let err = a.apply(&[raw], UnpackLimits::default()).unwrap_err();
    assert!(hostile(&err), "{err}");
}

#[test]
fn garbage_is_a_clean_error() {
    let a = Arena::new();
    let before = a.outside_state();
    for junk in [
        vec![0x1f, 0x8b, 1, 2, 3],
        vec![0x28, 0xb5, 0x2f, 0xfd, 9, 9, 9],
        b"definitely not a tar file at all, just some words".repeat(20),
    ] {
        assert!(a.apply(&[junk], UnpackLimits::default()).is_err());
    }
    let _ = a.unpacker();
    assert_eq!(a.outside_state(), before);
}

#[test]
fn failed_unpack_leaves_no_rootfs_in_the_store() {
    // Through the store: a hostile layer in an image loaded from an OCI layout.
    let tmp = tempfile::tempdir().unwrap();
    let store = husk_image::Store::open(tmp.path().join("store")).unwrap();
    let layout = tmp.path().join("layout");
    let evil = Raw::new().file("../../escape", b"evil").finish();
    let spec = common::ImageSpec {
        layers: vec![evil],
        comp: common::Comp::Gzip,
        ..common::ImageSpec::busybox("evil")
    };
    common::oci_layout(&layout, "evil.example/evil:1", &spec);
    let loaded = husk_image::load_layout(&store, &layout, None).unwrap();
    let img = store.resolve(&loaded[0].id.to_string()).unwrap();
    let err = store.rootfs(&img, UnpackLimits::default()).unwrap_err();
    assert!(err.to_string().contains("cannot unpack"), "{err}");
    let left: Vec<_> = std::fs::read_dir(store.root().join("rootfs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!tmp.path().join("escape").exists());
    let _ = Path::new("/");
}
