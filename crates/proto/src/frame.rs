//! Frames: the unit on the wire.
//!
//! ```text
//! u32  length of everything after this field (little endian), at most MAX_FRAME
//! u64  request id (replies carry the id of their request)
//! u32  header length, at most MAX_HEADER and at most what the frame holds
//! ...  header (postcard)
//! ...  data (raw bytes, the rest of the frame)
//! ```
//!
//! Every length is checked against its bound before anything is allocated, so a peer cannot
//! make us reserve memory it did not send.

use bytes::{Buf, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Largest header: directory listings with their attributes are the big ones.
pub const MAX_HEADER: usize = 1 << 20;
/// Largest data section: a 1 MiB FUSE request with room to spare.
pub const MAX_DATA: usize = 4 << 20;
/// Bytes after the length field that every frame has.
const FIXED: usize = 8 + 4;
/// Past this much, the rest of a frame's body is read straight from the socket into it,
/// not through the reader's buffer (a copy of every byte).
const DIRECT_AT: usize = 16 * 1024;
/// The buffer a connection reads through ([`read_frame_buffered`]): small frames come many
/// to a read, and no more than this of a large one is copied out of it.
pub const READ_BUFFER: usize = DIRECT_AT;
/// Largest value of the length field.
pub const MAX_FRAME: usize = FIXED + MAX_HEADER + MAX_DATA;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame length {0} out of bounds (at most {MAX_FRAME})")]
    FrameLength(usize),
    #[error("header length {header} does not fit a frame of {frame} bytes")]
    HeaderLength { header: usize, frame: usize },
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("undecodable header: {0}")]
    Decode(#[from] postcard::Error),
}

/// One frame as read off the wire.
#[derive(Debug, Clone)]
pub struct Frame {
    pub id: u64,
    pub header: Bytes,
    pub data: Bytes,
}

impl Frame {
    /// Decodes the header as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        Ok(postcard::from_bytes(&self.header)?)
    }
}

/// Reads one frame. Returns None on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, FrameError> {
    let Some((id, header_len, body_len)) = read_prefix(r).await? else {
        return Ok(None);
    };
    // Filled from the socket without zeroing it first, and never past this frame.
    let mut body = BytesMut::with_capacity(body_len);
    fill(r, &mut body, body_len).await?;
    Ok(Some(Frame::split(id, header_len, body)))
}

/// [`read_frame`] from a buffered reader: a large body takes what the buffer holds, and
/// the rest comes from the socket straight into it.
pub async fn read_frame_buffered<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> Result<Option<Frame>, FrameError> {
    let Some((id, header_len, body_len)) = read_prefix(r).await? else {
        return Ok(None);
    };
    let mut body = BytesMut::with_capacity(body_len);
    let buffered = r.buffer();
    let n = buffered.len().min(body_len);
    body.extend_from_slice(&buffered[..n]);
    r.consume(n);
    if body_len - n >= DIRECT_AT {
        // The buffer is empty now: reading past it skips nothing.
        fill(r.get_mut(), &mut body, body_len).await?;
    } else {
        fill(r, &mut body, body_len).await?;
    }
    Ok(Some(Frame::split(id, header_len, body)))
}

impl Frame {
    fn split(id: u64, header_len: usize, body: BytesMut) -> Frame {
        let mut body = body.freeze();
        let header = body.split_to(header_len);
        Frame {
            id,
            header,
            data: body,
        }
    }
}

/// Reads `body` up to `len` bytes.
async fn fill<R: AsyncRead + Unpin>(r: &mut R, body: &mut BytesMut, len: usize) -> Result<(), FrameError> {
    while body.len() < len {
        let want = (len - body.len()) as u64;
        if (&mut *r).take(want).read_buf(body).await? == 0 {
            return Err(FrameError::Truncated);
        }
    }
    Ok(())
}

/// Reads a frame's length and fixed fields, checked: its id, header length and body
/// length. None on a clean end of stream.
async fn read_prefix<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<(u64, usize, usize)>, FrameError> {
    let mut len_buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len_buf[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_le_bytes(len_buf) as usize;
    if !(FIXED..=MAX_FRAME).contains(&len) {
        return Err(FrameError::FrameLength(len));
    }
    let mut fixed = [0u8; FIXED];
    read_exact(r, &mut fixed).await?;
    let mut fixed_buf = &fixed[..];
    let id = fixed_buf.get_u64_le();
    let header_len = fixed_buf.get_u32_le() as usize;
    let body_len = len - FIXED;
    if header_len > MAX_HEADER || header_len > body_len || body_len - header_len > MAX_DATA {
        return Err(FrameError::HeaderLength {
            header: header_len,
            frame: len,
        });
    }
    Ok(Some((id, header_len, body_len)))
}

async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), FrameError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(e.into()),
    }
}

/// Encodes a message as a frame header.
pub fn encode_header<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let header = postcard::to_allocvec(msg)?;
    if header.len() > MAX_HEADER {
        return Err(FrameError::HeaderLength {
            header: header.len(),
            frame: MAX_FRAME,
        });
    }
    Ok(header)
}

