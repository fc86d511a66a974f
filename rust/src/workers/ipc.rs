//! The wire between the server and a Python worker process (`python -m rustserve.worker`): length-prefixed frames
//! on a Unix socket, with every tensor payload in shared memory. Plain Rust (no pyo3), so it is unit-tested alone.
//!
//! Frame on the socket: `u32 LE body length | body`; body = `u8 protocol version | u8 kind | fields`. Fields are
//! little-endian integers, `u32`-length-prefixed UTF-8 strings, and tensors as `dtype, dims, blob refs`. A blob
//! ref is `(u64 offset, u64 len)` into the *sender's* shared-memory region. There are two regions per worker, one
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
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

/// Bumped whenever the body layout changes; both sides refuse a frame of another version.
pub const PROTOCOL_VERSION: u8 = 1;
/// Frames carry metadata only (payloads are in shared memory), so a huge length means a broken peer.
pub const MAX_FRAME: usize = 64 << 20;
/// Initial size of each shared-memory region; pages are only allocated when touched.
pub const INITIAL_REGION: usize = 1 << 20;

/// One Python stage function the worker must serve: the server's id for it, and where servable_config.py
/// registered it (so both processes agree without comparing memory addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
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

mod kind {
    pub const SETUP: u8 = 1;
    pub const READY: u8 = 2;
    pub const SETUP_FAILED: u8 = 3;
    pub const CALL: u8 = 4;
    pub const RESULTS: u8 = 5;
    pub const MODEL_CALL: u8 = 6;
    pub const MODEL_REPLY: u8 = 7;
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
// Encoding
// ---------------------------------------------------------------------------------------------------------------

struct Encoder<'a> {
    out: Vec<u8>,
    blobs: &'a mut dyn BlobSink,
}

impl Encoder<'_> {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn len(&mut self, n: usize) -> io::Result<()> {
        let n = u32::try_from(n).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "count exceeds u32"))?;
        self.u32(n);
        Ok(())
    }

    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn str(&mut self, s: &str) -> io::Result<()> {
        self.len(s.len())?;
        self.out.extend_from_slice(s.as_bytes());
        Ok(())
    }

    fn blob(&mut self, data: &[u8]) -> io::Result<()> {
        let (offset, len) = if data.is_empty() { (0, 0) } else { self.blobs.put(data)? };
        self.u64(offset);
        self.u64(len);
        Ok(())
    }

    fn tensor(&mut self, t: &Tensor) -> io::Result<()> {
        self.u8(t.dtype.to_ms_proto() as u8);
        self.len(t.shape.len())?;
        for &d in &t.shape {
            self.out.extend_from_slice(&d.to_le_bytes());
        }
        match &t.data {
            TensorData::Raw(raw) => self.blob(raw),
            TensorData::Items(items) => {
                self.len(items.len())?;
                items.iter().try_for_each(|item| self.blob(item))
            }
        }
    }

    fn instances(&mut self, instances: &[Vec<Tensor>]) -> io::Result<()> {
        self.len(instances.len())?;
        for tensors in instances {
            self.len(tensors.len())?;
            tensors.iter().try_for_each(|t| self.tensor(t))?;
        }
        Ok(())
    }

    fn error(&mut self, e: &ServeError) -> io::Result<()> {
        let tag = match e {
            ServeError::InvalidInput(_) => 0,
            ServeError::Stage(_) => 1,
            ServeError::Model(_) => 2,
            ServeError::Unavailable(_) => 3,
            ServeError::Overloaded(_) => 4,
            ServeError::Config(_) => 5,
            ServeError::Internal(_) => 6,
            ServeError::Timeout(_) => 7,
        };
        self.u8(tag);
        self.str(e.message())
    }

    fn results(&mut self, results: &[InstanceResult]) -> io::Result<()> {
        self.len(results.len())?;
        for result in results {
            match result {
                Ok(tensors) => {
                    self.u8(0);
                    self.len(tensors.len())?;
                    tensors.iter().try_for_each(|t| self.tensor(t))?;
                }
                Err(e) => {
                    self.u8(1);
                    self.error(e)?;
                }
            }
        }
        Ok(())
    }
}

