//! The wire between the server and a Python worker process (`python -m rustserve.worker`): length-prefixed frames
//! on a Unix socket, with every tensor payload in shared memory. Plain Rust (no pyo3), so it is unit-tested alone.
//!
//! Frame on the socket: `u32 LE body length | body`; body = `u8 protocol version | WireFrame in postcard`
//! (serde's compact binary form: varint integers, length-prefixed strings and lists). A tensor travels as its dtype,
//! dims and blob refs; a blob ref is `(offset, len)` into the *sender's* shared-memory region. There are two regions per worker, one
//! per direction, both memfds made by the server and handed to the worker once, with SCM_RIGHTS, in the `Setup`
//! frame (so nothing is ever left behind in /dev/shm, whoever dies). A writer grows its region (ftruncate +
//! remap, never shrink) when a frame does not fit; a reader remaps when a ref points past its mapping.
//!
//! Why a writer may reuse its region from offset 0 for every frame: the protocol alternates strictly (a worker
//! has at most one call in flight, and each side answers before the other sends again), and a receiver copies
//! every payload out while decoding, before it answers. Arrays are never pickled: a numpy buffer is copied once
//! into the region and once out of it.

use crate::error::ServeError;
use crate::request::InstanceResult;
use crate::tensor::{DType, Tensor, TensorData};
use bytes::Bytes;
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer};
use rustix::net::{SendAncillaryMessage, SendFlags};
use serde::{Deserialize, Serialize};
use std::io::{self, IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Bumped whenever the body layout changes; both sides refuse a frame of another version.
pub const PROTOCOL_VERSION: u8 = 2;
/// Frames carry metadata only (payloads are in shared memory), so a huge length means a broken peer.
pub const MAX_FRAME: usize = 64 << 20;
/// Initial size of each shared-memory region; pages are only allocated when touched.
pub const INITIAL_REGION: usize = 1 << 20;

/// One Python stage function the worker must serve: the server's id for it, and where servable_config.py
/// registered it (so both processes agree without comparing memory addresses).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionEntry {
    pub id: u64,
    pub method: String,
    /// 1-based stage index within the method.
    pub stage_index: u32,
    /// `<servable>.<function name>`.
    pub name: String,
}

/// A stage call for a worker: `FunctionCall` without the models (the worker reaches them through the server).
#[derive(Clone, Debug, PartialEq)]
pub struct CallFrame {
    pub function: u64,
    pub name: String,
    pub tag: String,
    pub method: String,
    pub stage_index: u32,
    pub outputs_count: u32,
    pub batch_size: Option<u32>,
    pub instances: Vec<Vec<Tensor>>,
}

/// Everything that travels between the server and a worker.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// Server -> worker, first frame (carries the two memfds): the functions to serve.
    Setup { functions: Vec<FunctionEntry> },
    /// Worker -> server: set up, serving.
    Ready { pid: u32 },
    /// Worker -> server: could not start (import failed, functions differ); the worker exits after it.
    SetupFailed { message: String },
    /// Server -> worker: run one stage call.
    Call(CallFrame),
    /// Worker -> server: one result per instance of the call.
    Results(Vec<InstanceResult>),
    /// Worker -> server, during a call: `Model.call` from the stage.
    ModelCall {
        key: String,
        subgraph: u64,
        instances: Vec<Vec<Tensor>>,
    },
    /// Server -> worker: the model results, or why the whole `Model.call` failed.
    ModelReply(Result<Vec<InstanceResult>, String>),
}

impl Frame {
    /// The frame kind's name, for error texts.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Setup { .. } => "Setup",
            Frame::Ready { .. } => "Ready",
            Frame::SetupFailed { .. } => "SetupFailed",
            Frame::Call(_) => "Call",
            Frame::Results(_) => "Results",
            Frame::ModelCall { .. } => "ModelCall",
            Frame::ModelReply(_) => "ModelReply",
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Blob storage: where tensor payloads go (shared memory in production, a Vec in tests).
// ---------------------------------------------------------------------------------------------------------------

/// Receives the payloads of a frame being encoded.
pub trait BlobSink {
    /// Starts a new frame: earlier payloads may be overwritten.
    fn reset(&mut self);
    /// Stores `data`; returns its (offset, len).
    fn put(&mut self, data: &[u8]) -> io::Result<(u64, u64)>;
}

/// Hands out the payloads of a frame being decoded (copies: the region is reused by the next frame).
pub trait BlobSource {
    fn get(&mut self, offset: u64, len: u64) -> Result<Bytes, String>;
}

/// In-memory blobs, for tests and for frames without payloads.
impl BlobSink for Vec<u8> {
    fn reset(&mut self) {
        self.clear();
    }

