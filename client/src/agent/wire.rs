//! The agent socket's messages: each a 4-byte little-endian length, then
//! the protobuf message; and, once the agent took the job, one unframed
//! byte from its `mexec` that carries its stdout and stderr (SCM_RIGHTS).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A message bigger than this is not ours: the whole environment of a job
/// is well below it.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// The descriptors handed over: the job's stdout and stderr.
pub const PASSED: [RawFd; 2] = [1, 2];

/// Sends the byte that carries `fds`.
pub fn send_fds(socket: &impl AsRawFd, fds: &[RawFd]) -> std::io::Result<()> {
    let rights = [ControlMessage::ScmRights(fds)];
    socket::sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&[0])],
        &rights,
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Receives the byte that carries the descriptors (on a socket that is
/// ready to read); `Ok(None)` when the peer closed without sending any.
pub fn try_receive_fds(socket: &impl AsRawFd) -> std::io::Result<Option<Vec<OwnedFd>>> {
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(&mut byte)];
    let message = socket::recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        receive_flags(),
    )?;
    if message.bytes == 0 {
        return Ok(None);
    }
    let mut fds = Vec::new();
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = control {
            // SAFETY: the kernel just installed these descriptors in this
            // process for us; nothing else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok(Some(fds))
}

/// Non-blocking, and close-on-exec where the system can set it on receipt
/// (elsewhere it does not matter: the agent starts no programs).
fn receive_flags() -> MsgFlags {
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly"
    ))]
    return MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT;
    #[allow(unreachable_code)]
    MsgFlags::MSG_DONTWAIT
}

/// Writes one message.
pub async fn write<M: Message>(
    writer: &mut (impl AsyncWrite + Unpin),
    message: &M,
) -> std::io::Result<()> {
    writer.write_all(&frame(message)).await
}

/// One message as it goes on the socket.
pub fn frame<M: Message>(message: &M) -> Vec<u8> {
    let len = message.encoded_len();
    let mut bytes = Vec::with_capacity(4 + len);
    bytes.extend_from_slice(&(len as u32).to_le_bytes());
    // Cannot fail: the vector grows as needed.
    let _ = message.encode(&mut bytes);
    bytes
}

/// Reads one message; `Ok(None)` at a clean end between messages.
pub async fn read<M: Message + Default>(
    reader: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Option<M>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let mut body = vec![0u8; body_len(len)?];
    reader.read_exact(&mut body).await?;
    decode(&body).map(Some)
}

/// Writes one message, blocking (the `mexec` front has no runtime).
pub fn write_blocking<M: Message>(
    writer: &mut impl std::io::Write,
    message: &M,
) -> std::io::Result<()> {
    writer.write_all(&frame(message))
}

/// Reads one message, blocking; `Ok(None)` at a clean end between
/// messages.
pub fn read_blocking<M: Message + Default>(
    reader: &mut impl std::io::Read,
) -> std::io::Result<Option<M>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let mut body = vec![0u8; body_len(len)?];
    reader.read_exact(&mut body)?;
    decode(&body).map(Some)
}

/// The length of the message that follows, if it may be ours.
fn body_len(len: [u8; 4]) -> std::io::Result<usize> {
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a message of {len} bytes"),
        ));
    }
    Ok(len)
}

fn decode<M: Message + Default>(body: &[u8]) -> std::io::Result<M> {
    M::decode(body).map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))
}
