//! virtio-fs device tests: a mock driver (virtio-queue's `MockSplitQueue`
//! in real guest memory) sends FUSE requests to the device's real worker
//! thread, which serves a real directory in a temporary directory.

use std::ffi::CString;
use std::path::Path;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, CreateIn, Dirent, EntryOut, FallocateIn, FsOptions, FsyncIn, GetattrIn, GetxattrIn,
    InHeader, InitIn, InitOut, MkdirIn, MknodIn, Opcode, OpenIn, OpenOut, OutHeader, ReadIn,
    Rename2In, SetattrIn, SetxattrIn, WriteIn,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::*;
use crate::virtio::{Activation, Interrupt};

const MEM_SIZE: u64 = 8 << 20;
const BUF_BASE: u64 = 0x10_0000;
const REQ: usize = 1;
const HIPRIO: usize = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
/// Each queue's area is 0x4000 bytes: descriptors, available ring, then
/// the used ring here (see the vsock tests for why not the mock's).
const USED_OFFSET: u64 = 0x2000;
const ROOT: u64 = 1;
const HDR: usize = std::mem::size_of::<InHeader>();
const OUT: usize = std::mem::size_of::<OutHeader>();

/// The guest driver's side of the two queues, and the device it drives.
struct Driver {
    mem: GuestMemoryMmap,
    dev: Fs,
    evts: Vec<EventFd>,
    next_desc: [u16; 2],
    avail_idx: [u16; 2],
    used_seen: [u16; 2],
    next_buf: u64,
    unique: u64,
    /// The guest caller's uid and gid in the requests' headers.
    cred: (u32, u32),
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn mock(mem: &GuestMemoryMmap, q: usize) -> MockSplitQueue<'_, GuestMemoryMmap> {
    MockSplitQueue::create(mem, GuestAddress(q as u64 * 0x4000), QUEUE_SIZE)
}

fn used_addr(q: usize) -> u64 {
    q as u64 * 0x4000 + USED_OFFSET
}

impl Driver {
    /// A started device serving `dir`, after the FUSE INIT handshake.
    fn new(dir: &Path, read_only: bool) -> Self {
        let mut d = Self::without_init(dir, read_only);
        let (out, _) = d.init();
        assert_eq!(out.error, 0);
        d
    }

    fn without_init(dir: &Path, read_only: bool) -> Self {
        Self::started(FsConfig {
            tag: "share".into(),
            host_dir: dir.to_path_buf(),
            read_only,
            only: None,
            no_setid: false,
        })
    }

    /// A started device for a single-file share of `dir/name`, after INIT.
    fn only(dir: &Path, name: &str, read_only: bool) -> Self {
        let mut d = Self::started(FsConfig {
            tag: "file".into(),
            host_dir: dir.to_path_buf(),
            read_only,
            only: Some(name.into()),
            no_setid: false,
        });
        let (out, _) = d.init();
        assert_eq!(out.error, 0);
        d
    }

    /// A started device (before INIT).
    fn started(config: FsConfig) -> Self {
        let dev = Fs::new(config).unwrap();
        let mut d = Self {
            mem: mem(),
            dev,
            evts: Vec::new(),
            next_desc: [0; 2],
            avail_idx: [0; 2],
            used_seen: [0; 2],
            next_buf: BUF_BASE,
            unique: 0,
            cred: (0, 0),
        };
        d.activate();
        d
    }

    /// Fresh queues (zeroed rings) and a started device.
    fn activate(&mut self) {
        self.mem
            .write_slice(&[0u8; 0x8000], GuestAddress(0))
            .unwrap();
        self.next_desc = [0; 2];
        self.avail_idx = [0; 2];
        self.used_seen = [0; 2];
        let queues: Vec<Queue> = (0..2)
            .map(|i| {
                let mut q: Queue = mock(&self.mem, i).create_queue().unwrap();
                let used = used_addr(i);
                virtio_queue::QueueT::set_used_ring_address(
                    &mut q,
                    Some(used as u32),
                    Some((used >> 32) as u32),
                );
                q
            })
            .collect();
        let evts: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        self.evts = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        self.dev
            .activate(Activation {
                mem: self.mem.clone(),
                queues,
                queue_evts: evts,
                interrupt: Interrupt::new().unwrap(),
                acked_features: features::VERSION_1,
            })
            .unwrap();
    }

    fn alloc(&mut self, len: u32) -> u64 {
        // Requests are synchronous: buffers are free again once used.
        if self.next_buf + u64::from(len) > MEM_SIZE - 0x1000 {
            self.next_buf = BUF_BASE;
        }
        let a = self.next_buf;
        self.next_buf = (self.next_buf + u64::from(len) + 15) & !15;
        a
    }

    /// Queues a chain of `(addr, len, flags)` descriptors on `q`, notifies
    /// the device and waits for it to return the chain. Returns the used
    /// length.
    fn submit(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u32 {
        let m = mock(&self.mem, q);
        let head = self.next_desc[q];
        let n = descs.len() as u16;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QUEUE_SIZE;
            let flags = if i as u16 == n - 1 {
                flags
            } else {
                flags | VRING_DESC_F_NEXT as u16
            };
            m.desc_table()
                .store(
                    idx,
                    RawDescriptor::from(SplitDescriptor::new(
                        addr,
                        len,
                        flags,
                        (idx + 1) % QUEUE_SIZE,
                    )),
                )
                .unwrap();
        }
        self.next_desc[q] = (head + n) % QUEUE_SIZE;
        let avail = m.avail_addr().0;
        let i = self.avail_idx[q];
        self.mem
            .write_obj(
                head,
                GuestAddress(avail + 4 + 2 * u64::from(i % QUEUE_SIZE)),
            )
            .unwrap();
        self.avail_idx[q] = i.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx[q], GuestAddress(avail + 2))
            .unwrap();
        self.evts[q].write(1).unwrap();
        let used = used_addr(q);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
            if idx != self.used_seen[q] {
                let at = used + 4 + 8 * u64::from(self.used_seen[q] % QUEUE_SIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                self.used_seen[q] = self.used_seen[q].wrapping_add(1);
                assert_eq!(id, u32::from(head));
                return len;
            }
            assert!(
                Instant::now() < deadline,
                "the device did not return the chain"
            );
            assert!(self.dev.is_running(), "the worker thread stopped");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends raw request bytes in one readable descriptor with a writable
    /// reply buffer of `reply_len` bytes; returns the used length and the
    /// reply bytes.
    fn raw(&mut self, q: usize, req: &[u8], reply_len: u32) -> (u32, Vec<u8>) {
        let ra = self.alloc(req.len().max(1) as u32);
        self.mem.write_slice(req, GuestAddress(ra)).unwrap();
        let wa = self.alloc(reply_len);
        let mut descs = vec![(ra, req.len() as u32, 0)];
        if reply_len > 0 {
            descs.push((wa, reply_len, W));
        }
        let used = self.submit(q, &descs);
        let mut out = vec![0u8; used.min(reply_len) as usize];
        self.mem.read_slice(&mut out, GuestAddress(wa)).unwrap();
        (used, out)
    }

    /// A FUSE request: header for `opcode` on `nodeid`, then `body`.
    fn request_bytes(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> Vec<u8> {
        self.unique += 1;
        let h = InHeader {
            len: (HDR + body.len()) as u32,
            opcode: opcode as u32,
            unique: self.unique,
            nodeid,
            uid: self.cred.0,
            gid: self.cred.1,
            ..Default::default()
        };
        let mut req = h.as_slice().to_vec();
        req.extend_from_slice(body);
        req
    }

    /// Sends a request on the request queue; returns the reply's header and
    /// payload.
    fn call(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> (OutHeader, Vec<u8>) {
        let req = self.request_bytes(opcode, nodeid, body);
        let (used, reply) = self.raw(REQ, &req, 64 * 1024);
        assert!(used as usize >= OUT, "no reply header (used {used})");
        let out = OutHeader::from_slice(&reply[..OUT]).copied().unwrap();
        assert_eq!(out.unique, self.unique);
        assert_eq!(out.len, used);
        (out, reply[OUT..].to_vec())
    }

    fn init(&mut self) -> (OutHeader, Vec<u8>) {
        let init = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 128 * 1024,
            flags: 0,
        };
        self.call(Opcode::Init, 0, init.as_slice())
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let name = CString::new(name).unwrap();
        let (out, body) = self.call(Opcode::Lookup, parent, name.as_bytes_with_nul());
        if out.error != 0 {
            return Err(-out.error);
        }
        Ok(*EntryOut::from_slice(&body[..std::mem::size_of::<EntryOut>()]).unwrap())
    }

    fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        let o = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        let (out, body) = self.call(Opcode::Open, node, o.as_slice());
        if out.error != 0 {
            return Err(-out.error);
        }
        Ok(OpenOut::from_slice(&body[..std::mem::size_of::<OpenOut>()])
            .unwrap()
            .fh)
    }

    fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let r = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let (out, body) = self.call(Opcode::Read, node, r.as_slice());
        if out.error != 0 {
            return Err(-out.error);
        }
        Ok(body)
    }