/// Encodes `frame` as wire bytes (length prefix included), its payloads into `blobs` (reset first).
pub fn encode(frame: &Frame, blobs: &mut dyn BlobSink) -> io::Result<Vec<u8>> {
    blobs.reset();
    let mut e = Encoder { out: vec![0; 4], blobs };
    e.u8(PROTOCOL_VERSION);
    match frame {
        Frame::Setup { functions } => {
            e.u8(kind::SETUP);
            e.len(functions.len())?;
            for f in functions {
                e.u64(f.id);
                e.str(&f.method)?;
                e.u32(f.stage_index);
                e.str(&f.name)?;
            }
        }
        Frame::Ready { pid } => {
            e.u8(kind::READY);
            e.u32(*pid);
        }
        Frame::SetupFailed { message } => {
            e.u8(kind::SETUP_FAILED);
            e.str(message)?;
        }
        Frame::Call(call) => {
            e.u8(kind::CALL);
            e.u64(call.function);
            e.str(&call.name)?;
            e.str(&call.tag)?;
            e.str(&call.method)?;
            e.u32(call.stage_index);
            e.u32(call.outputs_count);
            match call.batch_size {
                None => e.u8(0),
                Some(size) => {
                    e.u8(1);
                    e.u32(size);
                }
            }
            e.instances(&call.instances)?;
        }
        Frame::Results(results) => {
            e.u8(kind::RESULTS);
            e.results(results)?;
        }
        Frame::ModelCall {
            key,
            subgraph,
            instances,
        } => {
            e.u8(kind::MODEL_CALL);
            e.str(key)?;
            e.u64(*subgraph);
            e.instances(instances)?;
        }
        Frame::ModelReply(reply) => {
            e.u8(kind::MODEL_REPLY);
            match reply {
                Ok(results) => {
                    e.u8(0);
                    e.results(results)?;
                }
                Err(text) => {
                    e.u8(1);
                    e.str(text)?;
                }
            }
        }
    }
    let body = e.out.len() - 4;
    if body > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {body} bytes is too large"),
        ));
    }
    e.out[..4].copy_from_slice(&(body as u32).to_le_bytes());
    Ok(e.out)
}

// ---------------------------------------------------------------------------------------------------------------
// Decoding: every length is checked against what is left, so a truncated or corrupt frame is an error, never a
// panic or a huge allocation.
// ---------------------------------------------------------------------------------------------------------------

struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    blobs: &'a mut dyn BlobSource,
}

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(format!(
                "truncated frame: {n} bytes needed at offset {}, {left} left",
                self.pos
            ));
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    /// A count of items that take at least `min_size` bytes each in the rest of the frame.
    fn count(&mut self, min_size: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        let left = self.buf.len() - self.pos;
        if n.saturating_mul(min_size) > left {
            return Err(format!("truncated frame: {n} items announced, {left} bytes left"));
        }
        Ok(n)
    }

    fn str(&mut self) -> Result<String, String> {
        let n = self.count(1)?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "frame string is not UTF-8".to_string())
    }

    fn blob(&mut self) -> Result<Bytes, String> {
        let offset = self.u64()?;
        let len = self.u64()?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        self.blobs.get(offset, len)
    }

    fn tensor(&mut self) -> Result<Tensor, String> {
        let code = self.u8()?;
        let dtype = DType::from_ms_proto(i32::from(code)).ok_or_else(|| format!("unknown dtype code {code}"))?;
        let ndim = self.count(8)?;
        let shape = (0..ndim)
            .map(|_| self.array().map(i64::from_le_bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let data = if dtype.is_variable() {
            let n = self.count(16)?;
            TensorData::Items((0..n).map(|_| self.blob()).collect::<Result<_, _>>()?)
        } else {
            TensorData::Raw(self.blob()?)
        };
        Tensor::new(dtype, shape, data)
    }

    fn instances(&mut self) -> Result<Vec<Vec<Tensor>>, String> {
        let n = self.count(4)?;
        (0..n)
            .map(|_| {
                let m = self.count(1)?;
                (0..m).map(|_| self.tensor()).collect()
            })
            .collect()
    }

    fn error(&mut self) -> Result<ServeError, String> {
        let tag = self.u8()?;
        let text = self.str()?;
        Ok(match tag {
            0 => ServeError::InvalidInput(text),
            1 => ServeError::Stage(text),
            2 => ServeError::Model(text),
            3 => ServeError::Unavailable(text),
            4 => ServeError::Overloaded(text),
            5 => ServeError::Config(text),
            6 => ServeError::Internal(text),
            7 => ServeError::Timeout(text),
            other => return Err(format!("unknown error kind {other}")),
        })
    }

    fn results(&mut self) -> Result<Vec<InstanceResult>, String> {
        let n = self.count(1)?;
        (0..n)
            .map(|_| match self.u8()? {
                0 => {
                    let m = self.count(1)?;
                    Ok(Ok((0..m).map(|_| self.tensor()).collect::<Result<_, _>>()?))
                }
                1 => Ok(Err(self.error()?)),
                other => Err(format!("unknown result tag {other}")),
            })
            .collect()
    }

    fn frame(&mut self) -> Result<Frame, String> {
        let version = self.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {version} is not the supported version {PROTOCOL_VERSION} (server and worker \
                 must come from the same rustserve install)"
            ));
        }
        let frame = match self.u8()? {
            kind::SETUP => {
                let n = self.count(20)?;
                let functions = (0..n)
                    .map(|_| {
                        Ok(FunctionEntry {
                            id: self.u64()?,
                            method: self.str()?,
                            stage_index: self.u32()?,
                            name: self.str()?,
                        })
                    })
                    .collect::<Result<_, String>>()?;
                Frame::Setup { functions }
            }
            kind::READY => Frame::Ready { pid: self.u32()? },
            kind::SETUP_FAILED => Frame::SetupFailed { message: self.str()? },
            kind::CALL => Frame::Call(CallFrame {
                function: self.u64()?,
                name: self.str()?,
                tag: self.str()?,
                method: self.str()?,
                stage_index: self.u32()?,
                outputs_count: self.u32()?,
                batch_size: match self.u8()? {
                    0 => None,
                    1 => Some(self.u32()?),
                    other => return Err(format!("unknown batch size tag {other}")),
                },
                instances: self.instances()?,
            }),
            kind::RESULTS => Frame::Results(self.results()?),
            kind::MODEL_CALL => Frame::ModelCall {
                key: self.str()?,
                subgraph: self.u64()?,
                instances: self.instances()?,
            },
            kind::MODEL_REPLY => Frame::ModelReply(match self.u8()? {
                0 => Ok(self.results()?),
                1 => Err(self.str()?),
                other => return Err(format!("unknown reply tag {other}")),
            }),
            other => return Err(format!("unknown frame kind {other}")),
        };
        if self.pos != self.buf.len() {
            return Err(format!("{} bytes left over after the frame", self.buf.len() - self.pos));
        }
        Ok(frame)
    }
}

/// Decodes a frame body (without its length prefix); payloads are copied out of `blobs`.
pub fn decode(body: &[u8], blobs: &mut dyn BlobSource) -> Result<Frame, String> {
    Decoder {
        buf: body,
        pos: 0,
        blobs,
    }
    .frame()
}

// ---------------------------------------------------------------------------------------------------------------
// Socket I/O
// ---------------------------------------------------------------------------------------------------------------

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// Writes all of `bytes`; never raises SIGPIPE (a dead peer is an `EPIPE` error, not a dead server).
pub fn send_all(stream: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe the live `bytes` slice; the fd is owned by `stream`.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let err = last_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        bytes = &bytes[n as usize..];
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

/// Room for the two region fds of `Setup` (as `u64`s, for cmsghdr alignment).
const CMSG_WORDS: usize = 8;
const MAX_FDS: usize = 4;

/// Sends wire bytes with file descriptors attached (SCM_RIGHTS).
pub fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS, "at most {MAX_FDS} fds per frame");
    let mut control = [0u64; CMSG_WORDS];
    let payload = std::mem::size_of_val(fds) as u32;
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below refers to a live local buffer of the stated size, and
    // the cmsg header and data are written through the libc macros within `control` (CMSG_SPACE(16) <= 64 bytes).
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(payload) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
        let bytes: Vec<u8> = fds.iter().flat_map(|fd| fd.to_ne_bytes()).collect();
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), libc::CMSG_DATA(cmsg), bytes.len());
        loop {
            let n = libc::sendmsg(stream.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL);
            if n >= 0 || last_error().kind() != io::ErrorKind::Interrupted {
                break n;
            }
        }
    };
    if sent < 0 {
        return Err(last_error());
    }
    send_all(stream, &bytes[sent as usize..])
}

