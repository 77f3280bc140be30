//! FUSE over io_uring (chironfs addition; Linux 6.14+, `fuse.enable_uring=1`).
//!
//! With it the kernel keeps one request queue per CPU and hands a request to a ring entry of
//! the caller's CPU. Each queue is served by a few threads pinned to that CPU, each with its
//! own ring and one registered entry: a request wakes a thread on the CPU that sent it (no
//! cross-CPU wake-up, which is about half the cost of a small request in a VM), and a thread
//! blocked on a slow replica holds up only its own entry.
//!
//! Forgets, interrupts and notification replies still come through read(2) on /dev/fuse, so
//! the ordinary event loop threads keep running beside these; once a ring serves, one of them
//! stays and reads at a slow pace (`RingState`, `FORGET_PACE`).
//!
//! An entry is one buffer: the 288-byte `fuse_uring_req_header` (in/out header, per-op
//! struct, ring trailer), room to rebuild the request contiguously, then the payload. The
//! request is rebuilt as read(2) would have delivered it (header, op struct, payload) so the
//! parser and `dispatch` serve both transports unchanged.

// The crate allows it for upstream's code (src/lib.rs); this file is chironfs's.
#![warn(clippy::io_other_error)]

use std::io;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::warn;

use crate::Filesystem;
use crate::channel::ChannelSender;
use crate::ll;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;

// The kernel ABI (include/uapi/linux/fuse.h, 7.42, Linux 6.14), written by hand: `tests`
// checks every value against a mirror of the kernel's structs.

/// `sizeof(struct fuse_uring_req_header)`: in_out[128], op_in[128], fuse_uring_ent_in_out.
const HEADER: usize = 288;
/// Offset and size of the per-op struct area (`op_in`).
const OP_IN_AT: usize = 128;
const OP_IN: usize = 128;
/// Offsets in `fuse_uring_req_header` of `ring_ent_in_out.commit_id` and `.payload_sz`.
const ENT_COMMIT_ID: usize = 256 + 8;
const ENT_PAYLOAD_SZ: usize = 256 + 16;
/// Room before the payload for the rebuilt `fuse_in_header` (40) and per-op struct (<= 128).
const SCRATCH: usize = 256;
const PAYLOAD_AT: usize = HEADER + SCRATCH;
/// `sizeof(struct fuse_in_header)` and `sizeof(struct fuse_out_header)`, at the start of
/// `in_out`, and their fields read or written here: `len` (both), `unique` (both), `error`.
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
const HDR_LEN: usize = 0;
const HDR_UNIQUE: usize = 8;
const OUT_ERROR: usize = 4;

/// `enum fuse_uring_cmd`, the SQE's `cmd_op`.
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// Offsets of `commit_id` and `qid` in `struct fuse_uring_cmd_req`, the SQE's command area.
const CMD_REQ_COMMIT_ID: usize = 8;
const CMD_REQ_QID: usize = 16;
/// Offset of `len` in `struct io_uring_sqe` (include/uapi/linux/io_uring.h): for these
/// commands the number of iovecs `addr` points at.
const SQE_LEN: usize = 24;

/// How long the /dev/fuse reader waits between reads once the rings serve. Only forgets
/// (and interrupts, which fuser answers ENOSYS once) still come that way: waiting lets them
/// pile up into one BATCH_FORGET instead of waking a thread on another CPU for every
/// forgotten inode (one per deleted file).
pub(crate) const FORGET_PACE: std::time::Duration = std::time::Duration::from_millis(5);

/// What the ring threads and the /dev/fuse readers share.
#[derive(Default)]
pub(crate) struct RingState {
    serving: AtomicBool,
    gone: Mutex<bool>,
    ended: Condvar,
}