    /// A name-carrying request body: `arg` then the NUL-terminated `name`.
    fn with_name(arg: &[u8], name: &str) -> Vec<u8> {
        let mut b = arg.to_vec();
        b.extend_from_slice(CString::new(name).unwrap().as_bytes_with_nul());
        b
    }

    fn error_of(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> i32 {
        -self.call(opcode, nodeid, body).0.error
    }
}

fn share() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("hello.txt"), b"hello from the host\n").unwrap();
    std::fs::create_dir(d.path().join("sub")).unwrap();
    std::fs::write(d.path().join("sub/inner"), b"inner").unwrap();
    d
}

#[test]
fn config_space_and_identity() {
    let d = share();
    let dev = Fs::new(FsConfig {
        tag: "rootfs".into(),
        host_dir: d.path().to_path_buf(),
        read_only: true,
        only: None,
        no_setid: false,
    })
    .unwrap();
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(dev.features(), features::VERSION_1);
    let mut cfg = [0xffu8; 40];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], b"rootfs");
    assert!(cfg[6..36].iter().all(|&b| b == 0));
    assert_eq!(u32::from_le_bytes(cfg[36..40].try_into().unwrap()), 1);
    // Bytes past the end are left alone (the transport zero-fills them);
    // offsets that overflow are harmless.
    let mut tail = [0u8; 8];
    dev.read_config(36, &mut tail);
    assert_eq!(tail, [1, 0, 0, 0, 0, 0, 0, 0]);
    let mut tail = [0u8; 8];
    dev.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);
    assert_eq!(dev.root(), std::fs::canonicalize(d.path()).unwrap());
}

#[test]
fn bad_shares_are_refused() {
    let d = share();
    let cfg = |tag: &str, dir: &Path| FsConfig {
        tag: tag.into(),
        host_dir: dir.to_path_buf(),
        read_only: false,
        only: None,
        no_setid: false,
    };
    for tag in ["", "a\0b", &"x".repeat(37)] {
        assert!(matches!(
            Fs::new(cfg(tag, d.path())),
            Err(FsError::InvalidTag(_))
        ));
    }
    assert!(Fs::new(cfg(&"x".repeat(36), d.path())).is_ok());
    assert!(matches!(
        Fs::new(cfg("t", &d.path().join("hello.txt"))),
        Err(FsError::NotADirectory(_))
    ));
    let e = Fs::new(cfg("t", &d.path().join("missing"))).unwrap_err();
    assert!(matches!(e, FsError::HostDir { .. }));
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn activation_needs_two_ready_queues() {
    let d = share();
    let mut dev = Fs::new(FsConfig {
        tag: "t".into(),
        host_dir: d.path().to_path_buf(),
        read_only: true,
        only: None,
        no_setid: false,
    })
    .unwrap();
    let mem = mem();
    let one = Activation {
        mem: mem.clone(),
        queues: vec![mock(&mem, 0).create_queue().unwrap()],
        queue_evts: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
        interrupt: Interrupt::new().unwrap(),
        acked_features: features::VERSION_1,
    };
    assert!(matches!(
        dev.activate(one),
        Err(ActivateError::QueueCount { expected: 2, .. })
    ));
    let not_ready = Activation {
        mem: mem.clone(),
        queues: vec![
            mock(&mem, 0).create_queue().unwrap(),
            Queue::new(QUEUE_SIZE).unwrap(),
        ],
        queue_evts: vec![
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ],
        interrupt: Interrupt::new().unwrap(),
        acked_features: features::VERSION_1,
    };
    assert!(matches!(
        dev.activate(not_ready),
        Err(ActivateError::QueueNotReady(1))
    ));
    assert!(!dev.is_running());
}

#[test]
fn init_handshake() {
    let d = share();
    let mut drv = Driver::without_init(d.path(), true);
    let (out, body) = drv.init();
    assert_eq!(out.error, 0);
    let init = InitOut::from_slice(&body[..std::mem::size_of::<InitOut>()]).unwrap();
    assert_eq!(init.major, 7);
    assert!(init.minor >= 27, "minor {}", init.minor);
    assert!(init.max_write > 0);
    // A guest that offers big writes gets 1 MiB requests (256 pages), and
    // the read and lookup concurrency options, not writeback caching.
    let mut drv = Driver::without_init(d.path(), false);
    let offered = FsOptions::BIG_WRITES
        | FsOptions::MAX_PAGES
        | FsOptions::ASYNC_READ
        | FsOptions::PARALLEL_DIROPS
        | FsOptions::WRITEBACK_CACHE
        | FsOptions::DO_READDIRPLUS;
    let init_in = InitIn {
        major: 7,
        minor: 31,
        max_readahead: 128 * 1024,
        flags: offered.bits() as u32,
    };
    let (out, body) = drv.call(Opcode::Init, 0, init_in.as_slice());
    assert_eq!(out.error, 0);
    let init = InitOut::from_slice(&body[..std::mem::size_of::<InitOut>()]).unwrap();
    assert_eq!((init.max_write, init.max_pages), (1 << 20, 256));
    let got = FsOptions::from_bits_truncate(u64::from(init.flags));
    assert!(
        got.contains(FsOptions::BIG_WRITES | FsOptions::ASYNC_READ | FsOptions::PARALLEL_DIROPS)
    );
    assert!(!got.contains(FsOptions::WRITEBACK_CACHE));
    // The root is there once INIT imported it.
    let (out, body) = drv.call(Opcode::Getattr, ROOT, GetattrIn::default().as_slice());
    assert_eq!(out.error, 0);
    let attr = AttrOut::from_slice(&body[..std::mem::size_of::<AttrOut>()]).unwrap();
    assert_eq!(attr.attr.mode & libc::S_IFMT, libc::S_IFDIR);
}

#[test]
fn lookup_getattr_open_read() {
    let d = share();
    let mut drv = Driver::new(d.path(), true);
    let e = drv.lookup(ROOT, "hello.txt").unwrap();
    assert_ne!(e.nodeid, ROOT);
    assert_eq!(e.attr.size, 20);
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFREG);

    let (out, body) = drv.call(Opcode::Getattr, e.nodeid, GetattrIn::default().as_slice());
    assert_eq!(out.error, 0);
    let attr = AttrOut::from_slice(&body[..std::mem::size_of::<AttrOut>()]).unwrap();
    assert_eq!(attr.attr.size, 20);
    assert_eq!(attr.attr.ino, e.attr.ino);

    let fh = drv.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(
        drv.read(e.nodeid, fh, 0, 4096).unwrap(),
        b"hello from the host\n"
    );
    assert_eq!(drv.read(e.nodeid, fh, 6, 4).unwrap(), b"from");
    assert_eq!(drv.read(e.nodeid, fh, 1000, 10).unwrap(), b"");

    // A file in a subdirectory.
    let sub = drv.lookup(ROOT, "sub").unwrap();
    let inner = drv.lookup(sub.nodeid, "inner").unwrap();
    let fh = drv.open(inner.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(drv.read(inner.nodeid, fh, 0, 100).unwrap(), b"inner");

    assert_eq!(drv.lookup(ROOT, "missing").unwrap_err(), libc::ENOENT);
}

/// Names in a READDIR reply.
fn dirent_names(mut b: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let hl = std::mem::size_of::<Dirent>();
    while b.len() >= hl {
        let de = Dirent::from_slice(&b[..hl]).copied().unwrap();
        let n = de.namelen as usize;
        names.push(String::from_utf8_lossy(&b[hl..hl + n]).into_owned());
        let rec = (hl + n + 7) & !7;
        b = &b[rec.min(b.len())..];
    }
    names
}

#[test]
fn readdir_lists_the_share() {
    let d = share();
    let mut drv = Driver::new(d.path(), true);
    let (out, body) = drv.call(
        Opcode::Opendir,
        ROOT,
        OpenIn {
            flags: libc::O_RDONLY as u32,
            fuse_flags: 0,
        }
        .as_slice(),
    );
    assert_eq!(out.error, 0);
    let fh = OpenOut::from_slice(&body[..16]).unwrap().fh;
    let r = ReadIn {
        fh,
        offset: 0,
        size: 4096,
        ..Default::default()
    };
    let (out, body) = drv.call(Opcode::Readdir, ROOT, r.as_slice());
    assert_eq!(out.error, 0);
    let mut names = dirent_names(&body);
    names.sort();
    assert_eq!(names, ["hello.txt", "sub"]);
}

#[test]
fn read_only_share_refuses_every_change_with_erofs() {
    let d = share();
    let mut drv = Driver::new(d.path(), true);
    let file = drv.lookup(ROOT, "hello.txt").unwrap().nodeid;
    let erofs = libc::EROFS;

    let create = CreateIn {
        flags: (libc::O_CREAT | libc::O_WRONLY) as u32,
        mode: 0o644 | libc::S_IFREG,
        umask: 0,
        fuse_flags: 0,
    };
    let body = Driver::with_name(create.as_slice(), "new");
    assert_eq!(drv.error_of(Opcode::Create, ROOT, &body), erofs);
    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    let body = Driver::with_name(mkdir.as_slice(), "newdir");
    assert_eq!(drv.error_of(Opcode::Mkdir, ROOT, &body), erofs);
    let mknod = MknodIn {
        mode: libc::S_IFIFO | 0o644,
        ..Default::default()
    };
    let body = Driver::with_name(mknod.as_slice(), "fifo");
    assert_eq!(drv.error_of(Opcode::Mknod, ROOT, &body), erofs);
    let body = CString::new("hello.txt").unwrap();
    assert_eq!(
        drv.error_of(Opcode::Unlink, ROOT, body.as_bytes_with_nul()),
        erofs
    );
    let body = CString::new("sub").unwrap();
    assert_eq!(
        drv.error_of(Opcode::Rmdir, ROOT, body.as_bytes_with_nul()),
        erofs
    );
    // SYMLINK: name, then target.
    let mut body = b"link\0".to_vec();
    body.extend_from_slice(b"hello.txt\0");
    assert_eq!(drv.error_of(Opcode::Symlink, ROOT, &body), erofs);
    // RENAME: newdir, old name, new name.
    let mut body = ROOT.to_le_bytes().to_vec();
    body.extend_from_slice(b"hello.txt\0moved\0");
    assert_eq!(drv.error_of(Opcode::Rename, ROOT, &body), erofs);
    // LINK: old node id, new name.
    let mut body = file.to_le_bytes().to_vec();
    body.extend_from_slice(b"hardlink\0");
    assert_eq!(drv.error_of(Opcode::Link, ROOT, &body), erofs);
    // SETATTR: truncate.
    let setattr = SetattrIn {
        valid: 1 << 3, // FATTR_SIZE
        size: 0,
        ..Default::default()
    };
    assert_eq!(
        drv.error_of(Opcode::Setattr, file, setattr.as_slice()),
        erofs
    );
    // SETXATTR: size, flags, name, value.
    let mut body = 1u32.to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(b"user.x\0v");
    assert_eq!(drv.error_of(Opcode::Setxattr, file, &body), erofs);
    let body = CString::new("user.x").unwrap();
    assert_eq!(
        drv.error_of(Opcode::Removexattr, file, body.as_bytes_with_nul()),
        erofs
    );
    // Opens for writing or truncation, and write access checks.
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(
            drv.open(file, flags).unwrap_err(),
            erofs,
            "flags {flags:#o}"
        );
    }
    let access = [libc::W_OK as u32, 0u32];
    let access: Vec<u8> = access.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(drv.error_of(Opcode::Access, file, &access), erofs);
    // WRITE through a read-only handle.
    let fh = drv.open(file, libc::O_RDONLY).unwrap();
    let w = WriteIn {
        fh,
        offset: 0,
        size: 3,
        ..Default::default()
    };
    let mut body = w.as_slice().to_vec();
    body.extend_from_slice(b"bad");
    assert_eq!(drv.error_of(Opcode::Write, file, &body), erofs);
    // FALLOCATE: fh, offset, length, mode.
    let mut body = fh.to_le_bytes().to_vec();
    body.extend_from_slice(&0u64.to_le_bytes());
    body.extend_from_slice(&4096u64.to_le_bytes());
    body.extend_from_slice(&[0; 8]);
    assert_eq!(drv.error_of(Opcode::Fallocate, file, &body), erofs);

    // Nothing changed on the host.
    let mut names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["hello.txt", "sub"]);
    assert_eq!(
        std::fs::read(d.path().join("hello.txt")).unwrap(),
        b"hello from the host\n"
    );
    // Reading still works.
    assert_eq!(drv.read(file, fh, 0, 5).unwrap(), b"hello");
}

