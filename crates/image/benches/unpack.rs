//! Unpack throughput: husk's safe unpacker vs GNU `tar -x` on the same ~100 MiB
//! multi-layer image (4 gzip layers: many small files, some large ones, a few
//! whiteouts and links in the upper layers).
//!
//! Run: `cargo bench -p husk-image --bench unpack`

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use husk_image::{UnpackLimits, Unpacker};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Text-like content that gzip compresses about 3:1, like real binaries and libraries.
fn content(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
        "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        let r = rng.next();
        if r % 4 == 0 {
            out.extend_from_slice(&r.to_le_bytes());
        } else {
            out.extend_from_slice(WORDS[(r >> 8) as usize % 16].as_bytes());
            out.push(b' ');
        }
    }
    out.truncate(len);
    out
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h
}

/// One layer: `small` files of 1–16 KiB in 100 directories, plus `big` files of 4 MiB.
fn make_layer(n: usize, rng: &mut Rng, small: usize, big: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for d in 0..100 {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, format!("usr/lib/pkg{d}"), &[][..])
            .unwrap();
    }
    for i in 0..small {
        let len = 1024 + (rng.next() % (15 * 1024)) as usize;
        let data = content(rng, len);
        let mut h = header(tar::EntryType::Regular, 0o644, len as u64);
        b.append_data(
            &mut h,
            format!("usr/lib/pkg{}/l{n}-f{i}.so", i % 100),
            &data[..],
        )
        .unwrap();
    }
    for i in 0..big {
        let data = content(rng, 4 << 20);
        let mut h = header(tar::EntryType::Regular, 0o755, data.len() as u64);
        b.append_data(&mut h, format!("opt/big/l{n}-b{i}.bin"), &data[..])
            .unwrap();
    }
    if n > 0 {
        // Whiteouts of a few lower files, symlinks and hard links.
        for i in 0..50 {
            let mut h = header(tar::EntryType::Regular, 0o644, 0);
            b.append_data(
                &mut h,
                format!("usr/lib/pkg{}/.wh.l{}-f{i}.so", i % 100, n - 1),
                &[][..],
            )
            .unwrap();
        }
        for i in 0..200 {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(
                &mut h,
                format!("usr/bin/l{n}-s{i}"),
                format!("../lib/pkg{}/l{n}-f{i}.so", i % 100),
            )
            .unwrap();
            let mut h = header(tar::EntryType::Link, 0o644, 0);
            b.append_link(
                &mut h,
                format!("usr/lib/pkg{}/l{n}-h{i}.so", i % 100),
                format!("usr/lib/pkg{}/l{n}-f{i}.so", i % 100),
            )
            .unwrap();
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn fresh(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
}

fn husk_unpack(dir: &Path, layers: &[Vec<u8>]) -> Duration {
    fresh(dir);
    let start = Instant::now();
    let mut u = Unpacker::new(dir, UnpackLimits::default()).unwrap();
    for l in layers {
        u.apply_compressed(&l[..], None).unwrap();
    }
    start.elapsed()
}

fn tar_unpack(dir: &Path, files: &[std::path::PathBuf], gz: bool) -> Duration {
    fresh(dir);
    let start = Instant::now();
    for f in files {
        let flag = if gz { "-xzf" } else { "-xf" };
        let st = Command::new("tar")
            .arg(flag)
            .arg(f)
            .arg("-C")
            .arg(dir)
            .status()
            .expect("run tar");
        assert!(st.success());
    }
    start.elapsed()
}

fn best(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..runs).map(|_| f()).min().unwrap()
}

fn main() {
    let work = std::env::temp_dir().join(format!("husk-unpack-bench-{}", std::process::id()));
    fresh(&work);
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let layers: Vec<Vec<u8>> = (0..4).map(|n| make_layer(n, &mut rng, 2000, 2)).collect();
    let total: usize = layers.iter().map(Vec::len).sum();
    let gz: Vec<Vec<u8>> = layers.iter().map(|l| gzip(l)).collect();
    let gz_total: usize = gz.iter().map(Vec::len).sum();
    let mut raw_files = Vec::new();
    let mut gz_files = Vec::new();
    for (i, (l, g)) in layers.iter().zip(&gz).enumerate() {
        let p = work.join(format!("layer{i}.tar"));
        std::fs::write(&p, l).unwrap();
        raw_files.push(p);
        let p = work.join(format!("layer{i}.tar.gz"));
        std::fs::write(&p, g).unwrap();
        gz_files.push(p);
    }
    let mib = total as f64 / (1 << 20) as f64;
    println!(
        "image: 4 layers, {:.1} MiB uncompressed tar, {:.1} MiB gzip, in {}",
        mib,
        gz_total as f64 / (1 << 20) as f64,
        work.display()
    );
    let dir = work.join("rootfs");
    let runs = 3;
    let rate = |d: Duration| mib / d.as_secs_f64();
    let h_gz = best(runs, || husk_unpack(&dir, &gz));
    let t_gz = best(runs, || tar_unpack(&dir, &gz_files, true));
    let h_raw = best(runs, || husk_unpack(&dir, &layers));
    let t_raw = best(runs, || tar_unpack(&dir, &raw_files, false));
    println!("best of {runs} runs, MiB/s of uncompressed layer data:");
    println!(
        "  husk unpack, gzip layers:   {:7.1} MiB/s ({:.2} s)",
        rate(h_gz),
        h_gz.as_secs_f64()
    );
    println!(
        "  tar -xzf,    gzip layers:   {:7.1} MiB/s ({:.2} s)",
        rate(t_gz),
        t_gz.as_secs_f64()
    );
    println!(
        "  husk unpack, plain tar:     {:7.1} MiB/s ({:.2} s)",
        rate(h_raw),
        h_raw.as_secs_f64()
    );
    println!(
        "  tar -xf,     plain tar:     {:7.1} MiB/s ({:.2} s)",
        rate(t_raw),
        t_raw.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&work);
}