    fn put(&mut self, data: &[u8]) -> io::Result<(u64, u64)> {
        let offset = self.len() as u64;
        self.extend_from_slice(data);
        Ok((offset, data.len() as u64))
    }
}

impl BlobSource for Vec<u8> {
    fn get(&mut self, offset: u64, len: u64) -> Result<Bytes, String> {
        blob_range(offset, len, self.len())
            .map(|range| Bytes::copy_from_slice(&self[range]))
            .ok_or_else(|| {
                format!(
                    "blob ({offset}, {len}) is outside the {} byte payload region",
                    self.len()
                )
            })
    }
}

fn blob_range(offset: u64, len: u64, size: usize) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= size).then_some(start..end)
}

// ---------------------------------------------------------------------------------------------------------------
// The wire form: `Frame` with every tensor payload replaced by refs into the sender's region.
// ---------------------------------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct BlobRef {
    offset: u64,
    len: u64,
}

#[derive(Serialize, Deserialize)]
enum WireData {
    Raw(BlobRef),
    Items(Vec<BlobRef>),
}

#[derive(Serialize, Deserialize)]
struct WireTensor {
    /// MindSpore's proto dtype code.
    dtype: u8,
    shape: Vec<i64>,
    data: WireData,
}

type WireResult = Result<Vec<WireTensor>, ServeError>;

/// `Frame`, variant for variant.
#[derive(Serialize, Deserialize)]
enum WireFrame {
    Setup {
        functions: Vec<FunctionEntry>,
    },
    Ready {
        pid: u32,
    },
    SetupFailed {
        message: String,
    },
    Call {
        function: u64,
        name: String,
        tag: String,
        method: String,
        stage_index: u32,
        outputs_count: u32,
        batch_size: Option<u32>,
        instances: Vec<Vec<WireTensor>>,
    },
    Results(Vec<WireResult>),
    ModelCall {
        key: String,
        subgraph: u64,
        instances: Vec<Vec<WireTensor>>,
    },
    ModelReply(Result<Vec<WireResult>, String>),
}

/// How many variants `WireFrame` has: a body whose variant index is past it names an unknown frame kind.
const FRAME_KINDS: u8 = 7;

fn put_blob(data: &[u8], blobs: &mut dyn BlobSink) -> io::Result<BlobRef> {
    let (offset, len) = if data.is_empty() { (0, 0) } else { blobs.put(data)? };
    Ok(BlobRef { offset, len })
}

fn put_tensor(t: &Tensor, blobs: &mut dyn BlobSink) -> io::Result<WireTensor> {
    let data = match &t.data {
        TensorData::Raw(raw) => WireData::Raw(put_blob(raw, blobs)?),
        TensorData::Items(items) => {
            WireData::Items(items.iter().map(|i| put_blob(i, blobs)).collect::<Result<_, _>>()?)
        }
    };
    Ok(WireTensor {
        dtype: t.dtype.to_ms_proto() as u8,
        shape: t.shape.clone(),
        data,
    })
}

fn put_tensors(tensors: &[Tensor], blobs: &mut dyn BlobSink) -> io::Result<Vec<WireTensor>> {
    tensors.iter().map(|t| put_tensor(t, blobs)).collect()
}

fn put_instances(instances: &[Vec<Tensor>], blobs: &mut dyn BlobSink) -> io::Result<Vec<Vec<WireTensor>>> {
    instances.iter().map(|tensors| put_tensors(tensors, blobs)).collect()
}

fn put_results(results: &[InstanceResult], blobs: &mut dyn BlobSink) -> io::Result<Vec<WireResult>> {
    results
        .iter()
        .map(|result| match result {
            Ok(tensors) => put_tensors(tensors, blobs).map(Ok),
            Err(e) => Ok(Err(e.clone())),
        })
        .collect()
}