#[test]
fn read_write_share_writes_reach_the_host() {
    let d = share();
    let mut drv = Driver::new(d.path(), false);
    let create = CreateIn {
        flags: (libc::O_CREAT | libc::O_RDWR) as u32,
        mode: 0o640 | libc::S_IFREG,
        umask: 0o022,
        fuse_flags: 0,
    };
    let body = Driver::with_name(create.as_slice(), "new.txt");
    let (out, reply) = drv.call(Opcode::Create, ROOT, &body);
    assert_eq!(out.error, 0);
    let e = EntryOut::from_slice(&reply[..std::mem::size_of::<EntryOut>()])
        .copied()
        .unwrap();
    let fh = OpenOut::from_slice(&reply[std::mem::size_of::<EntryOut>()..][..16])
        .unwrap()
        .fh;
    let w = WriteIn {
        fh,
        offset: 0,
        size: 5,
        ..Default::default()
    };
    let mut body = w.as_slice().to_vec();
    body.extend_from_slice(b"guest");
    let (out, _) = drv.call(Opcode::Write, e.nodeid, &body);
    assert_eq!(out.error, 0);
    assert_eq!(std::fs::read(d.path().join("new.txt")).unwrap(), b"guest");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.path().join("new.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);

    // Device nodes are refused (they would be device nodes on the host);
    // overlayfs's 0:0 whiteout is not.
    let blk = MknodIn {
        mode: libc::S_IFBLK | 0o600,
        rdev: (8 << 8) | 1,
        ..Default::default()
    };
    let body = Driver::with_name(blk.as_slice(), "sda1");
    assert_eq!(drv.error_of(Opcode::Mknod, ROOT, &body), libc::EPERM);
    let chr = MknodIn {
        mode: libc::S_IFCHR | 0o600,
        rdev: (1 << 8) | 3,
        ..Default::default()
    };
    let body = Driver::with_name(chr.as_slice(), "null");
    assert_eq!(drv.error_of(Opcode::Mknod, ROOT, &body), libc::EPERM);
    assert!(!d.path().join("sda1").exists() && !d.path().join("null").exists());
    // security.* xattrs (file capabilities) are refused.
    let mut body = 1u32.to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(b"security.capability\0v");
    assert_eq!(drv.error_of(Opcode::Setxattr, e.nodeid, &body), libc::EPERM);
    // Names that are not one path component are refused.
    let mkdir = MkdirIn {
        mode: 0o755,
        umask: 0,
    };
    for name in ["..", "a/b", "."] {
        let body = Driver::with_name(mkdir.as_slice(), name);
        assert_eq!(
            drv.error_of(Opcode::Mkdir, ROOT, &body),
            libc::EINVAL,
            "{name}"
        );
    }
}

#[test]
fn the_guest_cannot_leave_the_share() {
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("secret"), b"host secret").unwrap();
    let d = outer.path().join("share");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("inside"), b"inside").unwrap();
    std::os::unix::fs::symlink("/", d.join("to-root")).unwrap();
    std::os::unix::fs::symlink("../secret", d.join("to-secret")).unwrap();
    std::os::unix::fs::symlink("..", d.join("to-parent")).unwrap();
    let mut drv = Driver::new(&d, false);

    // `..` in the root is the root.
    let up = drv.lookup(ROOT, "..").unwrap();
    assert_eq!(up.nodeid, ROOT);
    assert_eq!(drv.lookup(up.nodeid, "secret").unwrap_err(), libc::ENOENT);
    assert!(drv.lookup(up.nodeid, "inside").is_ok());
    // Paths are not names.
    assert_eq!(drv.lookup(ROOT, "../secret").unwrap_err(), libc::EINVAL);
    assert_eq!(drv.lookup(ROOT, "/etc/passwd").unwrap_err(), libc::EINVAL);

    // Symlinks are looked up as links, never followed on the host: the
    // guest gets their text and resolves it in its own namespace.
    for (name, target) in [
        ("to-root", "/"),
        ("to-secret", "../secret"),
        ("to-parent", ".."),
    ] {
        let e = drv.lookup(ROOT, name).unwrap();
        assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK, "{name}");
        let (out, body) = drv.call(Opcode::Readlink, e.nodeid, &[]);
        assert_eq!(out.error, 0);
        assert_eq!(body, target.as_bytes());
        assert!(drv.open(e.nodeid, libc::O_RDONLY).is_err(), "{name}");
        assert!(drv.lookup(e.nodeid, "etc").is_err(), "{name}");
        assert!(drv.lookup(e.nodeid, "secret").is_err(), "{name}");
    }

    // A subdirectory's `..` is its parent in the share, not above it.
    std::fs::create_dir(d.join("dir")).unwrap();
    let dir = drv.lookup(ROOT, "dir").unwrap();
    let parent = drv.lookup(dir.nodeid, "..").unwrap();
    assert_eq!(parent.nodeid, ROOT);
    let parent2 = drv.lookup(parent.nodeid, "..").unwrap();
    assert_eq!(parent2.nodeid, ROOT);

    // Node ids the device never handed out are nothing.
    for node in [0, 2_000, u64::MAX] {
        assert!(drv.lookup(node, "secret").is_err());
        let (out, _) = drv.call(Opcode::Getattr, node, GetattrIn::default().as_slice());
        assert_ne!(out.error, 0, "node {node}");
    }
    // A hard link needs an inode of the share, and stays in it.
    let inside = drv.lookup(ROOT, "inside").unwrap();
    let mut body = inside.nodeid.to_le_bytes().to_vec();
    body.extend_from_slice(b"../escaped\0");
    assert_eq!(drv.error_of(Opcode::Link, ROOT, &body), libc::EINVAL);
    assert!(!outer.path().join("escaped").exists());
    // Renames too.
    let mut body = ROOT.to_le_bytes().to_vec();
    body.extend_from_slice(b"inside\0../moved\0");
    assert_eq!(drv.error_of(Opcode::Rename, ROOT, &body), libc::EINVAL);
    assert!(d.join("inside").exists());
    assert_eq!(
        std::fs::read(outer.path().join("secret")).unwrap(),
        b"host secret"
    );
}

