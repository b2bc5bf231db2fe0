//! Micro-benchmarks of the relay's per-message work: splitting frames off a
//! read buffer and passing Query/Parse through the rewrite seam. Each group
//! has a baseline measured in the same run — copying the same bytes once,
//! the least any relay that touched the payload would do — so results read
//! as ratios.

use bytes::Buf;
use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgshift::proxy::framing::{FrameSplitter, FrameVisitor};
use pgshift::proxy::outqueue::OutQueue;
use pgshift::proxy::session::{BackendVisitor, FrontendVisitor, SessionState};
use pgshift::proxy::statement::rewrite_frame;
use pgshift::rewrite::PassThrough;

fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(payload.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// What `pgbench -S -M prepared` sends per transaction: Bind, Execute, Sync.
fn client_stream(transactions: usize) -> Vec<u8> {
    let mut bind = Vec::new();
    bind.extend_from_slice(b"\0P0_1\0");
    bind.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 5]);
    bind.extend_from_slice(b"12345");
    bind.extend_from_slice(&[0, 0]);
    let mut out = Vec::new();
    for _ in 0..transactions {
        out.extend(frame(b'B', &bind));
        out.extend(frame(b'E', b"\0\0\0\0\0"));
        out.extend(frame(b'S', b""));
    }
    out
}

/// What the server answers: BindComplete, DataRow, CommandComplete, ReadyForQuery.
fn server_stream(transactions: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..transactions {
        out.extend(frame(b'2', b""));
        out.extend(frame(b'D', &[0, 1, 0, 0, 0, 4, b'1', b'2', b'3', b'4']));
        out.extend(frame(b'C', b"SELECT 1\0"));
        out.extend(frame(b'Z', b"I"));
    }
    out
}

/// Splits a whole stream the way a relay direction does; returns the bytes
/// queued for writing.
fn split_all(input: &[u8], visitor: &mut impl FrameVisitor) -> usize {
    let mut buf = BytesMut::with_capacity(input.len());
    buf.put_slice(input);
    let mut splitter = FrameSplitter::new(64 << 20);
    let mut out = OutQueue::default();
    splitter.split(&mut buf, visitor, &mut out).unwrap();
    out.remaining()
}

fn framing(c: &mut Criterion) {
    let state = SessionState::new(false, Default::default());
    let client = client_stream(1000);
    let server = server_stream(1000);
    let mut group = c.benchmark_group("framing/client_bind_execute_sync");
    group.throughput(Throughput::Bytes(client.len() as u64));
    group.bench_function("baseline_copy", |b| {
        b.iter(|| std::hint::black_box(copy(&client)))
    });
    group.bench_function("pgshift_split", |b| {
        let mut visitor = FrontendVisitor::new(&state, &PassThrough);
        b.iter(|| std::hint::black_box(split_all(&client, &mut visitor)))
    });
    group.finish();
    let mut group = c.benchmark_group("framing/server_row_complete_ready");
    group.throughput(Throughput::Bytes(server.len() as u64));
    group.bench_function("baseline_copy", |b| {
        b.iter(|| std::hint::black_box(copy(&server)))
    });
    group.bench_function("pgshift_split", |b| {
        let mut visitor = BackendVisitor::new(&state, &PassThrough);
        b.iter(|| std::hint::black_box(split_all(&server, &mut visitor)))
    });
    group.finish();
}

/// The baseline: copy the stream once into a fresh buffer.
fn copy(input: &[u8]) -> usize {
    let mut buf = BytesMut::with_capacity(input.len());
    buf.put_slice(input);
    buf.freeze().len()
}

fn seam(c: &mut Criterion) {
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    let mut q = BytesMut::new();
    q.put_u8(b'Q');
    q.put_u32((sql.len() + 5) as u32);
    q.put_slice(sql.as_bytes());
    q.put_u8(0);
    let query = q.freeze();
    let mut group = c.benchmark_group("seam/query");
    group.bench_function("baseline_copy", |b| {
        b.iter(|| std::hint::black_box(Bytes::copy_from_slice(&query)))
    });
    group.bench_function("pgshift_passthrough", |b| {
        b.iter(|| {
            std::hint::black_box(
                rewrite_frame(&PassThrough, b'Q', &query, &tracing::Span::none()).unwrap(),
            )
        })
    });
    group.finish();
}

/// One pgbench `-S` transaction in each protocol: what the client sends and
/// what the server answers.
struct Transaction {
    name: &'static str,
    /// Sent once before the transactions (a prepared statement's Parse).
    setup: (Vec<u8>, Vec<u8>),
    client: Vec<u8>,
    server: Vec<u8>,
}