fn to_wire(frame: &Frame, blobs: &mut dyn BlobSink) -> io::Result<WireFrame> {
    Ok(match frame {
        Frame::Setup { functions } => WireFrame::Setup {
            functions: functions.clone(),
        },
        Frame::Ready { pid } => WireFrame::Ready { pid: *pid },
        Frame::SetupFailed { message } => WireFrame::SetupFailed {
            message: message.clone(),
        },
        Frame::Call(call) => WireFrame::Call {
            function: call.function,
            name: call.name.clone(),
            tag: call.tag.clone(),
            method: call.method.clone(),
            stage_index: call.stage_index,
            outputs_count: call.outputs_count,
            batch_size: call.batch_size,
            instances: put_instances(&call.instances, blobs)?,
        },
        Frame::Results(results) => WireFrame::Results(put_results(results, blobs)?),
        Frame::ModelCall {
            key,
            subgraph,
            instances,
        } => WireFrame::ModelCall {
            key: key.clone(),
            subgraph: *subgraph,
            instances: put_instances(instances, blobs)?,
        },
        Frame::ModelReply(reply) => WireFrame::ModelReply(match reply {
            Ok(results) => Ok(put_results(results, blobs)?),
            Err(text) => Err(text.clone()),
        }),
    })
}

/// Encodes `frame` as wire bytes (length prefix included), its payloads into `blobs` (reset first).
pub fn encode(frame: &Frame, blobs: &mut dyn BlobSink) -> io::Result<Vec<u8>> {
    blobs.reset();
    let wire = to_wire(frame, blobs)?;
    let out = postcard::to_extend(&wire, vec![0, 0, 0, 0, PROTOCOL_VERSION])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("cannot encode a frame: {e}")))?;
    let body = out.len() - 4;
    if body > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {body} bytes is too large"),
        ));
    }
    let mut out = out;
    out[..4].copy_from_slice(&(body as u32).to_le_bytes());
    Ok(out)
}

fn get_blob(blob: &BlobRef, blobs: &mut dyn BlobSource) -> Result<Bytes, String> {
    if blob.len == 0 {
        return Ok(Bytes::new());
    }
    blobs.get(blob.offset, blob.len)
}

/// A tensor from its wire form, checked like any decoded tensor (`Tensor::new`: dtype, shape against payload).
fn get_tensor(t: WireTensor, blobs: &mut dyn BlobSource) -> Result<Tensor, String> {
    let dtype = DType::from_ms_proto(i32::from(t.dtype)).ok_or_else(|| format!("unknown dtype code {}", t.dtype))?;
    let data = match (&t.data, dtype.is_variable()) {
        (WireData::Raw(blob), false) => TensorData::Raw(get_blob(blob, blobs)?),
        (WireData::Items(items), true) => {
            TensorData::Items(items.iter().map(|b| get_blob(b, blobs)).collect::<Result<_, _>>()?)
        }
        _ => return Err(format!("the payload kind does not fit dtype {dtype}")),
    };
    Tensor::new(dtype, t.shape, data)
}

fn get_tensors(tensors: Vec<WireTensor>, blobs: &mut dyn BlobSource) -> Result<Vec<Tensor>, String> {
    tensors.into_iter().map(|t| get_tensor(t, blobs)).collect()
}

fn get_instances(instances: Vec<Vec<WireTensor>>, blobs: &mut dyn BlobSource) -> Result<Vec<Vec<Tensor>>, String> {
    instances
        .into_iter()
        .map(|tensors| get_tensors(tensors, blobs))
        .collect()
}

fn get_results(results: Vec<WireResult>, blobs: &mut dyn BlobSource) -> Result<Vec<InstanceResult>, String> {
    results
        .into_iter()
        .map(|result| match result {
            Ok(tensors) => get_tensors(tensors, blobs).map(Ok),
            Err(e) => Ok(Err(e)),
        })
        .collect()
}