#[test]
fn malformed_requests_get_errors_not_panics() {
    let d = share();
    let mut drv = Driver::new(d.path(), false);
    let file = drv.lookup(ROOT, "hello.txt").unwrap().nodeid;

    // Shorter than a FUSE header.
    let (used, _) = drv.raw(REQ, &[1, 2, 3], 4096);
    assert_eq!(used, 0);
    // No request at all: only a reply buffer.
    let wa = drv.alloc(4096);
    assert_eq!(drv.submit(REQ, &[(wa, 4096, W)]), 0);
    // No reply buffer.
    let req = drv.request_bytes(Opcode::Getattr, ROOT, GetattrIn::default().as_slice());
    let (used, _) = drv.raw(REQ, &req, 0);
    assert_eq!(used, 0);
    // A reply buffer too small for the reply.
    let (used, _) = drv.raw(REQ, &req, 8);
    assert_eq!(used, 0);
    // Buffers outside guest memory, or straddling its end.
    assert_eq!(drv.submit(REQ, &[(MEM_SIZE + 0x1000, 64, 0)]), 0);
    assert_eq!(
        drv.submit(REQ, &[(MEM_SIZE - 16, 64, 0), (BUF_BASE, 4096, W)]),
        0
    );
    assert_eq!(
        drv.submit(REQ, &[(u64::MAX - 8, u32::MAX, 0), (BUF_BASE, 4096, W)]),
        0
    );

    // A header that claims a huge length.
    let mut req = drv.request_bytes(Opcode::Getattr, ROOT, GetattrIn::default().as_slice());
    req[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let (used, reply) = drv.raw(REQ, &req, 4096);
    assert!(used as usize >= OUT);
    assert_ne!(OutHeader::from_slice(&reply[..OUT]).unwrap().error, 0);
    // A header whose length is shorter than the header, and one longer
    // than the buffers.
    for len in [0u32, 8, 10_000] {
        let mut req = drv.request_bytes(Opcode::Lookup, ROOT, b"hello.txt\0");
        req[..4].copy_from_slice(&len.to_le_bytes());
        let (used, reply) = drv.raw(REQ, &req, 4096);
        assert!(used as usize >= OUT, "len {len}");
        let out = OutHeader::from_slice(&reply[..OUT]).copied().unwrap();
        assert!(out.error != 0 || len == 10_000, "len {len}: {out:?}");
    }
    // Bodies shorter than the request's fixed part.
    for op in [
        Opcode::Read,
        Opcode::Write,
        Opcode::Open,
        Opcode::Setattr,
        Opcode::Create,
        Opcode::Mkdir,
        Opcode::Rename,
        Opcode::Link,
        Opcode::Setxattr,
        Opcode::Fallocate,
        Opcode::BatchForget,
        Opcode::Init,
    ] {
        let req = drv.request_bytes(op, file, &[0xff; 3]);
        let (used, reply) = drv.raw(REQ, &req, 4096);
        if matches!(op, Opcode::BatchForget) {
            // No reply, ever.
            assert_eq!(used, 0);
            continue;
        }
        // Every other request gets an error reply for its `unique`.
        assert!(used as usize >= OUT, "{op:?}");
        let out = OutHeader::from_slice(&reply[..OUT]).copied().unwrap();
        assert_ne!(out.error, 0, "{op:?}");
        assert_eq!(out.unique, drv.unique, "{op:?}");
    }
    // Names without their NUL.
    let (out, _) = drv.call(Opcode::Lookup, ROOT, b"hello.txt");
    assert_ne!(out.error, 0);
    // An unknown opcode.
    let (out, _) = drv.call(Opcode::Lookup, ROOT, b"x\0");
    assert_eq!(-out.error, libc::ENOENT);
    let mut req = drv.request_bytes(Opcode::Lookup, ROOT, b"x\0");
    req[4..8].copy_from_slice(&9999u32.to_le_bytes());
    let (used, reply) = drv.raw(REQ, &req, 4096);
    assert!(used as usize >= OUT);
    assert_eq!(
        -OutHeader::from_slice(&reply[..OUT]).unwrap().error,
        libc::ENOSYS
    );
    // Huge sizes and offsets, and a bogus handle.
    let fh = drv.open(file, libc::O_RDONLY).unwrap();
    let body = drv.read(file, fh, 0, u32::MAX);
    assert!(body.is_err() || body.unwrap().len() <= 64 * 1024);
    assert_eq!(
        drv.read(file, fh, u64::MAX - 1, 10).unwrap_or_default(),
        b""
    );
    assert!(drv.read(file, 0xdead_beef, 0, 10).is_err());
    let w = WriteIn {
        fh,
        offset: 0,
        size: u32::MAX,
        ..Default::default()
    };
    let mut body = w.as_slice().to_vec();
    body.extend_from_slice(b"short");
    let (out, _) = drv.call(Opcode::Write, file, &body);
    assert_ne!(out.error, 0);
    // FORGET of unknown nodes and huge counts, on the high-priority queue
    // (no reply).
    for node in [ROOT, file, 12345] {
        let req = drv.request_bytes(Opcode::Forget, node, &u64::MAX.to_le_bytes());
        let (used, _) = drv.raw(HIPRIO, &req, 0);
        assert_eq!(used, 0);
    }
    // The root survives FORGET; the device still serves.
    let (out, _) = drv.call(Opcode::Getattr, ROOT, GetattrIn::default().as_slice());
    assert_eq!(out.error, 0);
    assert!(drv.lookup(ROOT, "hello.txt").is_ok());
    assert!(drv.dev.is_running());
    assert_eq!(
        std::fs::read(d.path().join("hello.txt")).unwrap(),
        b"hello from the host\n"
    );
}

#[test]
fn reset_stops_the_worker_and_the_next_driver_starts_over() {
    let umask_before = umask();
    let d = share();
    let mut drv = Driver::new(d.path(), true);
    let file = drv.lookup(ROOT, "hello.txt").unwrap().nodeid;
    let fh = drv.open(file, libc::O_RDONLY).unwrap();
    assert!(drv.dev.is_running());
    drv.dev.reset();
    assert!(!drv.dev.is_running());
    // A second reset is harmless.
    drv.dev.reset();
    // The driver starts the device again: the old node ids and handles are
    // gone; INIT brings the root back.
    drv.activate();
    assert!(drv.dev.is_running());
    let (out, _) = drv.init();
    assert_eq!(out.error, 0);
    let (out, _) = drv.call(Opcode::Getattr, file, GetattrIn::default().as_slice());
    assert_ne!(out.error, 0);
    assert!(drv.read(file, fh, 0, 5).is_err());
    let file = drv.lookup(ROOT, "hello.txt").unwrap().nodeid;
    let fh = drv.open(file, libc::O_RDONLY).unwrap();
    assert_eq!(drv.read(file, fh, 0, 5).unwrap(), b"hello");
    // INIT and DESTROY set the umask to 0 in the worker thread only (the
    // process's stays).
    drop(drv);
    assert_eq!(umask(), umask_before);
}

/// The calling thread's umask, without changing it.
fn umask() -> String {
    std::fs::read_to_string("/proc/thread-self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_requests_never_panic_hang_or_leave_the_share() {
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("canary"), b"outside").unwrap();
    let dir = outer.path().join("share");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("f"), b"some file contents").unwrap();
    std::fs::create_dir(dir.join("d")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.join("l")).unwrap();
    let mut drv = Driver::new(&dir, false);
    // Node ids worth aiming at: the root and whatever lookups hand out.
    let mut nodes = vec![ROOT];
    for name in ["f", "d", "l", ".."] {
        nodes.push(drv.lookup(ROOT, name).unwrap().nodeid);
    }
    let panics_before = worker::caught_panics();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut served = 0;
    for i in 0..3000 {
        // Every opcode but FALLOCATE (a huge length could fill the host's
        // disk: a real quota concern, not a parsing one) and SETLKW (may
        // block, by design).
        let opcode = loop {
            let o = rng.below(52) as u32;
            if o != Opcode::Fallocate as u32 && o != Opcode::Setlkw as u32 {
                break o;
            }
        };
        let nodeid = match rng.below(4) {
            0 => rng.next(),
            _ => nodes[rng.below(nodes.len() as u64) as usize],
        };
        let body_len = rng.below(300) as usize;
        // Mostly small values (flags, sizes, offsets that make sense),
        // some random bytes.
        let mut body: Vec<u8> = (0..body_len)
            .map(|_| match rng.below(4) {
                0 => rng.next() as u8,
                1 => rng.below(8) as u8,
                _ => 0,
            })
            .collect();
        // Often a plausible name at the end, so name-taking requests get far.
        if rng.below(2) == 0 {
            let names: [&[u8]; 6] = [b"f", b"d", b"new", b"..", b"l", b"x/y"];
            body.extend_from_slice(names[rng.below(6) as usize]);
            body.push(0);
        }
        let mut h = InHeader {
            len: (HDR + body.len()) as u32,
            opcode,
            unique: i,
            nodeid,
            uid: 0,
            gid: 0,
            pid: 1,
            padding: 0,
        };
        if rng.below(8) == 0 {
            h.len = rng.next() as u32;
        }
        let mut req = h.as_slice().to_vec();
        req.extend_from_slice(&body);
        if rng.below(16) == 0 {
            req.truncate(rng.below(req.len() as u64) as usize);
        }
        let reply_len = [0, 8, 16, 100, 4096, 8192][rng.below(6) as usize];
        let q = if rng.below(8) == 0 { HIPRIO } else { REQ };
        let (used, reply) = drv.raw(q, &req, reply_len);
        assert!(used <= reply_len, "request {i}: used {used} > {reply_len}");
        if used as usize >= OUT {
            let out = OutHeader::from_slice(&reply[..OUT]).copied().unwrap();
            assert!(out.error <= 0, "request {i}: {out:?}");
            if out.error == 0 {
                served += 1;
            }
        }
        // After DESTROY (and now and then anyway) the driver starts over:
        // INIT, then fresh node ids.
        if opcode == Opcode::Destroy as u32 || rng.below(64) == 0 {
            drv.init();
            nodes.truncate(1);
            for name in ["f", "d", "l", "new", ".."] {
                if let Ok(e) = drv.lookup(ROOT, name) {
                    nodes.push(e.nodeid);
                }
            }
        }
    }
    assert_eq!(
        worker::caught_panics(),
        panics_before,
        "the server panicked"
    );
    eprintln!("{served} of 3000 random requests succeeded");
    // Enough get through the parsing to exercise the filesystem too.
    assert!(served > 100, "only {served} random requests succeeded");
    assert!(drv.dev.is_running());
    // Nothing appeared or changed next to the share.
    let mut names: Vec<_> = std::fs::read_dir(outer.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["canary", "share"]);
    assert_eq!(
        std::fs::read(outer.path().join("canary")).unwrap(),
        b"outside"
    );
    // The device still serves after all that.
    drv.init();
    let (out, _) = drv.call(Opcode::Getattr, ROOT, GetattrIn::default().as_slice());
    assert_eq!(out.error, 0);
}