fn transactions() -> Vec<Transaction> {
    let sql = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;\0";
    let bind = |name: &[u8]| {
        let mut bind = b"\0".to_vec();
        bind.extend_from_slice(name);
        bind.extend_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0, 5]);
        bind.extend_from_slice(b"12345");
        bind.extend_from_slice(&[0, 0]);
        bind
    };
    let parse = |name: &[u8]| [name, b"\0", sql, &[0, 0]].concat();
    let row = [
        frame(b'D', &[0, 1, 0, 0, 0, 4, b'1', b'2', b'3', b'4']),
        frame(b'C', b"SELECT 1\0"),
        frame(b'Z', b"I"),
    ]
    .concat();
    let description = frame(b'T', &[&[0, 1][..], b"abalance\0", &[0; 18]].concat());
    let simple = b"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;\0";
    vec![
        Transaction {
            name: "simple",
            setup: (Vec::new(), Vec::new()),
            client: frame(b'Q', simple),
            server: [description.clone(), row.clone()].concat(),
        },
        Transaction {
            name: "extended",
            setup: (Vec::new(), Vec::new()),
            client: [
                frame(b'P', &parse(b"")),
                frame(b'B', &bind(b"")),
                frame(b'D', b"P\0"),
                frame(b'E', b"\0\0\0\0\0"),
                frame(b'S', b""),
            ]
            .concat(),
            server: [frame(b'1', b""), frame(b'2', b""), description, row.clone()].concat(),
        },
        Transaction {
            name: "prepared",
            setup: (
                [frame(b'P', &parse(b"P0_1")), frame(b'S', b"")].concat(),
                [frame(b'1', b""), frame(b'Z', b"I")].concat(),
            ),
            client: [
                frame(b'B', &bind(b"P0_1")),
                frame(b'E', b"\0\0\0\0\0"),
                frame(b'S', b""),
            ]
            .concat(),
            server: [frame(b'2', b""), row].concat(),
        },
    ]
}

/// One relay direction's buffers, reused from transaction to transaction.
struct Direction {
    inbuf: BytesMut,
    splitter: FrameSplitter,
    out: OutQueue,
}

impl Direction {
    fn new() -> Self {
        Direction {
            inbuf: BytesMut::with_capacity(8192),
            splitter: FrameSplitter::new(64 << 20),
            out: OutQueue::default(),
        }
    }

    /// What a pump does with one read: split it, then write it all.
    fn pass(&mut self, bytes: &[u8], visitor: &mut impl FrameVisitor) -> usize {
        self.inbuf.put_slice(bytes);
        self.splitter
            .split(&mut self.inbuf, visitor, &mut self.out)
            .unwrap();
        let n = self.out.remaining();
        self.out.advance(n);
        n
    }
}

/// A session's per-transaction work in both directions (both visitors, the
/// splitter, the out queues), with the rewriter `serve` runs when no
/// migration is active, and with the pass-through one, against copying the
/// same bytes in and out.
fn session(c: &mut Criterion) {
    use pgshift::rewrite::engine::MigrationRewriter;
    use pgshift::rewrite::rules::RulesCell;
    use std::sync::Arc;
    let serve = MigrationRewriter::new(Arc::new(RulesCell::new(&[])));
    for tx in transactions() {
        let mut group = c.benchmark_group(format!("session/{}", tx.name));
        group.throughput(Throughput::Elements(1));
        group.bench_function("baseline_copy", |b| {
            let mut buf = BytesMut::with_capacity(8192);
            b.iter(|| {
                buf.put_slice(&tx.client);
                let up = buf.split().freeze().len();
                buf.put_slice(&tx.server);
                std::hint::black_box(up + buf.split().freeze().len())
            })
        });
        for (name, rewriter) in [
            (
                "pgshift_passthrough",
                &PassThrough as &dyn pgshift::rewrite::StatementRewriter,
            ),
            ("pgshift_serve", &serve),
        ] {
            group.bench_function(name, |b| {
                let state = SessionState::new(false, Default::default());
                let mut frontend = FrontendVisitor::new(&state, rewriter);
                let mut backend = BackendVisitor::new(&state, rewriter);
                let (mut up, mut down) = (Direction::new(), Direction::new());
                up.pass(&tx.setup.0, &mut frontend);
                down.pass(&tx.setup.1, &mut backend);
                b.iter(|| {
                    let n = up.pass(&tx.client, &mut frontend);
                    std::hint::black_box(n + down.pass(&tx.server, &mut backend))
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, framing, seam, session);
criterion_main!(benches);
