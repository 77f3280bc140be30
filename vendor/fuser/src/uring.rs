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
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;

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

/// `sizeof(struct fuse_uring_req_header)`: in_out[128], op_in[128], fuse_uring_ent_in_out.
const HEADER: usize = 288;
/// Offset and size of the per-op struct area (`op_in`).
const OP_IN_AT: usize = 128;
const OP_IN: usize = 128;
const ENT_COMMIT_ID: usize = 256 + 8;
const ENT_PAYLOAD_SZ: usize = 256 + 16;
/// Room before the payload for the rebuilt `fuse_in_header` (40) and per-op struct (<= 128).
const SCRATCH: usize = 256;
const PAYLOAD_AT: usize = HEADER + SCRATCH;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// How long the /dev/fuse reader waits between reads once the rings serve. Only forgets
/// (and interrupts, which fuser answers ENOSYS once) still come that way: waiting lets them
/// pile up into one BATCH_FORGET instead of waking a thread on another CPU for every
/// forgotten inode (one per deleted file).
pub(crate) const FORGET_PACE: std::time::Duration = std::time::Duration::from_millis(5);

/// What the ring threads and the /dev/fuse readers share.
#[derive(Default)]
pub(crate) struct RingState {
    serving: std::sync::atomic::AtomicBool,
    gone: Mutex<bool>,
    ended: Condvar,
}

impl RingState {
    /// A ring got a request: the kernel has switched to the rings.
    fn started(&self) {
        self.serving.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn serving(&self) -> bool {
        self.serving.load(std::sync::atomic::Ordering::Relaxed)
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
    let fd = types::Fd(std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(&se.ch)));
    let command = |cmd_op: u32, commit_id: u64| -> squeue::Entry128 {
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
        let entry = opcode::UringCmd80::new(fd, cmd_op)
            .cmd(cmd)
            .addr(Some(iov.as_ptr() as u64))
            .build();
        // The crate has no setter for `len`; the kernel wants the iovec count (2) there
        // (offset 24 of the SQE).
        // SAFETY: Entry128 is repr(C), 128 bytes: the io_uring_sqe (64) and the command tail;
        // any byte pattern is a valid value of it.
        let mut raw: [u8; 128] = unsafe { std::mem::transmute(entry) };
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
    };
    let mut next = command(CMD_REGISTER, 0);
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
        let b: &mut [u8] =
            unsafe { std::slice::from_raw_parts_mut(base, PAYLOAD_AT + payload) };
        let len = read_u32(b, 0) as usize;
        let payload_len = read_u32(b, ENT_PAYLOAD_SZ) as usize;
        let commit_id = read_u64(b, ENT_COMMIT_ID);
        let unique = read_u64(b, 8);
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
            let reply = match RequestWithSender::new_ring(sender, &b[start..PAYLOAD_AT + payload_len])
            {
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
                Ok(Some(bytes)) if bytes.len() >= OUT_HEADER && bytes.len() - OUT_HEADER <= payload => {
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
        next = command(CMD_COMMIT_AND_FETCH, commit_id);
    }
}

/// An answer with no payload: success, or an errno.
fn answer(b: &mut [u8], unique: u64, result: Result<(), i32>) {
    let error = result.err().unwrap_or(0);
    b[0..4].copy_from_slice(&(OUT_HEADER as u32).to_ne_bytes());
    b[4..8].copy_from_slice(&(-error).to_ne_bytes());
    b[8..16].copy_from_slice(&unique.to_ne_bytes());
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