#[test]
fn without_root_requests_run_as_husks_own_user() {
    use fuse_backend_rs::api::filesystem::{Context, FileSystem};
    let d = share();
    let root = std::fs::canonicalize(d.path()).unwrap();
    let pt = || {
        PassthroughFs::new(share::passthrough_config(root.to_str().unwrap().to_owned())).unwrap()
    };
    let guest = Context {
        uid: 1000,
        gid: 1000,
        pid: 1,
    };
    let mut ctx = guest;
    share::ShareFs::new(pt(), false, false, None, false)
        .id_remap(&mut ctx)
        .unwrap();
    assert_eq!((ctx.uid, ctx.gid), (0, 0));
    let mut ctx = guest;
    share::ShareFs::new(pt(), false, true, None, false)
        .id_remap(&mut ctx)
        .unwrap();
    assert_eq!((ctx.uid, ctx.gid), (1000, 1000));
}

// ---- The worker's jail, seen from the guest ----

impl Driver {
    fn create(&mut self, parent: u64, name: &str, mode: u32) -> Result<(EntryOut, u64), i32> {
        let create = CreateIn {
            flags: (libc::O_CREAT | libc::O_RDWR) as u32,
            mode: mode | libc::S_IFREG,
            umask: 0,
            fuse_flags: 0,
        };
        let body = Driver::with_name(create.as_slice(), name);
        let (out, reply) = self.call(Opcode::Create, parent, &body);
        if out.error != 0 {
            return Err(-out.error);
        }
        let e = EntryOut::from_slice(&reply[..std::mem::size_of::<EntryOut>()])
            .copied()
            .unwrap();
        let fh = OpenOut::from_slice(&reply[std::mem::size_of::<EntryOut>()..][..16])
            .unwrap()
            .fh;
        Ok((e, fh))
    }

    fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        let w = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        let mut body = w.as_slice().to_vec();
        body.extend_from_slice(data);
        let (out, reply) = self.call(Opcode::Write, node, &body);
        if out.error != 0 {
            return Err(-out.error);
        }
        Ok(u32::from_le_bytes(reply[..4].try_into().unwrap()))
    }

    /// An entry-returning request (MKNOD, MKDIR, SYMLINK, LINK).
    fn entry(&mut self, opcode: Opcode, node: u64, body: &[u8]) -> Result<EntryOut, i32> {
        let (out, reply) = self.call(opcode, node, body);
        if out.error != 0 {
            return Err(-out.error);
        }
        Ok(
            EntryOut::from_slice(&reply[..std::mem::size_of::<EntryOut>()])
                .copied()
                .unwrap(),
        )
    }

    fn mknod(&mut self, parent: u64, name: &str, mode: u32, rdev: u32) -> Result<EntryOut, i32> {
        let m = MknodIn {
            mode,
            rdev,
            ..Default::default()
        };
        self.entry(
            Opcode::Mknod,
            parent,
            &Driver::with_name(m.as_slice(), name),
        )
    }

    fn mkdir(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let m = MkdirIn {
            mode: 0o755,
            umask: 0,
        };
        self.entry(
            Opcode::Mkdir,
            parent,
            &Driver::with_name(m.as_slice(), name),
        )
    }

    fn symlink(&mut self, parent: u64, name: &str, target: &str) -> Result<EntryOut, i32> {
        let mut body = CString::new(name).unwrap().into_bytes_with_nul();
        body.extend_from_slice(CString::new(target).unwrap().as_bytes_with_nul());
        self.entry(Opcode::Symlink, parent, &body)
    }

    fn link(&mut self, node: u64, parent: u64, name: &str) -> Result<EntryOut, i32> {
        let body = Driver::with_name(&node.to_le_bytes(), name);
        self.entry(Opcode::Link, parent, &body)
    }

    /// RENAME2: old directory and name, new directory and name, flags.
    fn rename2(&mut self, olddir: u64, old: &str, newdir: u64, new: &str, flags: u32) -> i32 {
        let r = Rename2In {
            newdir,
            flags,
            padding: 0,
        };
        let mut body = Driver::with_name(r.as_slice(), old);
        body.extend_from_slice(CString::new(new).unwrap().as_bytes_with_nul());
        self.error_of(Opcode::Rename2, olddir, &body)
    }

    fn unlink(&mut self, parent: u64, name: &str) -> i32 {
        let n = CString::new(name).unwrap();
        self.error_of(Opcode::Unlink, parent, n.as_bytes_with_nul())
    }

    fn rmdir(&mut self, parent: u64, name: &str) -> i32 {
        let n = CString::new(name).unwrap();
        self.error_of(Opcode::Rmdir, parent, n.as_bytes_with_nul())
    }

    fn setxattr(&mut self, node: u64, name: &str, value: &[u8]) -> i32 {
        let s = SetxattrIn {
            size: value.len() as u32,
            flags: 0,
        };
        let mut body = Driver::with_name(s.as_slice(), name);
        body.extend_from_slice(value);
        self.error_of(Opcode::Setxattr, node, &body)
    }

    /// GETXATTR with room for `size` bytes (0: the value's size).
    fn getxattr(&mut self, node: u64, name: &str, size: u32) -> Result<Vec<u8>, i32> {
        let g = GetxattrIn { size, padding: 0 };
        let (out, reply) = self.call(
            Opcode::Getxattr,
            node,
            &Driver::with_name(g.as_slice(), name),
        );
        if out.error != 0 {
            return Err(-out.error);
        }
        Ok(reply)
    }

    fn listxattr(&mut self, node: u64) -> Result<Vec<u8>, i32> {
        let g = GetxattrIn {
            size: 4096,
            padding: 0,
        };
        let (out, reply) = self.call(Opcode::Listxattr, node, g.as_slice());
        if out.error != 0 {
            return Err(-out.error);
        }
        Ok(reply)
    }

    fn removexattr(&mut self, node: u64, name: &str) -> i32 {
        let n = CString::new(name).unwrap();
        self.error_of(Opcode::Removexattr, node, n.as_bytes_with_nul())
    }

    /// The names OPENDIR then READDIR (or READDIRPLUS) of `node` lists,
    /// sorted, reading until an empty reply.
    fn list(&mut self, node: u64, plus: bool) -> Vec<String> {
        let (out, body) = self.call(
            Opcode::Opendir,
            node,
            OpenIn {
                flags: libc::O_RDONLY as u32,
                fuse_flags: 0,
            }
            .as_slice(),
        );
        assert_eq!(out.error, 0);
        let fh = OpenOut::from_slice(&body[..16]).unwrap().fh;
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let r = ReadIn {
                fh,
                offset,
                size: 4096,
                ..Default::default()
            };
            let op = if plus {
                Opcode::Readdirplus
            } else {
                Opcode::Readdir
            };
            let (out, body) = self.call(op, node, r.as_slice());
            assert_eq!(out.error, 0);
            let entries = if plus {
                direntplus(&body)
            } else {
                dirents(&body)
            };
            let Some(&(_, last)) = entries.last() else {
                break;
            };
            offset = last;
            names.extend(entries.into_iter().map(|(n, _)| n));
        }
        let release = fuse_backend_rs::abi::fuse_abi::ReleaseIn {
            fh,
            ..Default::default()
        };
        assert_eq!(
            self.error_of(Opcode::Releasedir, node, release.as_slice()),
            0
        );
        names.sort();
        names
    }
}

/// Names and next offsets in a READDIR reply.
fn dirents(mut b: &[u8]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let hl = std::mem::size_of::<Dirent>();
    while b.len() >= hl {
        let de = Dirent::from_slice(&b[..hl]).copied().unwrap();
        let n = de.namelen as usize;
        out.push((String::from_utf8_lossy(&b[hl..hl + n]).into_owned(), de.off));
        let rec = (hl + n + 7) & !7;
        b = &b[rec.min(b.len())..];
    }
    out
}

/// Names and next offsets in a READDIRPLUS reply (each entry an
/// `EntryOut` then a `Dirent`).
fn direntplus(mut b: &[u8]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let el = std::mem::size_of::<EntryOut>();
    let hl = std::mem::size_of::<Dirent>();
    while b.len() >= el + hl {
        let de = Dirent::from_slice(&b[el..el + hl]).copied().unwrap();
        let n = de.namelen as usize;
        out.push((
            String::from_utf8_lossy(&b[el + hl..el + hl + n]).into_owned(),
            de.off,
        ));
        let rec = (el + hl + n + 7) & !7;
        b = &b[rec.min(b.len())..];
    }
    out
}

/// A host file's extended attribute `name`, if it has one.
fn host_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = [0u8; 256];
    // SAFETY: valid NUL-terminated strings; the kernel writes at most
    // `buf.len()` bytes into `buf`.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

