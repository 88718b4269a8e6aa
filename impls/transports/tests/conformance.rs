//! The transport conformance suite, once per transport, plus the backend
//! rules through every transport that carries writes.

use transports::TransportKind;

transports::conformance_tests!(jsonl, TransportKind::Jsonl, writes);
transports::conformance_tests!(grpc, TransportKind::Grpc, writes);
transports::conformance_tests!(frpc, TransportKind::Frpc, writes);
transports::conformance_tests!(tarpc, TransportKind::Tarpc, writes);
transports::conformance_tests!(raw, TransportKind::Raw);