/// The prefix (length, id, header length) of a frame with this header and data size.
pub fn prefix(id: u64, header_len: usize, data_len: usize) -> Result<[u8; 16], FrameError> {
    if header_len > MAX_HEADER {
        return Err(FrameError::HeaderLength {
            header: header_len,
            frame: MAX_FRAME,
        });
    }
    if data_len > MAX_DATA {
        return Err(FrameError::FrameLength(FIXED + header_len + data_len));
    }
    let len = (FIXED + header_len + data_len) as u32;
    let mut p = [0u8; 16];
    p[0..4].copy_from_slice(&len.to_le_bytes());
    p[4..12].copy_from_slice(&id.to_le_bytes());
    p[12..16].copy_from_slice(&(header_len as u32).to_le_bytes());
    Ok(p)
}

/// Writes one frame (without flushing).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    id: u64,
    header: &[u8],
    data: &[u8],
) -> Result<(), FrameError> {
    let p = prefix(id, header.len(), data.len())?;
    w.write_all(&p).await?;
    w.write_all(header).await?;
    if !data.is_empty() {
        w.write_all(data).await?;
    }
    Ok(())
}

/// Encodes and writes one message with data, then flushes: for the handshake and other
/// one-off exchanges.
pub async fn send<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    id: u64,
    msg: &T,
    data: &[u8],
) -> Result<(), FrameError> {
    let header = encode_header(msg)?;
    write_frame(w, id, &header, data).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame and decodes its header; end of stream is an error here.
pub async fn recv<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<(u64, T, Bytes), FrameError> {
    let frame = read_frame(r).await?.ok_or(FrameError::Truncated)?;
    let msg = frame.decode()?;
    Ok((frame.id, msg, frame.data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Request;

    #[tokio::test]
    async fn round_trip() {
        let mut buf = Vec::new();
        let req = Request::Write { fh: 7, offset: 4096 };
        send(&mut buf, 42, &req, b"hello").await.unwrap();
        let (id, got, data): (u64, Request, Bytes) = recv(&mut &buf[..]).await.unwrap();
        assert_eq!((id, got, &data[..]), (42, req, &b"hello"[..]));
    }

    #[tokio::test]
    async fn absurd_lengths_are_refused_before_allocation() {
        let mut frame = Vec::new();
        frame.extend_from_slice(&u32::MAX.to_le_bytes());
        frame.extend_from_slice(&[0u8; 12]);
        assert!(matches!(
            read_frame(&mut &frame[..]).await,
            Err(FrameError::FrameLength(_))
        ));

        let mut frame = Vec::new();
        frame.extend_from_slice(&(12u32 + 4).to_le_bytes());
        frame.extend_from_slice(&1u64.to_le_bytes());
        frame.extend_from_slice(&100u32.to_le_bytes()); // header longer than the frame
        frame.extend_from_slice(&[0u8; 4]);
        assert!(matches!(
            read_frame(&mut &frame[..]).await,
            Err(FrameError::HeaderLength { .. })
        ));
    }

    #[tokio::test]
    async fn truncation_is_reported() {
        let mut buf = Vec::new();
        send(&mut buf, 1, &Request::Ping, b"abc").await.unwrap();
        for cut in 1..buf.len() {
            let r = read_frame(&mut &buf[..cut]).await;
            assert!(matches!(r, Err(FrameError::Truncated)), "cut at {cut}: {r:?}");
        }
        assert!(read_frame(&mut &buf[..0]).await.unwrap().is_none());
    }

    /// Hands out at most `step` bytes per read, as a socket may.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self.step.min(self.data.len()).min(buf.remaining());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn buffered_frames_of_every_size_arrive_whole() {
        let sizes = [
            0usize,
            10,
            20_000,
            300_000,
            5,
            70_000,
            DIRECT_AT - 1,
            DIRECT_AT,
            1 << 20,
        ];
        let mut buf = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..n).map(|j| (i * 7 + j) as u8).collect();
            send(&mut buf, i as u64, &Request::Ping, &data).await.unwrap();
        }
        for (step, cap) in [(usize::MAX, 256 * 1024), (1000, 4096), (70_001, 64 * 1024)] {
            let mut r = BufReader::with_capacity(cap, Trickle { data: &buf, step });
            for (i, &n) in sizes.iter().enumerate() {
                let f = read_frame_buffered(&mut r).await.unwrap().unwrap();
                let want: Vec<u8> = (0..n).map(|j| (i * 7 + j) as u8).collect();
                assert_eq!(f.id, i as u64);
                assert_eq!(f.decode::<Request>().unwrap(), Request::Ping);
                assert!(f.data[..] == want[..], "frame {i} (step {step}, buffer {cap})");
            }
            assert!(read_frame_buffered(&mut r).await.unwrap().is_none());
            let mut cut = BufReader::with_capacity(
                cap,
                Trickle {
                    data: &buf[..buf.len() - 1],
                    step,
                },
            );
            for _ in 1..sizes.len() {
                read_frame_buffered(&mut cut).await.unwrap().unwrap();
            }
            assert!(matches!(
                read_frame_buffered(&mut cut).await,
                Err(FrameError::Truncated)
            ));
        }
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                if let Ok(Some(f)) = read_frame(&mut &bytes[..]).await {
                    let _ = f.decode::<Request>();
                }
            });
        }
    }
}
