//! Property-based fuzzing on the stable toolchain (proptest): everything
//! that decodes what a client or a server sends, fed inputs made to reach
//! it — the startup packet parser, the frame splitter with the session's
//! own visitors in both directions (Query, Parse, Bind, Describe, Close,
//! ParseComplete, ReadyForQuery… cut at random places), and the rewriter
//! with SQL built from the words it acts on. Nothing may panic; a rewrite
//! of a statement sqlparser reads must itself be readable.
//!
//! And two invariants: the frame splitter hands on exactly the bytes it was
//! given, frame by frame in order, however they are cut and whichever
//! frames the visitor wants whole; and the literal-masking plan cache's
//! template, made from a statement's own text, fills back to that text
//! with any statement's literals of the same shape.
//!
//! `cargo test --test fuzz` runs a short pass (256 cases a property);
//! `scripts/fuzz.sh [CASES]` a long one. A failing case is shrunk and kept
//! under `tests/proptest-regressions/` (commit it: the corpus of what once
//! failed), replayed first on every run.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use pgshift::proxy::framing::{FrameSplitter, FrameVisitor, Handling, Verdict};
use pgshift::proxy::outqueue::OutQueue;
use pgshift::proxy::session::{BackendVisitor, FrontendVisitor, SessionState};
use pgshift::proxy::wire;
use pgshift::rewrite::engine::MigrationRewriter;
use pgshift::rewrite::literals::{normalize, with_sentinels, Template};
use pgshift::rewrite::migration::{MigrationSpec, Phase};
use pgshift::rewrite::rules::{ActiveMigration, RulesCell};
use pgshift::rewrite::{Rewrite, SessionContext, StatementKind, StatementRewriter};
use proptest::prelude::*;

/// The words statements about a migrating table are made of.
const WORDS: &[&str] = &[
    "select",
    "insert into",
    "update",
    "delete from",
    "with",
    "recursive",
    "as",
    "from",
    "where",
    "set",
    "values",
    "returning",
    "join",
    "left join",
    "on",
    "using",
    "natural",
    "union",
    "union all",
    "group by",
    "order by",
    "having",
    "limit",
    "on conflict",
    "do update",
    "do nothing",
    "excluded",
    "copy",
    "to stdout",
    "table",
    "prepare",
    "execute",
    "explain",
    "pgbench_accounts",
    "public.pgbench_accounts",
    "\"pgbench_accounts\"",
    "a",
    "t",
    "t.",
    "abalance",
    "balance",
    "\"abalance\"",
    "aid",
    "bid",
    "filler",
    "*",
    "t.*",
    "count(*)",
    ",",
    "(",
    ")",
    "=",
    "+",
    "-",
    "||",
    "::",
    "numeric(12, 2)",
    "integer",
    "$1",
    "$2",
    "1",
    "2.5",
    "'x'",
    "e'\\''",
    "$$x$$",
    "null",
    "default",
    "now()",
    "random()",
    "case when",
    "then",
    "else",
    "end",
    "and",
    "or",
    "not",
    "in",
    "exists",
    "is null",
    ";",
    "--c\n",
    "/* c */",
    "\"",
    "'",
    "[",
    "]",
    "distinct",
    "lateral",
    "over (",
    "partition by",
];

/// Word soup (reaches the parser's error paths) and statements shaped as
/// applications write them (reach planning and splicing).
fn sql() -> impl Strategy<Value = String> {
    let soup = prop::collection::vec(prop::sample::select(WORDS), 0..40).prop_map(|w| w.join(" "));
    prop_oneof![soup, shaped()]
}

const COLUMNS: &[&str] = &[
    "abalance",
    "balance",
    "aid",
    "bid",
    "filler",
    "t.abalance",
    "t.balance",
    "\"abalance\"",
    "*",
    "t.*",
    "abalance + 1",
    "abalance::numeric(12, 2)",
    "coalesce(balance, 0)",
    "count(*)",
    "sum(abalance)",
    "(select max(abalance) from pgbench_accounts)",
];
const VALUES: &[&str] = &[
    "1",
    "$1",
    "'7'",
    "$2::integer",
    "null",
    "default",
    "abalance",
    "balance + $1",
    "now()",
];
const CONDITIONS: &[&str] = &[
    "aid = $1",
    "abalance > 0",
    "balance = 2",
    "t.aid in (1, 2)",
    "exists (select 1 from pgbench_accounts x where x.abalance = t.abalance)",
    "abalance between 1 and $1",
    "aid = any($1)",
    "true",
];