#[test]
fn overlay_style_operations_work_in_the_jailed_worker() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if !require_root(
        "overlay_style_operations_work_in_the_jailed_worker",
        "the worker takes the guest caller's uid/gid (setresuid, CAP_SETUID) and root's trusted.* is refused",
    ) {
        return;
    }
    let d = share();
    let p = d.path();
    // Guest users may create in the root (as in a container's upper dir).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut drv = Driver::new(p, false);

    // overlayfs's whiteout: a 0:0 character device (no CAP_MKNOD needed).
    let wh = drv.mknod(ROOT, "wh", libc::S_IFCHR | 0o600, 0).unwrap();
    assert_eq!(wh.attr.mode & libc::S_IFMT, libc::S_IFCHR);
    let m = std::fs::symlink_metadata(p.join("wh")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), 0);

    // A guest user's creations belong to it on the host (the worker
    // switches its effective ids: setresuid/setresgid, CAP_SETUID/GID).
    drv.cred = (1000, 1000);
    let work = drv.mkdir(ROOT, "work").unwrap();
    let (f, fh) = drv.create(work.nodeid, "f", 0o644).unwrap();
    assert_eq!(drv.write(f.nodeid, fh, 0, b"data").unwrap(), 4);
    drv.symlink(ROOT, "ln", "hello.txt").unwrap();
    let fifo = drv.mknod(ROOT, "fifo", libc::S_IFIFO | 0o644, 0).unwrap();
    drv.cred = (0, 0);
    for name in ["work", "work/f", "ln", "fifo"] {
        let m = std::fs::symlink_metadata(p.join(name)).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 1000), "{name}");
    }
    assert_eq!(std::fs::read(p.join("work/f")).unwrap(), b"data");
    assert_eq!(
        std::fs::read_link(p.join("ln")).unwrap(),
        Path::new("hello.txt")
    );
    assert_eq!(fifo.attr.mode & libc::S_IFMT, libc::S_IFIFO);

    // A hard link of a file looked up before those credential switches
    // (the reason the worker keeps CAP_DAC_READ_SEARCH).
    let hello = drv.lookup(ROOT, "hello.txt").unwrap();
    drv.cred = (1000, 1000);
    drv.mkdir(ROOT, "churn").unwrap();
    drv.cred = (0, 0);
    let hard = drv.link(hello.nodeid, ROOT, "hard").unwrap();
    assert_eq!(hard.attr.ino, hello.attr.ino);
    assert_eq!(std::fs::metadata(p.join("hello.txt")).unwrap().nlink(), 2);

    // RENAME2 with RENAME_WHITEOUT (overlayfs's copy-up and removal): the
    // old name becomes a whiteout.
    assert_eq!(
        drv.rename2(ROOT, "hard", work.nodeid, "moved", libc::RENAME_WHITEOUT),
        0
    );
    assert_eq!(
        std::fs::read(p.join("work/moved")).unwrap(),
        b"hello from the host\n"
    );
    let m = std::fs::symlink_metadata(p.join("hard")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), 0);
    // RENAME_NOREPLACE and RENAME_EXCHANGE too.
    assert_eq!(
        drv.rename2(ROOT, "ln", ROOT, "hello.txt", libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(
        drv.rename2(ROOT, "ln", ROOT, "hard", libc::RENAME_EXCHANGE),
        0
    );
    assert!(
        std::fs::symlink_metadata(p.join("hard"))
            .unwrap()
            .is_symlink()
    );

    // user.* extended attributes (overlayfs's `userxattr` metadata).
    assert_eq!(drv.setxattr(work.nodeid, "user.overlay.opaque", b"y"), 0);
    assert_eq!(
        host_xattr(&p.join("work"), "user.overlay.opaque").unwrap(),
        b"y"
    );
    let size = drv.getxattr(work.nodeid, "user.overlay.opaque", 0).unwrap();
    assert_eq!(u32::from_le_bytes(size[..4].try_into().unwrap()), 1);
    assert_eq!(
        drv.getxattr(work.nodeid, "user.overlay.opaque", 64)
            .unwrap(),
        b"y"
    );
    let names = drv.listxattr(work.nodeid).unwrap();
    assert!(
        names
            .split(|&b| b == 0)
            .any(|n| n == b"user.overlay.opaque"),
        "{names:?}"
    );
    assert_eq!(drv.removexattr(work.nodeid, "user.overlay.opaque"), 0);
    assert!(host_xattr(&p.join("work"), "user.overlay.opaque").is_none());
    // trusted.* needs CAP_SYS_ADMIN, which the worker does not have.
    assert_eq!(
        drv.setxattr(work.nodeid, "trusted.overlay.opaque", b"y"),
        libc::EPERM
    );

    // Removal.
    assert_eq!(drv.unlink(ROOT, "wh"), 0);
    assert_eq!(drv.unlink(ROOT, "hard"), 0);
    assert_eq!(drv.unlink(work.nodeid, "f"), 0);
    assert_eq!(drv.unlink(work.nodeid, "moved"), 0);
    assert_eq!(drv.rmdir(ROOT, "churn"), 0);
    assert_eq!(drv.rmdir(ROOT, "work"), 0);
    assert_eq!(drv.rmdir(ROOT, "sub"), libc::ENOTEMPTY);
    let mut names: Vec<_> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    // "ln" is the whiteout RENAME_EXCHANGE swapped in.
    assert_eq!(names, ["fifo", "hello.txt", "ln", "sub"]);
    assert_eq!(std::fs::metadata(p.join("hello.txt")).unwrap().nlink(), 1);

    // Attributes, sync, allocation, statfs.
    let (f, fh) = drv.create(ROOT, "g", 0o600).unwrap();
    let setattr = SetattrIn {
        valid: (1 << 0) | (1 << 3), // FATTR_MODE | FATTR_SIZE
        mode: 0o640,
        size: 3,
        ..Default::default()
    };
    assert_eq!(
        drv.error_of(Opcode::Setattr, f.nodeid, setattr.as_slice()),
        0
    );
    let m = std::fs::metadata(p.join("g")).unwrap();
    assert_eq!((m.mode() & 0o777, m.len()), (0o640, 3));
    let fsync = FsyncIn {
        fh,
        fsync_flags: 0,
        padding: 0,
    };
    assert_eq!(drv.error_of(Opcode::Fsync, f.nodeid, fsync.as_slice()), 0);
    let fa = FallocateIn {
        fh,
        offset: 0,
        length: 8192,
        mode: 0,
        padding: 0,
    };
    assert_eq!(drv.error_of(Opcode::Fallocate, f.nodeid, fa.as_slice()), 0);
    assert_eq!(std::fs::metadata(p.join("g")).unwrap().len(), 8192);
    assert_eq!(drv.error_of(Opcode::Statfs, ROOT, &[]), 0);
    assert_eq!(
        drv.list(ROOT, false),
        ["fifo", "g", "hello.txt", "ln", "sub"]
    );
    assert_eq!(
        drv.list(ROOT, true),
        ["fifo", "g", "hello.txt", "ln", "sub"]
    );
    assert!(drv.dev.is_running());
}

fn unsafe_free_is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a check that needs root can run. When not root it says so on
/// stderr (`SKIPPED <test>: needs root (<reason>)`) and fails the test
/// unless `HUSK_ALLOW_SKIP=1`: a skip is never a silent "ok".
fn require_root(test: &str, reason: &str) -> bool {
    if unsafe_free_is_root() {
        return true;
    }
    eprintln!("SKIPPED {test}: needs root ({reason})");
    assert!(
        std::env::var_os("HUSK_ALLOW_SKIP").is_some_and(|v| v == "1"),
        "SKIPPED {test}: needs root ({reason}); run as root, or set HUSK_ALLOW_SKIP=1 to accept the skip"
    );
    false
}

#[test]
fn a_device_whose_worker_cannot_be_jailed_does_not_start() {
    let d = share();
    let mut dev = Fs::new(FsConfig {
        tag: "t".into(),
        host_dir: d.path().to_path_buf(),
        read_only: false,
        only: None,
        no_setid: false,
    })
    .unwrap();
    dev.jail = Arc::new(jail::Jail::broken());
    let mem = mem();
    let activation = Activation {
        mem: mem.clone(),
        queues: (0..2)
            .map(|i| mock(&mem, i).create_queue().unwrap())
            .collect(),
        queue_evts: (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect(),
        interrupt: Interrupt::new().unwrap(),
        acked_features: features::VERSION_1,
    };
    let e = dev.activate(activation).unwrap_err();
    assert!(
        matches!(e, ActivateError::Jail(JailError::Seccomp(_))),
        "{e:?}"
    );
    assert!(std::error::Error::source(&e).is_some());
    assert!(!dev.is_running());
}

// ---- Single-file shares ----

/// A directory with the file to share and a sibling that must stay hidden.
fn file_share() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("file.txt"), b"shared\n").unwrap();
    std::fs::write(d.path().join("secret.txt"), b"secret\n").unwrap();
    std::fs::create_dir(d.path().join("secret-dir")).unwrap();
    d
}

