//! The handshake phase, both sides: the server's option loop
//! (`server`) and the client's greeting, `NBD_OPT_GO` with its
//! `NBD_OPT_EXPORT_NAME` fallback, `NBD_OPT_LIST` and `NBD_OPT_INFO`
//! ([`client`]).
//!
//! Neither side buffers reads during the handshake: the bytes after the
//! last handshake message belong to the transmission phase, and a read-ahead
//! buffer would swallow them (the kernel, for one, takes over the raw socket).

pub mod client;
pub(crate) mod server;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::NbdError;

/// Reads exactly `N` bytes.
pub(crate) async fn read_array<const N: usize, R>(
    r: &mut R,
    during: &'static str,
) -> Result<[u8; N], NbdError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut buf = [0u8; N];
    r.read_exact(&mut buf)
        .await
        .map_err(NbdError::eof_during(during))?;
    Ok(buf)
}

/// Fills `buf`, or returns `Ok(false)` if the stream ended before its first
/// byte: the peer hung up between messages rather than inside one.
pub(crate) async fn read_exact_or_eof<R>(
    r: &mut R,
    buf: &mut [u8],
    during: &'static str,
) -> Result<bool, NbdError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(false);
            }
            return Err(NbdError::UnexpectedEof { during });
        }
        filled += n;
    }
    Ok(true)
}

/// Reads and drops `n` bytes through a small fixed buffer, so a peer's
/// declared length never becomes an allocation.
pub(crate) async fn discard<R>(r: &mut R, n: u64, during: &'static str) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut limited = r.take(n);
    let copied = tokio::io::copy(&mut limited, &mut tokio::io::sink()).await?;
    if copied != n {
        return Err(NbdError::UnexpectedEof { during });
    }
    Ok(())
}
