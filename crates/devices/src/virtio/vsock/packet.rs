//! The vsock packet header (virtio 1.2, 5.10.6) and how packets are taken
//! from and put into descriptor chains.
//!
//! Parsing uses the `virtio-vsock` crate's [`VsockPacket`]: it checks the
//! chain's shape (header in a device-readable head of at least 44 bytes for
//! TX, device-writable buffers for RX, data in the head or in one following
//! descriptor), that every buffer lies in guest memory, and caps the data
//! length; it copies the header once, so the guest cannot change it under
//! us. Chains with data spread over several descriptors are rejected.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::{PKT_HEADER_SIZE, VsockPacket};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, GuestMemory};

/// Header size in bytes.
pub const HDR_LEN: usize = PKT_HEADER_SIZE;

/// `type`: a stream socket (the only type husk supports).
pub const TYPE_STREAM: u16 = 1;

/// Connection request.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection refused or aborted.
pub const OP_RST: u16 = 3;
/// The sender will not receive and/or send any more (see `SHUTDOWN_*`).
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// The sender's buffer space (`buf_alloc`, `fwd_cnt`) changed.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// The sender asks for a credit update.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// `flags` of `OP_SHUTDOWN`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `flags` of `OP_SHUTDOWN`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// A vsock header, in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags.
    pub flags: u32,
    /// The sender's receive buffer size for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever.
    pub fwd_cnt: u32,
}

impl Header {
    /// The header of a parsed packet.
    pub fn of<B: BitmapSlice>(p: &VsockPacket<'_, B>) -> Self {
        Self {
            src_cid: p.src_cid(),
            dst_cid: p.dst_cid(),
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            len: p.len(),
            type_: p.type_(),
            op: p.op(),
            flags: p.flags(),
            buf_alloc: p.buf_alloc(),
            fwd_cnt: p.fwd_cnt(),
        }
    }

    /// The little-endian wire form.
    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Parses the wire form.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or_default());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Writes this header into an RX packet's header buffer.
    pub fn write_to<B: BitmapSlice>(
        self,
        p: &mut VsockPacket<'_, B>,
    ) -> Result<(), virtio_vsock::packet::Error> {
        p.set_header_from_raw(&self.to_bytes())
    }

    /// A human-readable name of `op`, for logs.
    pub fn op_name(&self) -> &'static str {
        match self.op {
            OP_REQUEST => "REQUEST",
            OP_RESPONSE => "RESPONSE",
            OP_RST => "RST",
            OP_SHUTDOWN => "SHUTDOWN",
            OP_RW => "RW",
            OP_CREDIT_UPDATE => "CREDIT_UPDATE",
            OP_CREDIT_REQUEST => "CREDIT_REQUEST",
            _ => "unknown",
        }
    }
}

/// Best effort: the header at the head of a TX chain that
/// [`VsockPacket::from_tx_virtq_chain`] refused, so the connection it
/// belongs to can be reset rather than silently lose data. `None` if even
/// the header is not readable.
pub fn peek_tx_header<M>(mut chain: DescriptorChain<M>) -> Option<Header>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let head = chain.next()?;
    if head.is_write_only() || (head.len() as usize) < HDR_LEN {
        return None;
    }
    let mut b = [0u8; HDR_LEN];
    chain.memory().read_slice(&mut b, head.addr()).ok()?;
    Some(Header::from_bytes(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_has_the_spec_layout() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 1024,
            len: 5,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: SHUTDOWN_BOTH,
            buf_alloc: 0x4_0000,
            fwd_cnt: 7,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[20..24], &[0, 4, 0, 0]);
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(Header::from_bytes(&b), h);
        assert_eq!(h.op_name(), "RW");
        assert_eq!(Header { op: 99, ..h }.op_name(), "unknown");
    }
}