impl RingState {
    /// A ring got a request: the kernel has switched to the rings.
    fn started(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    pub(crate) fn serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// The connection ended: idle readers may leave.
    pub(crate) fn end(&self) {
        *self.gone.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.ended.notify_all();
    }

    pub(crate) fn wait_until_gone(&self) {
        let mut gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        while !*gone {
            gone = self.ended.wait(gone).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The number of queues the kernel expects: one per possible CPU (all must be registered
/// before it switches to the rings).
pub(crate) fn queue_count() -> usize {
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let last = possible
        .trim()
        .split([',', '-'])
        .filter_map(|n| n.parse::<usize>().ok())
        .max();
    last.map_or(1, |n| n + 1)
}

/// The hand-off of one request's reply from whoever sends it (usually the serving thread,
/// inside `dispatch`) to the serving thread, which copies it into the ring entry once the
/// request (which borrows the entry's buffer) is gone.
#[derive(Default)]
pub(crate) struct Slot {
    reply: Mutex<Option<Vec<u8>>>,
    wake: Condvar,
}

impl Slot {
    /// Keeps a reply: the out header first, then its arguments.
    pub(crate) fn fill(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(data.iter().map(|d| d.len()).sum());
        for d in data {
            bytes.extend_from_slice(d);
        }
        *self.reply.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
        self.wake.notify_all();
        Ok(())
    }

    fn take_reply(&self) -> Vec<u8> {
        let mut reply = self.reply.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(bytes) = reply.take() {
                return bytes;
            }
            reply = self.wake.wait(reply).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Sends replies into a ring entry; backing-file ioctls still go to /dev/fuse.
#[derive(Clone)]
pub(crate) struct RingReply {
    pub(crate) dev: ChannelSender,
    pub(crate) slot: Arc<Slot>,
}

impl std::fmt::Debug for RingReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RingReply")
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Serves ring queue `qid` until the connection ends. Returns an error if the kernel refuses
/// the registration (io_uring disabled meanwhile, or unsupported): /dev/fuse keeps serving.
pub(crate) fn serve_queue<FS: Filesystem>(
    se: SessionEventLoop<FS>,
    qid: u16,
    payload: usize,
) -> io::Result<()> {
    pin_to_cpu(qid as usize);
    // The entry's memory, 8-byte aligned (the parser reads structs in place). It is never
    // resized and outlives the ring (declared first, dropped last).
    let mut mem: Box<[u64]> = vec![0u64; (PAYLOAD_AT + payload).div_ceil(8)].into_boxed_slice();
    let base = mem.as_mut_ptr().cast::<u8>();
    let iov: Box<[libc::iovec; 2]> = Box::new([
        libc::iovec {
            iov_base: base.cast(),
            iov_len: HEADER,
        },
        libc::iovec {
            // SAFETY: PAYLOAD_AT + payload bytes were allocated above.
            iov_base: unsafe { base.add(PAYLOAD_AT) }.cast(),
            iov_len: payload,
        },
    ]);
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> = IoUring::builder().build(2)?;
    let slot = Arc::new(Slot::default());
    let fd = types::Fd(se.ch.as_fd().as_raw_fd());
    let mut next = command(fd, CMD_REGISTER, qid, 0, &iov);
    let mut registered = false;
    loop {
        // SAFETY: the SQE points at `iov` and `mem`, which live until the ring is dropped, and
        // the kernel writes to them only until it posts the completion waited for below.
        unsafe { ring.submission().push(&next) }.map_err(|_| io::Error::other("ring full"))?;
        let result = loop {
            match ring.submit_and_wait(1) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            if let Some(cqe) = ring.completion().next() {
                break cqe.result();
            }
        };
        if result < 0 {
            let e = io::Error::from_raw_os_error(-result);
            if -result == libc::ENOTCONN || -result == libc::ENODEV {
                // The connection is gone (unmounted or aborted).
                debug!("io_uring queue {qid}: {e}");
                se.rings.end();
                return Ok(());
            }
            if registered {
                warn!("io_uring queue {qid}: the kernel refused a commit: {e}");
            }
            return Err(e);
        }
        if !registered {
            registered = true;
            se.rings.started();
        }
        // SAFETY: the kernel is done with the entry until the next commit; viewed as bytes.
        let b: &mut [u8] = unsafe { std::slice::from_raw_parts_mut(base, PAYLOAD_AT + payload) };
        let len = read_u32(b, HDR_LEN) as usize;
        let payload_len = read_u32(b, ENT_PAYLOAD_SZ) as usize;
        let commit_id = read_u64(b, ENT_COMMIT_ID);
        let unique = read_u64(b, HDR_UNIQUE);
        let op_len = len.saturating_sub(IN_HEADER + payload_len);
        if op_len > OP_IN || payload_len > payload || len < IN_HEADER {
            warn!("io_uring queue {qid}: malformed request (len {len}, payload {payload_len})");
            answer(b, unique, Err(libc::EIO));
        } else {
            // Rebuild the read(2) layout just before the payload: header, op struct, payload.
            let start = PAYLOAD_AT - op_len - IN_HEADER;
            b.copy_within(OP_IN_AT..OP_IN_AT + op_len, PAYLOAD_AT - op_len);
            b.copy_within(0..IN_HEADER, start);
            let sender = RingReply {
                dev: se.ch.sender(),
                slot: Arc::clone(&slot),
            };
            let reply =
                match RequestWithSender::new_ring(sender, &b[start..PAYLOAD_AT + payload_len]) {
                    Some(req) => {
                        let answers = !matches!(
                            req.request.operation(),
                            Ok(ll::Operation::Forget(_) | ll::Operation::BatchForget(_))
                        );
                        req.dispatch(&se);
                        Ok(answers.then(|| slot.take_reply()))
                    }
                    None => Err(()),
                };
            match reply {
                Ok(Some(bytes))
                    if bytes.len() >= OUT_HEADER && bytes.len() - OUT_HEADER <= payload =>
                {
                    b[..OUT_HEADER].copy_from_slice(&bytes[..OUT_HEADER]);
                    let rest = &bytes[OUT_HEADER..];
                    b[PAYLOAD_AT..PAYLOAD_AT + rest.len()].copy_from_slice(rest);
                    b[ENT_PAYLOAD_SZ..ENT_PAYLOAD_SZ + 4]
                        .copy_from_slice(&(rest.len() as u32).to_ne_bytes());
                }
                Ok(Some(_)) | Err(()) => answer(b, unique, Err(libc::EIO)),
                Ok(None) => answer(b, unique, Ok(())),
            }
        }
        next = command(fd, CMD_COMMIT_AND_FETCH, qid, commit_id, &iov);
    }
}

/// The SQE of a REGISTER or COMMIT_AND_FETCH for queue `qid`, the entry described by `iov`.
fn command(
    fd: types::Fd,
    cmd_op: u32,
    qid: u16,
    commit_id: u64,
    iov: &[libc::iovec; 2],
) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[CMD_REQ_COMMIT_ID..CMD_REQ_COMMIT_ID + 8].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[CMD_REQ_QID..CMD_REQ_QID + 2].copy_from_slice(&qid.to_ne_bytes());
    let entry = opcode::UringCmd80::new(fd, cmd_op)
        .cmd(cmd)
        .addr(Some(iov.as_ptr() as u64))
        .build();
    // The crate has no setter for `len`; the kernel wants the iovec count (2) there.
    // SAFETY: Entry128 is repr(C), 128 bytes: the io_uring_sqe (64) and the command tail (the
    // io-uring version is pinned for this, and `tests` checks the layout); any byte pattern is
    // a valid value of it.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(entry) };
    raw[SQE_LEN..SQE_LEN + 4].copy_from_slice(&(iov.len() as u32).to_ne_bytes());
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// An answer with no payload: success, or an errno.
fn answer(b: &mut [u8], unique: u64, result: Result<(), i32>) {
    let error = result.err().unwrap_or(0);
    b[HDR_LEN..HDR_LEN + 4].copy_from_slice(&(OUT_HEADER as u32).to_ne_bytes());
    b[OUT_ERROR..OUT_ERROR + 4].copy_from_slice(&(-error).to_ne_bytes());
    b[HDR_UNIQUE..HDR_UNIQUE + 8].copy_from_slice(&unique.to_ne_bytes());
    b[ENT_PAYLOAD_SZ..ENT_PAYLOAD_SZ + 4].copy_from_slice(&0u32.to_ne_bytes());
}

/// Keeps a queue's thread on its CPU, where its requests come from. Best effort: a CPU that is
/// offline (or a cpuset that excludes it) leaves the thread free to run anywhere.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays within its bounds for
    // cpu < CPU_SETSIZE, checked first.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The hand-written ABI values above against the kernel's layout: `#[repr(C)]` mirrors of
/// include/uapi/linux/fuse.h (FUSE 7.42, Linux 6.14: `fuse_uring_*`) and
/// include/uapi/linux/io_uring.h (`io_uring_sqe` with IORING_SETUP_SQE128), and the crate's own
/// `fuse_in_header`/`fuse_out_header` (`ll::fuse_abi`, upstream's mirror).
#[cfg(test)]
#[allow(non_camel_case_types, dead_code)]
mod tests {
    use std::mem::offset_of;
    use std::mem::size_of;

    use super::*;
    use crate::InitFlags;
    use crate::ll::fuse_abi::fuse_in_header;
    use crate::ll::fuse_abi::fuse_out_header;

    // include/uapi/linux/fuse.h
    const FUSE_URING_IN_OUT_HEADER_SZ: usize = 128;
    const FUSE_URING_OP_IN_OUT_SZ: usize = 128;
    const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
    const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;
    const FUSE_OVER_IO_URING: u64 = 1 << 41;

    #[repr(C)]
    struct fuse_uring_ent_in_out {
        flags: u64,
        commit_id: u64,
        payload_sz: u32,
        padding: u32,
        reserved: u64,
    }

    #[repr(C)]
    struct fuse_uring_req_header {
        in_out: [u8; FUSE_URING_IN_OUT_HEADER_SZ],
        op_in: [u8; FUSE_URING_OP_IN_OUT_SZ],
        ring_ent_in_out: fuse_uring_ent_in_out,
    }

    /// In the 80-byte command area of an SQE128.
    #[repr(C)]
    struct fuse_uring_cmd_req {
        flags: u64,
        commit_id: u64,
        qid: u16,
        padding: [u8; 6],
    }

    // include/uapi/linux/io_uring.h: `struct io_uring_sqe`, its unions reduced to the member
    // IORING_OP_URING_CMD uses, followed (SQE128) by 64 more bytes of command: `cmd` is 80.
    const IORING_OP_URING_CMD: u8 = 46;

    #[repr(C)]
    struct io_uring_sqe128 {
        opcode: u8,
        flags: u8,
        ioprio: u16,
        fd: i32,
        cmd_op: u32,
        __pad1: u32,
        addr: u64,
        len: u32,
        uring_cmd_flags: u32,
        user_data: u64,
        buf_index: u16,
        personality: u16,
        file_index: u32,
        cmd: [u8; 80],
    }

    #[test]
    fn req_header_layout() {
        assert_eq!(HEADER, size_of::<fuse_uring_req_header>());
        assert_eq!(OP_IN_AT, offset_of!(fuse_uring_req_header, op_in));
        assert_eq!(OP_IN, FUSE_URING_OP_IN_OUT_SZ);
        let ent = offset_of!(fuse_uring_req_header, ring_ent_in_out);
        assert_eq!(
            ENT_COMMIT_ID,
            ent + offset_of!(fuse_uring_ent_in_out, commit_id)
        );
        assert_eq!(
            ENT_PAYLOAD_SZ,
            ent + offset_of!(fuse_uring_ent_in_out, payload_sz)
        );
    }

    #[test]
    fn in_out_header_layout() {
        assert_eq!(offset_of!(fuse_uring_req_header, in_out), 0);
        assert_eq!(IN_HEADER, size_of::<fuse_in_header>());
        assert_eq!(OUT_HEADER, size_of::<fuse_out_header>());
        const { assert!(IN_HEADER <= FUSE_URING_IN_OUT_HEADER_SZ) };
        const { assert!(OUT_HEADER <= FUSE_URING_IN_OUT_HEADER_SZ) };
        assert_eq!(HDR_LEN, offset_of!(fuse_in_header, len));
        assert_eq!(HDR_LEN, offset_of!(fuse_out_header, len));
        assert_eq!(HDR_UNIQUE, offset_of!(fuse_in_header, unique));
        assert_eq!(HDR_UNIQUE, offset_of!(fuse_out_header, unique));
        assert_eq!(OUT_ERROR, offset_of!(fuse_out_header, error));
        // The rebuilt request (in header, op struct) fits before the payload.
        const { assert!(IN_HEADER + OP_IN <= SCRATCH) };
        assert_eq!(PAYLOAD_AT % 8, 0);
    }

    #[test]
    fn cmd_req_layout() {
        assert_eq!(CMD_REGISTER, FUSE_IO_URING_CMD_REGISTER);
        assert_eq!(CMD_COMMIT_AND_FETCH, FUSE_IO_URING_CMD_COMMIT_AND_FETCH);
        assert_eq!(CMD_REQ_COMMIT_ID, offset_of!(fuse_uring_cmd_req, commit_id));
        assert_eq!(CMD_REQ_QID, offset_of!(fuse_uring_cmd_req, qid));
        assert!(size_of::<fuse_uring_cmd_req>() <= 80);
        assert_eq!(InitFlags::FUSE_OVER_IO_URING.bits(), FUSE_OVER_IO_URING);
    }

    #[test]
    fn sqe_layout() {
        assert_eq!(size_of::<io_uring_sqe128>(), 128);
        assert_eq!(offset_of!(io_uring_sqe128, cmd), 48);
        assert_eq!(SQE_LEN, offset_of!(io_uring_sqe128, len));
        // The transmute in `command`: the crate's Entry128 is the kernel's SQE128, byte for byte.
        assert_eq!(size_of::<squeue::Entry128>(), size_of::<io_uring_sqe128>());
        assert_eq!(opcode::UringCmd80::CODE, IORING_OP_URING_CMD);
    }

    /// A command built by `command`, read back through the kernel's layout.
    #[test]
    fn command_as_the_kernel_reads_it() {
        let iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 2];
        let entry = command(
            types::Fd(7),
            CMD_COMMIT_AND_FETCH,
            0x1234,
            0x0102_0304_0506_0708,
            &iov,
        );
        // SAFETY: both are 128 bytes (checked by transmute) of plain integers.
        let sqe: io_uring_sqe128 = unsafe { std::mem::transmute(entry) };
        assert_eq!(sqe.opcode, IORING_OP_URING_CMD);
        assert_eq!(sqe.flags, 0);
        assert_eq!(sqe.fd, 7);
        assert_eq!(sqe.cmd_op, FUSE_IO_URING_CMD_COMMIT_AND_FETCH);
        assert_eq!(sqe.addr, iov.as_ptr() as u64);
        assert_eq!(sqe.len, 2);
        assert_eq!(sqe.uring_cmd_flags, 0);
        // SAFETY: the command area is 80 bytes, fuse_uring_cmd_req fits (cmd_req_layout);
        // read unaligned, any bytes are valid integers.
        let req: fuse_uring_cmd_req =
            unsafe { std::ptr::read_unaligned(sqe.cmd.as_ptr().cast::<fuse_uring_cmd_req>()) };
        assert_eq!(req.flags, 0);
        assert_eq!(req.commit_id, 0x0102_0304_0506_0708);
        assert_eq!(req.qid, 0x1234);
        assert_eq!(req.padding, [0; 6]);
        assert!(
            sqe.cmd[size_of::<fuse_uring_cmd_req>()..]
                .iter()
                .all(|&b| b == 0)
        );
    }

    /// An answer written by `answer`, read back through the kernel's layout.
    #[test]
    fn answer_as_the_kernel_reads_it() {
        let mut b = vec![0xffu8; HEADER];
        answer(&mut b, 0x1122_3344_5566_7788, Err(libc::EIO));
        // SAFETY: HEADER bytes (req_header_layout), read unaligned; any bytes are valid.
        let header: fuse_uring_req_header =
            unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<fuse_uring_req_header>()) };
        // SAFETY: in_out is 128 bytes, fuse_out_header 16 (in_out_header_layout).
        let out: fuse_out_header =
            unsafe { std::ptr::read_unaligned(header.in_out.as_ptr().cast::<fuse_out_header>()) };
        assert_eq!(out.len as usize, size_of::<fuse_out_header>());
        assert_eq!(out.error, -libc::EIO);
        assert_eq!(out.unique, 0x1122_3344_5566_7788);
        assert_eq!(header.ring_ent_in_out.payload_sz, 0);
    }
}