/// Reads one frame and the file descriptors sent with it; `None` body on a clean end of stream.
pub fn recv_with_fds(stream: &UnixStream) -> io::Result<(Option<Vec<u8>>, Vec<OwnedFd>)> {
    let mut head = [0u8; 4];
    let mut control = [0u64; CMSG_WORDS];
    let mut iov = libc::iovec {
        iov_base: head.as_mut_ptr().cast(),
        iov_len: head.len(),
    };
    let mut fds = Vec::new();
    // SAFETY: as in `send_with_fds`; the kernel writes at most `msg_controllen` bytes into `control`, and each fd
    // read out of a SCM_RIGHTS message is a new descriptor this process now owns (MSG_CMSG_CLOEXEC sets CLOEXEC).
    let got = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = loop {
            let n = libc::recvmsg(stream.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 || last_error().kind() != io::ErrorKind::Interrupted {
                break n;
            }
        };
        if n < 0 {
            return Err(last_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data_len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = std::slice::from_raw_parts(libc::CMSG_DATA(cmsg), data_len);
                for fd in data.chunks_exact(std::mem::size_of::<RawFd>()) {
                    let mut raw = [0u8; std::mem::size_of::<RawFd>()];
                    raw.copy_from_slice(fd);
                    fds.push(OwnedFd::from_raw_fd(RawFd::from_ne_bytes(raw)));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many file descriptors in a frame",
            ));
        }
        n as usize
    };
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
pub fn wait_readable(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `polls` is a live array of `polls.len()` pollfd structs.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, timeout_ms) };
        if n >= 0 {
            return Ok(polls.iter().map(|p| p.revents != 0).collect());
        }
        let err = last_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A wake-up flag another thread can raise to interrupt `wait_readable` (an eventfd).
pub struct Wake(OwnedFd);

impl Wake {
    pub fn new() -> io::Result<Wake> {
        // SAFETY: plain syscall; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(last_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Wake(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Raises the flag (never blocks).
    pub fn raise(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to our eventfd; a full counter (EAGAIN) is already raised.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Lowers the flag.
    pub fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer; EAGAIN (not raised) is fine.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
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
        let name = std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `name` is a valid C string; a non-negative result is a new fd we own.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(last_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let mut shm = Shm {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
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

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn map(&mut self, len: usize) -> io::Result<()> {
        self.unmap();
        if len == 0 {
            return Ok(());
        }
        // SAFETY: maps `len` bytes of our memfd, whose size is at least `len` (set by ftruncate or read by fstat).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(last_error());
        }
        self.ptr = ptr.cast();
        self.len = len;
        Ok(())
    }

    fn unmap(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr`/`len` describe a mapping made by `map` and not unmapped since.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
            self.ptr = std::ptr::null_mut();
            self.len = 0;
        }
    }

    /// Grows the file to `len` bytes (never shrinks: the peer may map it) and remaps.
    fn resize(&mut self, len: usize) -> io::Result<()> {
        let size = libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: plain syscall on our fd.
        if unsafe { libc::ftruncate(self.fd.as_raw_fd(), size) } < 0 {
            return Err(last_error());
        }
        self.map(len)
    }

    /// Remaps at the file's current size when the peer grew it.
    fn refresh(&mut self) -> io::Result<()> {
        // SAFETY: fstat writes into a zeroed stat struct we own.
        let size = unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            if libc::fstat(self.fd.as_raw_fd(), &raw mut stat) < 0 {
                return Err(last_error());
            }
            usize::try_from(stat.st_size).unwrap_or(0)
        };
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

    pub fn fd(&self) -> RawFd {
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
        // Payloads that are not there: the blob region is shorter than the refs say.
        let mut short = blobs[..blobs.len() / 2].to_vec();
        let err = decode(&wire[4..], &mut short).unwrap_err();
        assert!(err.contains("outside"), "{err}");
        // A huge announced count fails fast instead of allocating.
        let mut huge = vec![PROTOCOL_VERSION, 5];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge, &mut blobs).unwrap_err().contains("items announced"));
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
