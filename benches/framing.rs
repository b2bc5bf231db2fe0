//! Micro-benchmarks of the relay's per-message work: splitting frames off a
//! read buffer and passing Query/Parse through the rewrite seam. Each group
//! has a baseline measured in the same run — copying the same bytes once,
//! the least any relay that touched the payload would do — so results read
//! as ratios.

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pgshift::proxy::framing::{FrameSplitter, Handling, Piece};
use pgshift::proxy::relay::{classify_backend, classify_frontend};
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

fn split_all(input: &[u8], classify: fn(u8) -> Handling) -> usize {
    let mut buf = BytesMut::with_capacity(input.len());
    buf.put_slice(input);
    let mut splitter = FrameSplitter::new(64 << 20);
    let mut pieces = Vec::with_capacity(4096);
    let mut observed = 0usize;
    splitter
        .split(
            &mut buf,
            classify,
            |_, frame| observed += frame.map_or(0, <[u8]>::len),
            &mut pieces,
        )
        .unwrap();
    observed
        + pieces
            .iter()
            .map(|p| match p {
                Piece::Forward(b) => b.len(),
                Piece::Inspect { frame, .. } => frame.len(),
            })
            .sum::<usize>()
}

fn framing(c: &mut Criterion) {
    for (name, input, classify) in [
        (
            "client_bind_execute_sync",
            client_stream(1000),
            classify_frontend as fn(u8) -> Handling,
        ),
        (
            "server_row_complete_ready",
            server_stream(1000),
            classify_backend as fn(u8) -> Handling,
        ),
    ] {
        let mut group = c.benchmark_group(format!("framing/{name}"));
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function("baseline_copy", |b| {
            b.iter(|| {
                let mut buf = BytesMut::with_capacity(input.len());
                buf.put_slice(&input);
                std::hint::black_box(buf.freeze().len())
            })
        });
        group.bench_function("pgshift_split", |b| {
            b.iter(|| std::hint::black_box(split_all(&input, classify)))
        });
        group.finish();
    }
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
        b.iter_batched(
            || query.clone(),
            |q| std::hint::black_box(Bytes::copy_from_slice(&q)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("pgshift_passthrough", |b| {
        b.iter_batched(
            || query.clone(),
            |q| std::hint::black_box(rewrite_frame(&PassThrough, b'Q', q).unwrap()),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, framing, seam);
criterion_main!(benches);