fn shaped() -> impl Strategy<Value = String> {
    let cols =
        prop::collection::vec(prop::sample::select(COLUMNS), 1..4).prop_map(|c| c.join(", "));
    let vals = prop::collection::vec(prop::sample::select(VALUES), 1..4).prop_map(|v| v.join(", "));
    let cond = prop::sample::select(CONDITIONS);
    let set_col = prop::sample::select(&["abalance", "balance", "filler", "bid"][..]);
    let template = 0..8usize;
    (template, cols, vals, cond, set_col, prop::sample::select(&["abalance", "balance"][..])).prop_map(
        |(t, cols, vals, cond, set_col, col)| match t {
            0 => format!("select {cols} from pgbench_accounts t where {cond} order by {col}"),
            1 => format!("update pgbench_accounts t set {set_col} = {vals} where {cond} returning {cols}"),
            2 => format!("insert into pgbench_accounts (aid, {col}) values ($1, {vals}) on conflict (aid) do update set {col} = excluded.{col} returning *"),
            3 => format!("with x as (select {cols} from pgbench_accounts t where {cond}) select * from x"),
            4 => format!("delete from pgbench_accounts t where {cond} returning {cols}"),
            5 => format!("select {cols} from pgbench_accounts t join pgbench_branches b using (bid) where {cond}"),
            6 => format!("insert into pgbench_accounts select {cols} from pgbench_accounts t where {cond}"),
            _ => format!("select {col} from pgbench_accounts union select {col} from pgbench_accounts t where {cond}"),
        },
    )
}

fn rewriter(phase: Phase, type_change: bool) -> MigrationRewriter {
    let spec = if type_change {
        MigrationSpec::new(
            "m",
            "pgbench_accounts",
            "abalance",
            "balance",
            Some("numeric(12,2)"),
            Some("abalance::numeric / 100"),
            Some("(balance * 100)::integer"),
        )
    } else {
        MigrationSpec::new(
            "m",
            "pgbench_accounts",
            "abalance",
            "balance",
            None,
            None,
            None,
        )
    }
    .unwrap();
    MigrationRewriter::new(Arc::new(RulesCell::new(&[ActiveMigration { spec, phase }])))
}

fn phase() -> impl Strategy<Value = Phase> {
    prop::sample::select(Phase::ALL.to_vec())
}

/// A frame: a tag the session acts on (or any), and a body that is
/// either arbitrary bytes or shaped as that message is.
fn frame(tags: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    let tag = prop_oneof![prop::sample::select(tags), any::<u8>()];
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (sql(), prop::collection::vec(any::<u8>(), 0..8)).prop_map(|(sql, tail)| {
            let mut b = b"s1\0".to_vec();
            b.extend_from_slice(sql.as_bytes());
            b.push(0);
            b.extend(tail);
            b
        }),
        sql().prop_map(|sql| [sql.as_bytes(), b"\0"].concat()),
        Just(b"Ss1\0".to_vec()),
        Just(b"\0s1\0\0\0\0\0\0\0".to_vec()),
    ];
    (tag, body).prop_map(|(tag, body)| {
        let mut f = vec![tag];
        f.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        f.extend(body);
        f
    })
}

/// Feeds `bytes` through a splitter in the given chunk sizes.
fn feed(visitor: &mut impl FrameVisitor, bytes: &[u8], cuts: &[usize]) {
    let mut splitter = FrameSplitter::new(1 << 20);
    let mut buf = BytesMut::new();
    let mut out = OutQueue::default();
    let mut at: usize = 0;
    for &cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
        let end = at.saturating_add(cut.max(1)).min(bytes.len());
        buf.extend_from_slice(&bytes[at..end]);
        at = end;
        if splitter.split(&mut buf, visitor, &mut out).is_err() {
            return;
        }
        if at == bytes.len() {
            return;
        }
    }
}

