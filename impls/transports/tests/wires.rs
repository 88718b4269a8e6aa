//! Wire details of raw, gRPC and the uniform client that the shared suite
//! does not reach: unknown methods and the bytes the client counts.

// Test helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use backends::conformance::pattern;
use backends::{Backend, MemoryBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use transports::conformance::{test_config, within, TestServer};
use transports::raw::{encode_request, ERROR_BIT};
use transports::{RemoteError, Services, TransportKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_answers_an_unknown_op_after_earlier_replies_then_closes() {
    let memory = Arc::new(MemoryBackend::from_bytes(pattern(1, 0, 4096)));
    let server =
        TestServer::start(TransportKind::Raw, Services::backend(memory), test_config()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut bytes = encode_request(1, 10, 4).to_vec();
    bytes.extend(encode_request(2, 0, 4)); // 2 would be a write: not in raw
    bytes.extend(encode_request(1, 0, 4)); // never answered
    stream.write_all(&bytes).await.unwrap();
    let mut said = Vec::new();
    within("the server closing", stream.read_to_end(&mut said))
        .await
        .unwrap();
    assert_eq!(&said[..4], &4u32.to_le_bytes());
    assert_eq!(&said[4..8], &pattern(1, 10, 4)[..]);
    let word = u32::from_le_bytes(said[8..12].try_into().unwrap());
    assert_ne!(word & ERROR_BIT, 0, "second reply is an error");
    let body = &said[12..];
    assert_eq!(
        body.len(),
        (word & !ERROR_BIT) as usize,
        "nothing after the error"
    );
    match serde_json::from_slice::<RemoteError>(body).unwrap() {
        RemoteError::Remote(m) => assert!(m.contains("unknown raw op 2"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_answers_an_unknown_method_with_unimplemented() {
    use tonic::codegen::http::uri::PathAndQuery;
    let memory = Arc::new(MemoryBackend::new(4096));
    let server = TestServer::start(
        TransportKind::Grpc,
        Services::backend(memory),
        test_config(),
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<transports::grpc::pb::Empty, transports::grpc::pb::Empty>::default();
    let answer = within(
        "an unknown method",
        grpc.unary(
            tonic::Request::new(transports::grpc::pb::Empty {}),
            PathAndQuery::from_static("/memsync.v1.Backend/Nope"),
            codec,
        ),
    )
    .await;
    let status = answer.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_counts_what_it_carried() {
    for kind in TransportKind::ALL {
        let memory = Arc::new(MemoryBackend::from_bytes(pattern(2, 0, 1 << 20)));
        let server = TestServer::start(kind, Services::backend(memory), test_config()).await;
        let client = kind.connect(server.addr, &test_config()).await.unwrap();
        let backend = client.backend();
        let mut buf = vec![0; 256 * 1024];
        for i in 0..4u64 {
            backend
                .read_exact_at(&mut buf, i * 256 * 1024)
                .await
                .unwrap();
            assert!(
                buf == pattern(2, i * 256 * 1024, buf.len()),
                "{kind}: read {i}"
            );
        }
        let stats = client.stats();
        assert_eq!(client.kind(), kind);
        assert_eq!(stats.requests, 4, "{kind}: {stats:?}");
        assert!(stats.bytes_received >= 1 << 20, "{kind}: {stats:?}");
        assert!(stats.bytes_sent > 0, "{kind}: {stats:?}");
        assert!(!client.is_closed(), "{kind}");
        drop(backend);
        drop(client);
        let served = server.stop().await;
        assert!(served.bytes_sent >= 1 << 20, "{kind}: {served:?}");
    }
}
