//! Splitting a connection into independently owned read and write halves.
//!
//! Both sides of this crate read on one task and write on another.
//! `tokio::io::split` works for any stream but puts both halves behind one
//! lock, held across each system call, so a large reply being written
//! stalls the reading of the next request. TCP and Unix sockets can be split
//! without a lock, and connections are almost always one of the two, so
//! those are recognised (by type, at run time) and split natively.

use std::any::Any;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// The read half of a split connection.
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a split connection.
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Splits `stream`, without a shared lock when it is a TCP or Unix socket.
pub(crate) fn split<S>(stream: S) -> (ReadHalf, WriteHalf)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut slot = Some(stream);
    let any = &mut slot as &mut dyn Any;
    if let Some(tcp) = any
        .downcast_mut::<Option<TcpStream>>()
        .and_then(Option::take)
    {
        let (r, w) = tcp.into_split();
        return (Box::new(r), Box::new(w));
    }
    if let Some(unix) = any
        .downcast_mut::<Option<UnixStream>>()
        .and_then(Option::take)
    {
        let (r, w) = unix.into_split();
        return (Box::new(r), Box::new(w));
    }
    match slot {
        Some(other) => {
            let (r, w) = tokio::io::split(other);
            (Box::new(r), Box::new(w))
        }
        // Unreachable: `slot` is only emptied on the paths that returned.
        None => unreachable_split(),
    }
}

#[cold]
fn unreachable_split() -> (ReadHalf, WriteHalf) {
    (Box::new(tokio::io::empty()), Box::new(tokio::io::sink()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn every_kind_of_stream_splits_into_working_halves() {
        let (a, b) = UnixStream::pair().unwrap();
        check(a, b).await;
        let (a, b) = tokio::io::duplex(64);
        check(a, b).await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        check(a, b).await;
    }

    async fn check<S>(a: S, b: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut ar, mut aw) = split(a);
        let (mut br, mut bw) = split(b);
        aw.write_all(b"ping").await.unwrap();
        bw.write_all(b"pong").await.unwrap();
        let mut buf = [0u8; 4];
        br.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        ar.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
    }
}