const FRONTEND: &[u8] = b"QPBDCSEHFXdcfp";
const BACKEND: &[u8] = b"13ZECTDnstI2";

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn startup_packets_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Some(head) = bytes.get(..4) {
            let _ = wire::startup_packet_len([head[0], head[1], head[2], head[3]]);
        }
        let _ = wire::parse_startup_packet(bytes::Bytes::from(bytes));
    }

    #[test]
    fn sessions_survive_any_frames_cut_anywhere(
        client in prop::collection::vec(frame(FRONTEND), 0..12),
        server in prop::collection::vec(frame(BACKEND), 0..12),
        cuts in prop::collection::vec(1usize..40, 0..20),
        phase in phase(),
        type_change in any::<bool>(),
    ) {
        let r = rewriter(phase, type_change);
        let state = SessionState::new(true, SessionContext::new(None, Arc::from("u"), None, None));
        let client: Vec<u8> = client.concat();
        let server: Vec<u8> = server.concat();
        // Interleaved as a session sees them: client, then server answers.
        let mut front = FrontendVisitor::new(&state, &r);
        feed(&mut front, &client, &cuts);
        let mut back = BackendVisitor::new(&state, &r);
        feed(&mut back, &server, &cuts);
        let mut front = FrontendVisitor::new(&state, &r);
        feed(&mut front, &client, &cuts);
    }

    #[test]
    fn rewrites_of_any_statement_never_panic_and_stay_readable(
        sql in sql(),
        phase in phase(),
        type_change in any::<bool>(),
    ) {
        let r = rewriter(phase, type_change);
        let readable = |text: &str| {
            sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, text).is_ok()
        };
        for kind in [StatementKind::SimpleQuery, StatementKind::Parse] {
            if let Rewrite::Replaced(out) = r.rewrite(kind, sql.as_bytes()) {
                if readable(&sql) {
                    prop_assert!(readable(&out), "{sql:?} became unreadable {out:?}");
                }
            }
        }
    }

    #[test]
    fn the_splitter_hands_on_exactly_the_frames_it_was_given(
        frames in prop::collection::vec(
            (any::<u8>(), prop::collection::vec(any::<u8>(), 0..50)),
            0..16,
        ),
        whole in prop::collection::vec(any::<bool>(), 256),
        cuts in prop::collection::vec(1usize..30, 0..30),
    ) {
        let encoded: Vec<Vec<u8>> = frames
            .iter()
            .map(|(tag, body)| {
                let mut f = vec![*tag];
                f.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
                f.extend_from_slice(body);
                f
            })
            .collect();
        let input = encoded.concat();
        let mut recorder = Recorder { whole, seen: Vec::new() };
        let mut splitter = FrameSplitter::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut out = OutQueue::default();
        let mut forwarded = Vec::new();
        let mut at: usize = 0;
        for &cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let end = at.saturating_add(cut).min(input.len());
            buf.extend_from_slice(&input[at..end]);
            at = end;
            splitter.split(&mut buf, &mut recorder, &mut out).expect("valid frames");
            while out.has_remaining() {
                let n = out.chunk().len();
                forwarded.extend_from_slice(out.chunk());
                out.advance(n);
            }
            if at == input.len() {
                break;
            }
        }
        prop_assert_eq!(&forwarded, &input, "the bytes out are the bytes in");
        prop_assert!(buf.is_empty() && splitter.at_frame_boundary());
        let tags: Vec<u8> = encoded.iter().map(|f| f[0]).collect();
        prop_assert_eq!(recorder.seen.iter().map(|(t, _)| *t).collect::<Vec<_>>(), tags);
        for ((_, frame), expected) in recorder.seen.iter().zip(&encoded) {
            if let Some(frame) = frame {
                prop_assert_eq!(frame, expected, "a whole frame is the frame");
            }
        }
    }

    #[test]
    fn a_template_fills_back_to_the_statement_it_was_made_from(
        parts in prop::collection::vec(
            prop_oneof![
                Just("select a from t where id = ".to_string()),
                Just(" and b in (".to_string()),
                Just(", ".to_string()),
                Just(") or c = ".to_string()),
                (0u64..1_000_000_000).prop_map(|n| n.to_string()),
                "[a-z0-9 ]{0,8}".prop_map(|s| format!("'{s}'")),
                Just("'it''s'".to_string()),
                Just("1.5e3".to_string()),
            ],
            1..20,
        ),
        other in prop::collection::vec(0u64..1_000_000, 20),
    ) {
        let sql = parts.concat();
        let Some(n) = normalize(sql.as_bytes()) else { return Ok(()); };
        let Some(sentinels) = with_sentinels(&sql, &n.literals) else { return Ok(()); };
        // The identity plan: the statement's own text with sentinels.
        let template = Template::new(&sentinels, &n.literals);
        prop_assert_eq!(template.fill(&sql, &n.literals), Some(sql.clone()));
        // Another statement of the same shape (numbers swapped for others)
        // fills to itself too.
        let mut k = 0;
        let swapped: String = n
            .literals
            .iter()
            .fold((String::new(), 0usize), |(mut out, at), &(start, end, kind)| {
                out.push_str(&sql[at..start]);
                match kind {
                    pgshift::rewrite::literals::Kind::Number => {
                        out.push_str(&other[k % other.len()].to_string());
                        k += 1;
                    }
                    pgshift::rewrite::literals::Kind::String => out.push_str(&sql[start..end]),
                }
                (out, end)
            })
            .0
            + &sql[n.literals.last().map_or(0, |l| l.1)..];
        if let Some(m) = normalize(swapped.as_bytes()) {
            if m.key == n.key {
                prop_assert_eq!(template.fill(&swapped, &m.literals), Some(swapped.clone()));
            }
        }
    }
}

/// A visitor that wants the tags `whole` says whole, keeps everything, and
/// records what it was shown.
struct Recorder {
    whole: Vec<bool>,
    seen: Vec<(u8, Option<Vec<u8>>)>,
}

impl FrameVisitor for Recorder {
    fn handling(&self, tag: u8) -> Handling {
        if self.whole[tag as usize] {
            Handling::Whole
        } else {
            Handling::Forward
        }
    }

    fn visit(&mut self, tag: u8, frame: Option<&[u8]>) -> Result<Verdict, String> {
        self.seen.push((tag, frame.map(<[u8]>::to_vec)));
        Ok(Verdict::Keep)
    }
}

/// The template property above reaches its assertions (a statement of
/// its shape is normalized and masked, not skipped).
#[test]
fn the_template_property_is_not_vacuous() {
    for sql in [
        "select a from t where id = 42 and b in ('x', 7) or c = 'it''s'",
        "select a from t where id = 1.5e3",
    ] {
        let n = normalize(sql.as_bytes()).expect("normalized");
        assert!(!n.literals.is_empty(), "{sql}");
        let masked = with_sentinels(sql, &n.literals).expect("masked");
        let template = Template::new(&masked, &n.literals);
        assert_eq!(template.fill(sql, &n.literals).as_deref(), Some(sql));
    }
}