fn from_wire(wire: WireFrame, blobs: &mut dyn BlobSource) -> Result<Frame, String> {
    Ok(match wire {
        WireFrame::Setup { functions } => Frame::Setup { functions },
        WireFrame::Ready { pid } => Frame::Ready { pid },
        WireFrame::SetupFailed { message } => Frame::SetupFailed { message },
        WireFrame::Call {
            function,
            name,
            tag,
            method,
            stage_index,
            outputs_count,
            batch_size,
            instances,
        } => Frame::Call(CallFrame {
            function,
            name,
            tag,
            method,
            stage_index,
            outputs_count,
            batch_size,
            instances: get_instances(instances, blobs)?,
        }),
        WireFrame::Results(results) => Frame::Results(get_results(results, blobs)?),
        WireFrame::ModelCall {
            key,
            subgraph,
            instances,
        } => Frame::ModelCall {
            key,
            subgraph,
            instances: get_instances(instances, blobs)?,
        },
        WireFrame::ModelReply(reply) => Frame::ModelReply(match reply {
            Ok(results) => Ok(get_results(results, blobs)?),
            Err(text) => Err(text),
        }),
    })
}

/// Decodes a frame body (without its length prefix); payloads are copied out of `blobs`. A truncated or corrupt
/// body is an error, never a panic or a huge allocation (serde pre-allocates lists by at most a small cap, and
/// postcard checks every length against what is left).
pub fn decode(body: &[u8], blobs: &mut dyn BlobSource) -> Result<Frame, String> {
    let Some((&version, rest)) = body.split_first() else {
        return Err("truncated frame: the body is empty".into());
    };
    if version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {version} is not the supported version {PROTOCOL_VERSION} (server and worker \
             must come from the same rustserve install)"
        ));
    }
    // postcard writes the variant index first, as a varint: one byte for every index below 128.
    if let Some(&kind) = rest.first()
        && kind >= FRAME_KINDS
    {
        return Err(format!("unknown frame kind {kind}"));
    }
    let (wire, left) = postcard::take_from_bytes::<WireFrame>(rest).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => "truncated frame".to_string(),
        other => format!("broken frame: {other}"),
    })?;
    if !left.is_empty() {
        return Err(format!("{} bytes left over after the frame", left.len()));
    }
    from_wire(wire, blobs)
}

// ---------------------------------------------------------------------------------------------------------------
// Socket I/O
// ---------------------------------------------------------------------------------------------------------------

/// Writes all of `bytes`; never raises SIGPIPE (a dead peer is an `EPIPE` error, not a dead server).
pub fn send_all(stream: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::net::send(stream, bytes, SendFlags::NOSIGNAL) {
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn body_len(head: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(head) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {len} exceeds the limit {MAX_FRAME}"),
        ));
    }
    Ok(len)
}

/// Reads one frame body; `None` on a clean end of stream between frames (the peer closed or died).
pub fn read_frame(mut stream: impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match stream.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut body = vec![0u8; body_len(head)?];
    stream.read_exact(&mut body)?;
    Ok(Some(body))
}

/// The most file descriptors one frame carries (`Setup` sends the two regions).
const MAX_FDS: usize = 4;

/// Sends wire bytes with file descriptors attached (SCM_RIGHTS).
pub fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most {MAX_FDS} fds per frame"),
        ));
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(fds));
    let sent = loop {
        match rustix::net::sendmsg(stream, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL) {
            Err(rustix::io::Errno::INTR) => {}
            other => break other?,
        }
    };
    send_all(stream, &bytes[sent..])
}

/// Reads one frame and the file descriptors sent with it; `None` body on a clean end of stream.
pub fn recv_with_fds(stream: &UnixStream) -> io::Result<(Option<Vec<u8>>, Vec<OwnedFd>)> {
    let mut head = [0u8; 4];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    // CMSG_CLOEXEC: the received fds must not leak into processes this one spawns.
    let received = loop {
        let iov = &mut [IoSliceMut::new(&mut head)];
        match rustix::net::recvmsg(stream, iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(rustix::io::Errno::INTR) => {}
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if received.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many file descriptors in a frame",
        ));
    }
    let got = received.bytes;
    if got == 0 {
        return Ok((None, fds));
    }
    let mut reader = stream;
    reader.read_exact(&mut head[got..])?;
    let mut body = vec![0u8; body_len(head)?];
    reader.read_exact(&mut body)?;
    Ok((Some(body), fds))
}