/// The names in `dir` on the host, sorted.
fn host_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_single_file_share_shows_only_its_file() {
    let d = file_share();
    let mut drv = Driver::only(d.path(), "file.txt", false);
    for name in ["secret.txt", "secret-dir", "missing"] {
        assert_eq!(drv.lookup(ROOT, name).unwrap_err(), libc::ENOENT, "{name}");
    }
    // `.` and `..` are the root itself.
    assert_eq!(drv.lookup(ROOT, "..").unwrap().nodeid, ROOT);
    assert_eq!(drv.lookup(ROOT, "..").unwrap().nodeid, ROOT);
    assert_eq!(drv.list(ROOT, false), ["file.txt"]);
    assert_eq!(drv.list(ROOT, true), ["file.txt"]);

    // The file works as in a directory share, and writes reach the host.
    let f = drv.lookup(ROOT, "file.txt").unwrap();
    assert_eq!(f.attr.mode & libc::S_IFMT, libc::S_IFREG);
    let fh = drv.open(f.nodeid, libc::O_RDWR).unwrap();
    assert_eq!(drv.read(f.nodeid, fh, 0, 100).unwrap(), b"shared\n");
    assert_eq!(drv.write(f.nodeid, fh, 0, b"SHARED").unwrap(), 6);
    assert_eq!(
        std::fs::read(d.path().join("file.txt")).unwrap(),
        b"SHARED\n"
    );
    let setattr = SetattrIn {
        valid: 1 << 3, // FATTR_SIZE
        size: 3,
        ..Default::default()
    };
    assert_eq!(
        drv.error_of(Opcode::Setattr, f.nodeid, setattr.as_slice()),
        0
    );
    assert_eq!(std::fs::read(d.path().join("file.txt")).unwrap(), b"SHA");
    assert_eq!(drv.setxattr(f.nodeid, "user.x", b"1"), 0);
    assert_eq!(drv.removexattr(f.nodeid, "user.x"), 0);

    // Nothing is created, removed, renamed or linked in the root, and the
    // root's own attributes stay.
    assert_eq!(drv.create(ROOT, "new", 0o644).unwrap_err(), libc::EPERM);
    assert_eq!(drv.mkdir(ROOT, "dir").unwrap_err(), libc::EPERM);
    assert_eq!(
        drv.mknod(ROOT, "wh", libc::S_IFCHR | 0o600, 0).unwrap_err(),
        libc::EPERM
    );
    assert_eq!(
        drv.symlink(ROOT, "ln", "file.txt").unwrap_err(),
        libc::EPERM
    );
    assert_eq!(drv.link(f.nodeid, ROOT, "hard").unwrap_err(), libc::EPERM);
    assert_eq!(drv.unlink(ROOT, "file.txt"), libc::EPERM);
    assert_eq!(drv.unlink(ROOT, "secret.txt"), libc::EPERM);
    assert_eq!(drv.rmdir(ROOT, "secret-dir"), libc::EPERM);
    for flags in [
        0,
        libc::RENAME_NOREPLACE,
        libc::RENAME_EXCHANGE,
        libc::RENAME_WHITEOUT,
    ] {
        assert_eq!(
            drv.rename2(ROOT, "file.txt", ROOT, "renamed", flags),
            libc::EPERM
        );
        assert_eq!(
            drv.rename2(ROOT, "secret.txt", ROOT, "file.txt", flags),
            libc::EPERM
        );
    }
    let mut body = ROOT.to_le_bytes().to_vec();
    body.extend_from_slice(b"file.txt\0moved\0");
    assert_eq!(drv.error_of(Opcode::Rename, ROOT, &body), libc::EPERM);
    let chmod = SetattrIn {
        valid: 1 << 0, // FATTR_MODE
        mode: 0o777,
        ..Default::default()
    };
    assert_eq!(
        drv.error_of(Opcode::Setattr, ROOT, chmod.as_slice()),
        libc::EPERM
    );
    assert_eq!(drv.setxattr(ROOT, "user.x", b"1"), libc::EPERM);
    assert_eq!(drv.removexattr(ROOT, "user.x"), libc::EPERM);
    // Reading the root's attributes is fine.
    let (out, _) = drv.call(Opcode::Getattr, ROOT, GetattrIn::default().as_slice());
    assert_eq!(out.error, 0);

    assert_eq!(
        host_names(d.path()),
        ["file.txt", "secret-dir", "secret.txt"]
    );
    assert_eq!(
        std::fs::read(d.path().join("secret.txt")).unwrap(),
        b"secret\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.path()).unwrap().permissions().mode();
    assert_ne!(mode & 0o777, 0o777);

    // Listing the root never handed out a sibling's node id: node ids are
    // sequential, and the ones next to the file's are nothing.
    for node in f.nodeid + 1..f.nodeid + 8 {
        let (out, _) = drv.call(Opcode::Getattr, node, GetattrIn::default().as_slice());
        assert_ne!(out.error, 0, "node {node}");
    }
    assert!(drv.dev.is_running());
}

#[test]
fn a_read_only_single_file_share_refuses_writes_with_erofs() {
    let d = file_share();
    let mut drv = Driver::only(d.path(), "file.txt", true);
    let f = drv.lookup(ROOT, "file.txt").unwrap();
    assert_eq!(drv.open(f.nodeid, libc::O_RDWR).unwrap_err(), libc::EROFS);
    let fh = drv.open(f.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(drv.read(f.nodeid, fh, 0, 100).unwrap(), b"shared\n");
    assert_eq!(drv.write(f.nodeid, fh, 0, b"x").unwrap_err(), libc::EROFS);
    assert_eq!(drv.create(ROOT, "new", 0o644).unwrap_err(), libc::EROFS);
    assert_eq!(drv.unlink(ROOT, "file.txt"), libc::EROFS);
    assert_eq!(
        drv.rename2(ROOT, "file.txt", ROOT, "renamed", 0),
        libc::EROFS
    );
    assert_eq!(drv.setxattr(f.nodeid, "user.x", b"1"), libc::EROFS);
    assert_eq!(drv.lookup(ROOT, "secret.txt").unwrap_err(), libc::ENOENT);
    assert_eq!(drv.list(ROOT, true), ["file.txt"]);
    assert_eq!(
        host_names(d.path()),
        ["file.txt", "secret-dir", "secret.txt"]
    );
    assert_eq!(
        std::fs::read(d.path().join("file.txt")).unwrap(),
        b"shared\n"
    );
}

#[test]
fn a_single_file_share_never_follows_a_symlink_swapped_in_on_the_host() {
    let d = file_share();
    let mut drv = Driver::only(d.path(), "file.txt", false);
    // The host replaces the file with a link to its sibling, then with a
    // link out of the directory.
    std::fs::remove_file(d.path().join("file.txt")).unwrap();
    std::os::unix::fs::symlink("secret.txt", d.path().join("file.txt")).unwrap();
    let e = drv.lookup(ROOT, "file.txt").unwrap();
    assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert!(drv.open(e.nodeid, libc::O_RDONLY).is_err());
    let (out, body) = drv.call(Opcode::Readlink, e.nodeid, &[]);
    assert_eq!(out.error, 0);
    assert_eq!(body, b"secret.txt");
    // The guest resolves that in its own namespace: in the share's root,
    // where there is no such name.
    assert_eq!(drv.lookup(ROOT, "secret.txt").unwrap_err(), libc::ENOENT);
    assert_eq!(drv.list(ROOT, false), ["file.txt"]);
    // Gone from the host: an empty root.
    std::fs::remove_file(d.path().join("file.txt")).unwrap();
    assert_eq!(drv.lookup(ROOT, "file.txt").unwrap_err(), libc::ENOENT);
    assert!(drv.list(ROOT, true).is_empty());
}

#[test]
fn single_file_shares_are_checked() {
    let d = file_share();
    let cfg = |only: &str| FsConfig {
        tag: "t".into(),
        host_dir: d.path().to_path_buf(),
        read_only: false,
        only: Some(only.into()),
        no_setid: false,
    };
    for bad in ["", ".", "..", "a/b", "/file.txt", "file.txt\0"] {
        assert!(
            matches!(Fs::new(cfg(bad)), Err(FsError::InvalidOnly(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        Fs::new(cfg("secret-dir")),
        Err(FsError::NotAFile(_))
    ));
    std::os::unix::fs::symlink("file.txt", d.path().join("link")).unwrap();
    assert!(matches!(Fs::new(cfg("link")), Err(FsError::NotAFile(_))));
    assert!(matches!(
        Fs::new(cfg("missing")),
        Err(FsError::HostDir { .. })
    ));
    let dev = Fs::new(cfg("file.txt")).unwrap();
    assert_eq!(dev.config().only.as_deref(), Some("file.txt".as_ref()));
}

/// With `no_setid` (volumes), CREATE, MKNOD, MKDIR and SETATTR never leave
/// a set-user-ID or set-group-ID file on the host (a set-group-ID directory
/// is fine); without it (the container's own layer), modes are kept.
#[test]
fn no_setid_shares_keep_setid_bits_off_the_host() {
    use std::os::unix::fs::PermissionsExt;
    let host_mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    for no_setid in [true, false] {
        let d = share();
        let mut drv = Driver::started(FsConfig {
            tag: "share".into(),
            host_dir: d.path().to_path_buf(),
            read_only: false,
            only: None,
            no_setid,
        });
        assert_eq!(drv.init().0.error, 0);
        let create = CreateIn {
            flags: (libc::O_CREAT | libc::O_RDWR) as u32,
            mode: 0o6755 | libc::S_IFREG,
            umask: 0,
            fuse_flags: 0,
        };
        let body = Driver::with_name(create.as_slice(), "suid");
        let (out, reply) = drv.call(Opcode::Create, ROOT, &body);
        assert_eq!(out.error, 0);
        let file = EntryOut::from_slice(&reply[..std::mem::size_of::<EntryOut>()])
            .unwrap()
            .nodeid;
        let mknod = MknodIn {
            mode: libc::S_IFREG | 0o4755,
            ..Default::default()
        };
        let body = Driver::with_name(mknod.as_slice(), "suid2");
        assert_eq!(drv.call(Opcode::Mknod, ROOT, &body).0.error, 0);
        let mkdir = MkdirIn {
            mode: 0o6775,
            umask: 0,
        };
        let body = Driver::with_name(mkdir.as_slice(), "dir");
        let (out, reply) = drv.call(Opcode::Mkdir, ROOT, &body);
        assert_eq!(out.error, 0);
        let dir = EntryOut::from_slice(&reply[..std::mem::size_of::<EntryOut>()])
            .unwrap()
            .nodeid;
        let want_file = if no_setid { 0o755 } else { 0o6755 };
        // mkdir(2) takes only the 01777 bits of a mode, whatever the share.
        let want_dir = 0o775;
        assert_eq!(host_mode(&d.path().join("suid")), want_file, "{no_setid}");
        assert_eq!(
            host_mode(&d.path().join("suid2")),
            want_file & 0o4777,
            "{no_setid}"
        );
        assert_eq!(host_mode(&d.path().join("dir")), want_dir, "{no_setid}");
        // chmod: on a file and on the directory.
        for (node, path, mode, want) in [
            (file, "suid", 0o4711, if no_setid { 0o711 } else { 0o4711 }),
            (dir, "dir", 0o6700, if no_setid { 0o2700 } else { 0o6700 }),
        ] {
            let setattr = SetattrIn {
                valid: 1, // FATTR_MODE
                mode,
                ..Default::default()
            };
            let (out, _) = drv.call(Opcode::Setattr, node, setattr.as_slice());
            assert_eq!(out.error, 0);
            assert_eq!(host_mode(&d.path().join(path)), want, "{path} {no_setid}");
        }
    }
}