/// Waits until one of `fds` is readable (or hung up); `timeout_ms` < 0 waits forever. Returns which are ready
/// (all false on timeout).
pub fn wait_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut polls: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(fd, PollFlags::IN)).collect();
    let timeout = u64::try_from(timeout_ms).ok().map(|ms| Timespec {
        tv_sec: (ms / 1000) as i64,
        tv_nsec: ((ms % 1000) * 1_000_000) as i64,
    });
    loop {
        match rustix::event::poll(&mut polls, timeout.as_ref()) {
            Ok(_) => return Ok(polls.iter().map(|p| !p.revents().is_empty()).collect()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// A wake-up flag another thread can raise to interrupt `wait_readable` (an eventfd).
pub struct Wake(OwnedFd);

impl Wake {
    pub fn new() -> io::Result<Wake> {
        Ok(Wake(rustix::event::eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
        )?))
    }

    /// Raises the flag (never blocks; a full counter, EAGAIN, is raised already).
    pub fn raise(&self) {
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    /// Lowers the flag (EAGAIN: it was not raised).
    pub fn clear(&self) {
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut counter);
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Shared memory
// ---------------------------------------------------------------------------------------------------------------

/// A memfd mapped into this process.
pub struct Shm {
    fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value and only accessed through `&self` / `&mut self`.
unsafe impl Send for Shm {}

impl Shm {
    /// Creates an anonymous memfd of `len` bytes (close-on-exec; passed to workers with SCM_RIGHTS only).
    pub fn create(name: &str, len: usize) -> io::Result<Shm> {
        let mut shm = Shm {
            fd: rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)?,
            ptr: std::ptr::null_mut(),
            len: 0,
        };
        shm.resize(len)?;
        Ok(shm)
    }

    /// Maps a region received from the peer, at its current size.
    pub fn open(fd: OwnedFd) -> io::Result<Shm> {
        let mut shm = Shm {
            fd,
            ptr: std::ptr::null_mut(),
            len: 0,
        };
        shm.refresh()?;
        Ok(shm)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn map(&mut self, len: usize) -> io::Result<()> {
        self.unmap();
        if len == 0 {
            return Ok(());
        }
        // SAFETY: maps `len` bytes of our memfd, whose size is at least `len` (set by ftruncate or read by fstat);
        // the mapping is new, so it aliases no Rust reference.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &self.fd,
                0,
            )?
        };
        self.ptr = ptr.cast();
        self.len = len;
        Ok(())
    }

    fn unmap(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr`/`len` describe a mapping made by `map` and not unmapped since; no slice of it outlives
            // this call (`bytes` borrows `self`).
            let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
            self.ptr = std::ptr::null_mut();
            self.len = 0;
        }
    }

    /// Grows the file to `len` bytes (never shrinks: the peer may map it) and remaps.
    fn resize(&mut self, len: usize) -> io::Result<()> {
        rustix::fs::ftruncate(&self.fd, len as u64)?;
        self.map(len)
    }

    /// Remaps at the file's current size when the peer grew it.
    fn refresh(&mut self) -> io::Result<()> {
        let size = usize::try_from(rustix::fs::fstat(&self.fd)?.st_size).unwrap_or(0);
        if size == self.len { Ok(()) } else { self.map(size) }
    }

    fn bytes(&self) -> &[u8] {
        if self.ptr.is_null() {
            &[]
        } else {
            // SAFETY: a live mapping of `len` bytes; the peer does not write it while we read (see module docs).
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        self.unmap();
    }
}

/// The writing side of a region: payloads are appended from offset 0 for each frame.
pub struct ShmWriter {
    shm: Shm,
    cursor: usize,
}

impl ShmWriter {
    pub fn new(shm: Shm) -> ShmWriter {
        ShmWriter { shm, cursor: 0 }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.shm.fd()
    }
}

impl BlobSink for ShmWriter {
    fn reset(&mut self) {
        self.cursor = 0;
    }

    fn put(&mut self, data: &[u8]) -> io::Result<(u64, u64)> {
        let end = self.cursor + data.len();
        if end > self.shm.len {
            // Doubling keeps the number of remaps (and of peer refreshes) logarithmic in the largest frame.
            self.shm.resize(end.next_power_of_two().max(INITIAL_REGION))?;
        }
        // SAFETY: `cursor..end` lies inside the mapping (grown above); `data` is ordinary memory of this process,
        // not part of the region, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.shm.ptr.add(self.cursor), data.len()) };
        let offset = self.cursor as u64;
        self.cursor = end;
        Ok((offset, data.len() as u64))
    }
}

/// The reading side of a region.
pub struct ShmReader {
    shm: Shm,
}

impl ShmReader {
    pub fn new(shm: Shm) -> ShmReader {
        ShmReader { shm }
    }
}

impl BlobSource for ShmReader {
    fn get(&mut self, offset: u64, len: u64) -> Result<Bytes, String> {
        if blob_range(offset, len, self.shm.len).is_none() {
            self.shm
                .refresh()
                .map_err(|e| format!("cannot remap the payload region: {e}"))?;
        }
        let bytes = self.shm.bytes();
        blob_range(offset, len, bytes.len())
            .map(|range| Bytes::copy_from_slice(&bytes[range]))
            .ok_or_else(|| {
                format!(
                    "blob ({offset}, {len}) is outside the {} byte payload region",
                    bytes.len()
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors() -> Vec<Tensor> {
        vec![
            Tensor::from_values(vec![2, 2], &[1.0f32, 2.0, 3.0, 4.0]).unwrap(),
            Tensor::from_values(vec![], &[7i64]).unwrap(),
            Tensor::from_values(vec![0, 3], &[] as &[f64]).unwrap(),
            Tensor::scalar_string("héllo"),
            Tensor::new(
                DType::Bytes,
                vec![2],
                TensorData::Items(vec![Bytes::from_static(b"\x00ab"), Bytes::new()]),
            )
            .unwrap(),
            Tensor::from_values(vec![3], &[true, false, true]).unwrap(),
        ]
    }

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Setup {
                functions: vec![
                    FunctionEntry {
                        id: 3,
                        method: "m".into(),
                        stage_index: 1,
                        name: "svc.f".into(),
                    },
                    FunctionEntry {
                        id: u64::MAX,
                        method: "other".into(),
                        stage_index: 9,
                        name: "svc.g".into(),
                    },
                ],
            },
            Frame::Ready { pid: 4242 },
            Frame::SetupFailed {
                message: "import svc.servable_config failed, boom".into(),
            },
            Frame::Call(CallFrame {
                function: 5,
                name: "svc.f".into(),
                tag: "Function 'svc.f'".into(),
                method: "m".into(),
                stage_index: 2,
                outputs_count: 6,
                batch_size: Some(4),
                instances: vec![tensors(), tensors()],
            }),
            Frame::Call(CallFrame {
                function: 0,
                name: String::new(),
                tag: String::new(),
                method: String::new(),
                stage_index: 0,
                outputs_count: 0,
                batch_size: None,
                instances: vec![],
            }),
            Frame::Results(vec![
                Ok(tensors()),
                Err(ServeError::Stage("Call x Failed".into())),
                Err(ServeError::Unavailable("Servable stopped".into())),
                Ok(vec![]),
            ]),
            Frame::ModelCall {
                key: "a.onnx;b.onnx".into(),
                subgraph: 1,
                instances: vec![tensors()],
            },
            Frame::ModelReply(Ok(vec![Ok(tensors()), Err(ServeError::Model("run failed".into()))])),
            Frame::ModelReply(Err("the model is not declared, model: x".into())),
        ]
    }

    #[test]
    fn frames_round_trip_through_memory_blobs() {
        for frame in frames() {
            let mut blobs = Vec::new();
            let wire = encode(&frame, &mut blobs).unwrap();
            assert_eq!(
                u32::from_le_bytes(wire[..4].try_into().unwrap()) as usize,
                wire.len() - 4
            );
            let back = decode(&wire[4..], &mut blobs).unwrap();
            assert_eq!(back, frame);
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for frame in frames() {
            let mut blobs = Vec::new();
            let wire = encode(&frame, &mut blobs).unwrap();
            let body = &wire[4..];
            for cut in 0..body.len() {
                assert!(decode(&body[..cut], &mut blobs).is_err(), "{frame:?} cut at {cut}");
            }
            let mut longer = body.to_vec();
            longer.push(0);
            assert!(decode(&longer, &mut blobs).unwrap_err().contains("left over"));
        }
    }

    #[test]
    fn corrupt_fields_are_errors() {
        let mut blobs = Vec::new();
        let call = &frames()[3];
        let wire = encode(call, &mut blobs).unwrap();
        let mut body = wire[4..].to_vec();
        body[0] = PROTOCOL_VERSION + 1;
        assert!(decode(&body, &mut blobs).unwrap_err().contains("protocol version"));
        body[0] = PROTOCOL_VERSION;
        body[1] = 99;
        assert!(decode(&body, &mut blobs).unwrap_err().contains("unknown frame kind 99"));
        // `FRAME_KINDS` is the number of kinds: the test frames use every one, and each kind's index is its byte.
        let mut kinds: Vec<u8> = frames()
            .iter()
            .map(|f| encode(f, &mut Vec::new()).unwrap()[5])
            .collect();
        kinds.dedup();
        assert_eq!(kinds, (0..FRAME_KINDS).collect::<Vec<_>>());
        // Payloads that are not there: the blob region is shorter than the refs say.
        let mut short = blobs[..blobs.len() / 2].to_vec();
        let err = decode(&wire[4..], &mut short).unwrap_err();
        assert!(err.contains("outside"), "{err}");
        // A huge announced count (`Results` with 2^32-1 results, as a postcard varint) fails fast instead of
        // allocating.
        let huge = [PROTOCOL_VERSION, 4, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(decode(&huge, &mut blobs).unwrap_err(), "truncated frame");
        // A payload that disagrees with the shape is refused by Tensor::new.
        let bad = Frame::Results(vec![Ok(vec![Tensor {
            dtype: DType::Float32,
            shape: vec![3],
            data: TensorData::Raw(Bytes::from_static(&[0; 8])),
        }])]);
        let wire = encode(&bad, &mut blobs).unwrap();
        assert!(
            decode(&wire[4..], &mut blobs)
                .unwrap_err()
                .contains("does not match shape")
        );
    }

    #[test]
    fn read_frame_reports_eof_and_truncation() {
        let mut blobs = Vec::new();
        let wire = encode(&Frame::Ready { pid: 1 }, &mut blobs).unwrap();
        assert_eq!(read_frame(&wire[..]).unwrap().unwrap(), wire[4..].to_vec());
        assert!(read_frame(&[][..]).unwrap().is_none());
        assert!(read_frame(&wire[..2]).is_err());
        assert!(read_frame(&wire[..wire.len() - 1]).is_err());
        let too_big = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert_eq!(read_frame(&too_big[..]).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn shared_memory_frames_cross_a_socket_with_their_regions() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut writer = ShmWriter::new(Shm::create("rustserve-test", 64).unwrap());
        let setup = encode(&Frame::Setup { functions: vec![] }, &mut Vec::new()).unwrap();
        send_with_fds(&a, &setup, &[writer.fd()]).unwrap();
        let (body, mut fds) = recv_with_fds(&b).unwrap();
        assert_eq!(
            decode(&body.unwrap(), &mut Vec::new()).unwrap(),
            Frame::Setup { functions: vec![] }
        );
        assert_eq!(fds.len(), 1);
        let mut reader = ShmReader::new(Shm::open(fds.remove(0)).unwrap());
        // The first frame fits; the second grows the region past the reader's mapping.
        for size in [16usize, 3 << 20] {
            let big = Tensor::from_raw(DType::UInt8, vec![size as i64], vec![7u8; size]).unwrap();
            let frame = Frame::Results(vec![Ok(vec![big, Tensor::scalar_string("x")])]);
            send_all(&a, &encode(&frame, &mut writer).unwrap()).unwrap();
            let body = read_frame(&b).unwrap().unwrap();
            assert_eq!(decode(&body, &mut reader).unwrap(), frame);
        }
        drop(a);
        assert!(read_frame(&b).unwrap().is_none());
        assert!(recv_with_fds(&b).unwrap().0.is_none());
    }

    #[test]
    fn wake_interrupts_a_wait() {
        let wake = Wake::new().unwrap();
        assert_eq!(wait_readable(&[wake.fd()], 0).unwrap(), vec![false]);
        wake.raise();
        wake.raise();
        assert_eq!(wait_readable(&[wake.fd()], 1000).unwrap(), vec![true]);
        wake.clear();
        assert_eq!(wait_readable(&[wake.fd()], 0).unwrap(), vec![false]);
    }
}
