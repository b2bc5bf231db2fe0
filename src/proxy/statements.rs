//! The prepared statements of one session as the server holds them, with the
//! rules epoch each was rewritten under, so a statement prepared before a
//! phase change can be re-prepared before its next use (DESIGN invariant 4).
//!
//! Re-preparing injects `Close` + `Parse` ahead of the client's `Bind` or
//! `Describe`; the server's `CloseComplete` and `ParseComplete` for them are
//! swallowed on the way back. It happens only when the new rules rewrite
//! the statement to other text than the server holds (a fingerprint of the
//! SQL sent is kept per name): otherwise the statement is simply current,
//! and Postgres revalidates its own plan against any change of the table
//! itself, answering as it does direct.
//!
//! When the new text changes the statement's result columns (a `*` that
//! spells out a migration's columns, or no longer does), the use fails once
//! with Postgres' own `0A000 cached plan must not change result type`, so
//! the driver prepares it again — unless the client cannot have seen its
//! columns yet (parsed in the request still being sent, not described in
//! it), when it is re-prepared silently.
//!
//! A client `Parse` is confirmed by its `ParseComplete`; one that failed
//! (its pipeline ended in an error first) leaves no entry behind, so
//! pgshift never resurrects a statement the server refused. A re-prepared
//! statement counts as current only once the injected Parse's
//! `ParseComplete` comes back: one that fails (a column the new rules no
//! longer serve, a refusal) leaves the entry stale — the statement name
//! stays usable as Postgres keeps it, and every later use, even one the
//! client sent before the failure came back, is re-prepared again and
//! answered with that same error.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::metrics::Kind;

use bytes::Bytes;

use super::framing::HEADER_LEN;
use super::wire::{encode_frame, split_cstr};

/// A statement the client prepared.
#[derive(Debug, Clone, Default)]
struct Entry {
    /// The SQL as the client sent it (its buffer reused when the name is
    /// parsed again, as the unnamed statement is for most queries).
    sql: Vec<u8>,
    /// The Parse message's parameter type list (count and OIDs), raw.
    param_types: Vec<u8>,
    /// Rules epoch it was prepared under.
    epoch: u64,
    /// Its result shape's key under those rules (see
    /// `StatementRewriter::result_key`).
    result: u64,
    /// The epoch of a re-prepare in flight: current once its Parse completes.
    confirming: Option<u64>,
    /// A fingerprint of the SQL the server holds under this name
    /// ([`NOTHING_SENT`] while that is not known, or nothing;
    /// [`AS_WRITTEN`]: `sql` itself, fingerprinted when asked).
    sent: u64,
    /// The fingerprint of a re-Parse in flight.
    sending: u64,
    /// The request its Parse belonged to.
    parsed_in: u64,
    /// A Describe in that request may have shown the client its columns.
    shown: bool,
    /// The migration that rewrote (or refused) it, with which: what its
    /// executions count as in the latency metrics (`None`: passed).
    class: Option<(Kind, Arc<str>)>,
    /// The migrations whose old shape it names: each execution is
    /// old-shape use.
    old_shape: Vec<Arc<str>>,
}

/// What re-preparing a stale statement needs.
pub struct Stale {
    pub sql: Bytes,
    pub param_types: Bytes,
    /// Its result key when the client last saw its columns.
    pub result: u64,
    /// Parsed in the request still being sent and not described in it: the
    /// client has seen no columns of it, so any result shape is the one it
    /// gets.
    pub unseen: bool,
    /// The fingerprint of the SQL the server holds for it, when known and
    /// no re-prepare is in flight: rules that rewrite it to the same text
    /// need no re-prepare (Postgres revalidates its own plan).
    pub sent: Option<u64>,
}

/// The fingerprint of no SQL: the server holds nothing known.
pub const NOTHING_SENT: u64 = 0;

/// The server holds the statement's SQL as the client wrote it: its
/// fingerprint is taken only when a re-prepare asks (fingerprints are odd).
pub const AS_WRITTEN: u64 = 2;

/// A fingerprint of the SQL text of a Parse sent upstream (never
/// [`NOTHING_SENT`]).
pub fn fingerprint(sql: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sql.hash(&mut h);
    h.finish() | 1
}

/// A result key no rules give: the shape a statement was given is not
/// known (the rules changed while it was rewritten).
pub const UNKNOWN_RESULT: u64 = u64::MAX;

/// An injected response to drop: the request number, `'1'` or `'3'`, and
/// for a `'1'` the statement re-prepared.
type Swallow = (u64, u8, Option<Vec<u8>>);

/// What is known of a client's Parse once it was rewritten.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Rules epoch it was rewritten under.
    pub epoch: u64,
    /// Its result shape's key under those rules.
    pub result: u64,
    /// The fingerprint of the SQL sent upstream for it (or [`AS_WRITTEN`]).
    pub sent: u64,
    /// The migration that rewrote it (see [`Entry::class`]).
    pub class: Option<(Kind, Arc<str>)>,
    /// The migrations whose old shape it names.
    pub old_shape: Vec<Arc<str>>,
}

/// The entries by name: the unnamed statement, which most drivers parse
/// again for every query, in a slot of its own (no hashing, its buffers
/// reused); named ones in a map.
#[derive(Debug, Default)]
struct Entries {
    unnamed: Option<Entry>,
    named: HashMap<Vec<u8>, Entry>,
}

impl Entries {
    fn get(&self, name: &[u8]) -> Option<&Entry> {
        match name.is_empty() {
            true => self.unnamed.as_ref(),
            false => self.named.get(name),
        }
    }

    fn get_mut(&mut self, name: &[u8]) -> Option<&mut Entry> {
        match name.is_empty() {
            true => self.unnamed.as_mut(),
            false => self.named.get_mut(name),
        }
    }

    /// `name`'s entry for a new Parse: the old one's buffers, or a new one.
    fn renewed(&mut self, name: &[u8]) -> &mut Entry {
        match name.is_empty() {
            true => self.unnamed.get_or_insert_with(Entry::default),
            false => self.named.entry(name.to_vec()).or_default(),
        }
    }

    fn remove(&mut self, name: &[u8]) -> Option<Entry> {
        match name.is_empty() {
            true => self.unnamed.take(),
            false => self.named.remove(name),
        }
    }

    fn clear(&mut self) {
        self.unnamed = None;
        self.named.clear();
    }

    fn values(&self) -> impl Iterator<Item = &Entry> {
        self.unnamed.iter().chain(self.named.values())
    }
}

/// The registry of one session.
#[derive(Debug, Default)]
pub struct Statements {
    entries: Entries,
    /// A statement was rewritten by a migration (see [`Statements::set_class`]).
    classified: bool,
    /// Oldest epoch among the entries (`u64::MAX` when there are none).
    oldest_epoch: Option<u64>,
    /// Client Parses waiting for their ParseComplete: (request, name).
    unconfirmed: VecDeque<(u64, Vec<u8>)>,
    swallow: VecDeque<Swallow>,
    /// The request the latest Parses belong to, and their names.
    fresh: (u64, Vec<Vec<u8>>),
}

/// The fields of a whole Parse frame.
pub struct ParseFields<'f> {
    pub name: &'f [u8],
    pub sql: &'f [u8],
    pub param_types: &'f [u8],
}

/// Reads a whole Parse frame.
pub fn parse_fields(frame: &[u8]) -> Option<ParseFields<'_>> {
    let (name, rest) = split_cstr(frame.get(HEADER_LEN..)?)?;
    let (sql, param_types) = split_cstr(rest)?;
    Some(ParseFields {
        name,
        sql,
        param_types,
    })
}

/// The statement a whole Bind (`B`) or Describe-statement (`D` `S`) frame
/// refers to; `None` for a portal Describe.
pub fn statement_used(tag: u8, frame: &[u8]) -> Option<&[u8]> {
    let body = frame.get(HEADER_LEN..)?;
    match tag {
        b'B' => split_cstr(split_cstr(body)?.1).map(|(name, _)| name),
        b'D' if body.first() == Some(&b'S') => split_cstr(&body[1..]).map(|(name, _)| name),
        _ => None,
    }
}

/// The statement a whole Close frame closes; `None` for a portal.
pub fn statement_closed(frame: &[u8]) -> Option<&[u8]> {
    let body = frame.get(HEADER_LEN..)?;
    if body.first() != Some(&b'S') {
        return None;
    }
    split_cstr(&body[1..]).map(|(name, _)| name)
}

impl Statements {
    /// True when some statement was prepared under an epoch older than
    /// `epoch`, so Binds and Describes must be looked at.
    pub fn any_stale(&self, epoch: u64) -> bool {
        self.oldest_epoch.is_some_and(|oldest| oldest < epoch)
    }

    /// The oldest epoch a statement was prepared under (`None`: none
    /// prepared).
    pub fn oldest_epoch(&self) -> Option<u64> {
        self.oldest_epoch
    }

    /// True while injected responses are still to be swallowed.
    pub fn swallowing(&self) -> bool {
        !self.swallow.is_empty()
    }

    /// The client sent Parse (part of request `request`), rewritten as
    /// `parsed` says.
    pub fn parsed(&mut self, request: u64, fields: &ParseFields<'_>, parsed: Parsed) {
        let epoch = parsed.epoch;
        self.classified |= parsed.class.is_some() || !parsed.old_shape.is_empty();
        let entry = self.entries.renewed(fields.name);
        entry.sql.clear();
        entry.sql.extend_from_slice(fields.sql);
        entry.param_types.clear();
        entry.param_types.extend_from_slice(fields.param_types);
        entry.epoch = epoch;
        entry.result = parsed.result;
        entry.confirming = None;
        entry.sent = parsed.sent;
        entry.sending = NOTHING_SENT;
        entry.parsed_in = request;
        entry.shown = false;
        entry.class = parsed.class;
        entry.old_shape = parsed.old_shape;
        self.oldest_epoch = Some(self.oldest_epoch.map_or(epoch, |o| o.min(epoch)));
        self.unconfirmed.push_back((request, fields.name.to_vec()));
        if self.fresh.0 != request {
            // (The list's buffer is kept: a Parse per request is usual.)
            self.fresh.0 = request;
            self.fresh.1.clear();
        }
        self.fresh.1.push(fields.name.to_vec());
    }

    /// The request the statements parsed last belong to (0: none yet).
    pub fn fresh_request(&self) -> u64 {
        self.fresh.0
    }

    /// A Describe (of a statement or a portal) is part of request
    /// `request`: whatever was parsed in it may have been shown.
    pub fn described(&mut self, request: u64) {
        if self.fresh.0 != request {
            return;
        }
        for name in &self.fresh.1 {
            if let Some(entry) = self.entries.get_mut(name) {
                entry.shown = true;
            }
        }
        self.fresh.1.clear();
    }

    /// The client closed (or deallocated) a statement.
    pub fn closed(&mut self, name: &[u8]) {
        if self.entries.remove(name).is_some() {
            self.recompute_oldest();
        }
    }

    /// `DEALLOCATE ALL` / `DISCARD ALL`.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.oldest_epoch = None;
    }

    /// If `name` is stale under `epoch`, returns what re-preparing it for a
    /// use in request `request` needs (it becomes current when the
    /// re-Parse completes, see [`Statements::on_complete`]).
    pub fn take_stale(&mut self, name: &[u8], epoch: u64, request: u64) -> Option<Stale> {
        if !self.any_stale(epoch) {
            return None;
        }
        let entry = self.entries.get_mut(name)?;
        if entry.epoch >= epoch {
            return None;
        }
        let in_flight = entry.confirming.replace(epoch).is_some();
        let sent = match entry.sent {
            _ if in_flight => None,
            NOTHING_SENT => None,
            AS_WRITTEN => Some(fingerprint(&entry.sql)),
            sent => Some(sent),
        };
        Some(Stale {
            sql: Bytes::copy_from_slice(&entry.sql),
            param_types: Bytes::copy_from_slice(&entry.param_types),
            result: entry.result,
            unseen: entry.parsed_in == request && !entry.shown,
            sent,
        })
    }

    /// `name` is current under `epoch` as the server holds it: the rules
    /// rewrite it to the text it was prepared with.
    pub fn unchanged(&mut self, name: &[u8], epoch: u64) {
        if let Some(entry) = self.entries.get_mut(name) {
            entry.confirming = None;
            entry.epoch = entry.epoch.max(epoch);
            self.recompute_oldest();
        }
    }

    /// Statement `name` names the old shape of `migrations` (its Binds are
    /// then looked at).
    pub fn set_old_shape(&mut self, name: &[u8], migrations: Vec<Arc<str>>) {
        if let Some(entry) = self.entries.get_mut(name) {
            self.classified |= !migrations.is_empty();
            entry.old_shape = migrations;
        }
    }

    /// The migrations whose old shape statement `name` names, if any.
    pub fn old_shape(&self, name: &[u8]) -> Option<Vec<Arc<str>>> {
        let entry = self.entries.get(name)?;
        (!entry.old_shape.is_empty()).then(|| entry.old_shape.clone())
    }

    /// The SQL statement `name` was prepared with, as the client sent it.
    pub fn sql(&self, name: &[u8]) -> Option<Bytes> {
        self.entries
            .get(name)
            .map(|e| Bytes::copy_from_slice(&e.sql))
    }

    /// Whether a statement of this session was ever rewritten by a
    /// migration (its Binds are then looked at).
    pub fn any_classified(&self) -> bool {
        self.classified
    }

    /// Who rewrote statement `name`, if anyone.
    pub fn class(&self, name: &[u8]) -> Option<(Kind, Arc<str>)> {
        self.entries.get(name).and_then(|e| e.class.clone())
    }

    /// `name`'s result shape is `result` from now on.
    pub fn set_result(&mut self, name: &[u8], result: u64) {
        if let Some(entry) = self.entries.get_mut(name) {
            entry.result = result;
        }
    }

    /// Expects the server's answers to an injected Close of statement
    /// `name` (+ a Parse of it, of SQL fingerprinted `parse`).
    pub fn expect_injected(&mut self, request: u64, name: &[u8], parse: Option<u64>) {
        self.swallow.push_back((request, b'3', None));
        if let Some(entry) = self.entries.get_mut(name) {
            entry.sent = NOTHING_SENT;
            entry.sending = parse.unwrap_or(NOTHING_SENT);
        }
        if parse.is_some() {
            self.swallow.push_back((request, b'1', Some(name.to_vec())));
        }
    }

    /// A CloseComplete or ParseComplete arrived for request `request`:
    /// `true` when it answers an injected message and must be dropped.
    pub fn on_complete(&mut self, request: u64, tag: u8) -> bool {
        if self
            .swallow
            .front()
            .is_some_and(|(r, t, _)| (*r, *t) == (request, tag))
        {
            if let Some((_, _, Some(name))) = self.swallow.pop_front() {
                self.confirm(&name);
            }
            return true;
        }
        if tag == b'1' {
            self.unconfirmed.pop_front();
        }
        false
    }

    /// ReadyForQuery ended request `request`: injected answers that never
    /// came (an error skipped them) are forgotten — a re-Parse that never
    /// completed leaves its statement stale — and client Parses that were
    /// never confirmed failed, so their names are gone on the server.
    pub fn on_ready(&mut self, request: u64) {
        while self.swallow.front().is_some_and(|(r, _, _)| *r <= request) {
            self.swallow.pop_front();
        }
        let mut removed = false;
        while self.unconfirmed.front().is_some_and(|(r, _)| *r <= request) {
            if let Some((_, name)) = self.unconfirmed.pop_front() {
                removed |= self.entries.remove(&name).is_some();
            }
        }
        if removed {
            self.recompute_oldest();
        }
    }

    /// The re-Parse of `name` completed: it is current.
    fn confirm(&mut self, name: &[u8]) {
        if let Some(entry) = self.entries.get_mut(name) {
            if let Some(epoch) = entry.confirming.take() {
                entry.epoch = entry.epoch.max(epoch);
                entry.sent = std::mem::replace(&mut entry.sending, NOTHING_SENT);
                self.recompute_oldest();
            }
        }
    }

    fn recompute_oldest(&mut self) {
        self.oldest_epoch = self.entries.values().map(|e| e.epoch).min();
    }
}

/// `Close` of statement `name`.
pub fn close_frame(name: &[u8]) -> Bytes {
    encode_frame(b'C', &[b"S", name, b"\0"])
}

/// `Parse` of statement `name` with `sql` and the raw parameter type list.
pub fn parse_frame(name: &[u8], sql: &[u8], param_types: &[u8]) -> Bytes {
    encode_frame(b'P', &[name, b"\0", sql, b"\0", param_types])
}

/// What `DEALLOCATE` / `DISCARD` in a simple query does to the registry.
pub enum Deallocation<'s> {
    All,
    One(std::borrow::Cow<'s, [u8]>),
}

/// Recognizes `DEALLOCATE [PREPARE] name|ALL` and `DISCARD ALL`.
pub fn deallocation(sql: &[u8]) -> Option<Deallocation<'_>> {
    // (A byte check first: other statements are not decoded.)
    let first = sql.iter().find(|b| !b.is_ascii_whitespace())?;
    if !first.eq_ignore_ascii_case(&b'd') {
        return None;
    }
    let text = std::str::from_utf8(sql)
        .ok()?
        .trim()
        .trim_end_matches(';')
        .trim();
    let mut words = text.split_whitespace();
    let first = words.next()?;
    if first.eq_ignore_ascii_case("discard") {
        return words
            .next()
            .filter(|w| w.eq_ignore_ascii_case("all"))
            .map(|_| Deallocation::All);
    }
    if !first.eq_ignore_ascii_case("deallocate") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("prepare") {
        name = words.next()?;
    }
    if name.eq_ignore_ascii_case("all") {
        return Some(Deallocation::All);
    }
    Some(Deallocation::One(
        if let Some(quoted) = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
            std::borrow::Cow::Owned(quoted.replace("\"\"", "\"").into_bytes())
        } else {
            std::borrow::Cow::Owned(name.to_lowercase().into_bytes())
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(name: &'a [u8], sql: &'a [u8]) -> ParseFields<'a> {
        ParseFields {
            name,
            sql,
            param_types: &[0, 0],
        }
    }

    /// A Parse rewritten under `epoch`, its result key and what was sent.
    pub(super) fn at(epoch: u64, result: u64, sent: u64) -> Parsed {
        Parsed {
            epoch,
            result,
            sent,
            ..Parsed::default()
        }
    }

    #[test]
    fn a_statement_sent_as_written_is_fingerprinted_when_asked() {
        let mut s = Statements::default();
        // The unnamed statement, parsed again with other text: the entry
        // holds the latest, whatever the buffer held before.
        s.parsed(1, &fields(b"", b"select 1, 2, 3"), at(1, 0, AS_WRITTEN));
        s.parsed(2, &fields(b"", b"select 4"), at(1, 0, AS_WRITTEN));
        let stale = s.take_stale(b"", 2, 3).expect("stale under epoch 2");
        assert_eq!(&stale.sql[..], b"select 4");
        assert_eq!(stale.sent, Some(fingerprint(b"select 4")));
        assert_eq!(s.sql(b""), Some(Bytes::from_static(b"select 4")));
        s.closed(b"");
        assert!(s.take_stale(b"", 3, 4).is_none());
    }

    #[test]
    fn stale_statements_are_current_once_re_prepared() {
        let mut s = Statements::default();
        s.parsed(2, &fields(b"s1", b"select 1"), at(1, 0, 5));
        assert!(!s.any_stale(1));
        assert!(s.any_stale(2));
        let stale = s.take_stale(b"s1", 2, 3).unwrap();
        assert_eq!(
            (&stale.sql[..], &stale.param_types[..]),
            (&b"select 1"[..], &[0u8, 0][..])
        );
        s.expect_injected(3, b"s1", Some(9));
        assert!(
            s.take_stale(b"s1", 2, 99).is_some(),
            "a use before the re-Parse completed is re-prepared too"
        );
        assert!(s.on_complete(3, b'3'));
        assert!(s.on_complete(3, b'1'));
        assert!(s.take_stale(b"s1", 2, 99).is_none());
        assert!(!s.any_stale(2));
    }

    #[test]
    fn injected_answers_are_swallowed_in_order() {
        let mut s = Statements::default();
        s.parsed(5, &fields(b"p", b"select 2"), at(1, 0, 5));
        s.expect_injected(5, b"p", Some(9));
        assert!(
            !s.on_complete(5, b'1'),
            "the client's own ParseComplete passes"
        );
        assert!(s.on_complete(5, b'3'));
        assert!(s.on_complete(5, b'1'));
        assert!(!s.on_complete(5, b'3'));
        s.on_ready(5);
        assert!(
            s.take_stale(b"p", 9, 99).is_some(),
            "a confirmed Parse stays"
        );
        assert!(
            s.take_stale(b"p", 9, 99).is_some(),
            "stale until re-prepared"
        );
    }

    #[test]
    fn the_sql_the_server_holds_is_known_only_when_no_reprepare_is_in_flight() {
        let mut s = Statements::default();
        s.parsed(1, &fields(b"q", b"select 1"), at(1, 0, 11));
        assert!(!s.on_complete(1, b'1'), "the client's own ParseComplete");
        assert_eq!(s.take_stale(b"q", 2, 5).unwrap().sent, Some(11));
        s.unchanged(b"q", 2);
        assert!(!s.any_stale(2), "current without a re-prepare");
        assert_eq!(s.take_stale(b"q", 3, 6).unwrap().sent, Some(11));
        s.expect_injected(6, b"q", Some(22));
        assert_eq!(s.take_stale(b"q", 3, 6).unwrap().sent, None, "in flight");
        assert!(s.on_complete(6, b'3'));
        assert!(s.on_complete(6, b'1'));
        assert_eq!(s.take_stale(b"q", 4, 7).unwrap().sent, Some(22));
        s.expect_injected(7, b"q", None); // refused: closed, nothing parsed
        s.on_ready(7);
        assert_eq!(s.take_stale(b"q", 4, 8).unwrap().sent, None, "nothing held");
    }

    #[test]
    fn a_statement_is_unseen_until_described_or_its_request_ends() {
        let mut s = Statements::default();
        s.parsed(4, &fields(b"u", b"select * from t"), at(1, 7, 5));
        let stale = s.take_stale(b"u", 2, 4).unwrap();
        assert!(stale.unseen, "parsed in this request, never described");
        assert!(!s.take_stale(b"u", 2, 5).unwrap().unseen, "a later request");
        s.parsed(6, &fields(b"d", b"select * from t"), at(1, 7, 5));
        s.described(6);
        assert!(!s.take_stale(b"d", 2, 6).unwrap().unseen, "described");
    }

    #[test]
    fn a_failed_parse_leaves_no_entry() {
        let mut s = Statements::default();
        s.parsed(3, &fields(b"bad", b"selec 1"), at(1, 0, 5));
        s.on_ready(3); // an error skipped everything up to Sync
        assert!(!s.swallowing());
        assert!(s.take_stale(b"bad", 9, 99).is_none());
    }

    #[test]
    fn a_failed_re_prepare_leaves_the_statement_stale() {
        let mut s = Statements::default();
        s.parsed(1, &fields(b"s", b"select a from t"), at(1, 0, 5));
        assert!(!s.on_complete(1, b'1'));
        s.on_ready(1);
        assert!(s.take_stale(b"s", 2, 99).is_some());
        s.expect_injected(2, b"s", Some(9));
        assert!(s.on_complete(2, b'3'), "the Close went through");
        s.on_ready(2); // the re-Parse failed: no ParseComplete came
        assert!(s.any_stale(2), "re-prepared again at its next use");
        assert!(s.take_stale(b"s", 2, 99).is_some());
        s.expect_injected(3, b"s", Some(9));
        assert!(s.on_complete(3, b'3'));
        assert!(s.on_complete(3, b'1'));
        s.on_ready(3);
        assert!(!s.any_stale(2), "a re-Parse that worked makes it current");
    }

    #[test]
    fn frames_are_read_and_written() {
        let parse = parse_frame(b"s1", b"select $1", &[0, 1, 0, 0, 0, 23]);
        let f = parse_fields(&parse).unwrap();
        assert_eq!(
            (f.name, f.sql, f.param_types),
            (&b"s1"[..], &b"select $1"[..], &[0u8, 1, 0, 0, 0, 23][..])
        );
        let bind = encode_frame(b'B', &[b"portal\0s1\0", &[0, 0, 0, 0, 0, 0]]);
        assert_eq!(statement_used(b'B', &bind), Some(&b"s1"[..]));
        let describe = encode_frame(b'D', &[b"Ss1\0"]);
        assert_eq!(statement_used(b'D', &describe), Some(&b"s1"[..]));
        assert_eq!(statement_used(b'D', &encode_frame(b'D', &[b"Pp\0"])), None);
        assert_eq!(statement_closed(&close_frame(b"s1")), Some(&b"s1"[..]));
    }

    #[test]
    fn deallocations_are_recognized() {
        assert!(matches!(
            deallocation(b"DISCARD ALL"),
            Some(Deallocation::All)
        ));
        assert!(matches!(
            deallocation(b"deallocate all;"),
            Some(Deallocation::All)
        ));
        match deallocation(b"DEALLOCATE PREPARE \"S1\"") {
            Some(Deallocation::One(name)) => assert_eq!(&name[..], b"S1"),
            _ => panic!(),
        }
        match deallocation(b"deallocate Foo") {
            Some(Deallocation::One(name)) => assert_eq!(&name[..], b"foo"),
            _ => panic!(),
        }
        assert!(deallocation(b"select 1").is_none());
    }
}

#[cfg(test)]
mod model_tests {
    use super::*;
    use proptest::prelude::*;

    use super::tests::at;

    /// Statement `n`: 0 is the unnamed statement.
    fn name_of(n: u8) -> Vec<u8> {
        match n {
            0 => Vec::new(),
            n => vec![b'a' + n],
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Parse(u8, u64),
        Close(u8),
        Clear,
        Unchanged(u8, u64),
        TakeStale(u8, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let name = 0u8..4;
        let epoch = 1u64..6;
        prop_oneof![
            (name.clone(), epoch.clone()).prop_map(|(n, e)| Op::Parse(n, e)),
            name.clone().prop_map(Op::Close),
            Just(Op::Clear),
            (name.clone(), epoch.clone()).prop_map(|(n, e)| Op::Unchanged(n, e)),
            (name, epoch).prop_map(|(n, e)| Op::TakeStale(n, e)),
        ]
    }

    proptest! {
        /// The book against a model (name → the epoch a statement is
        /// current under): a statement is handed out for re-preparing
        /// exactly when the model says it is stale, and `any_stale` never
        /// says no while one is (a yes too many only costs buffering).
        #[test]
        fn the_book_follows_its_model(ops in prop::collection::vec(op(), 0..60)) {
            let mut book = Statements::default();
            let mut model: HashMap<Vec<u8>, u64> = HashMap::new();
            for (request, op) in ops.into_iter().enumerate() {
                let request = request as u64 + 1;
                match op {
                    Op::Parse(n, e) => {
                        let name = name_of(n);
                        let fields = ParseFields { name: &name, sql: b"select 1", param_types: b"\0\0" };
                        book.parsed(request, &fields, at(e, 0, NOTHING_SENT));
                        model.insert(name, e);
                    }
                    Op::Close(n) => {
                        book.closed(&name_of(n)[..]);
                        model.remove(&name_of(n));
                    }
                    Op::Clear => {
                        book.clear();
                        model.clear();
                    }
                    Op::Unchanged(n, e) => {
                        book.unchanged(&name_of(n)[..], e);
                        if let Some(current) = model.get_mut(&name_of(n)) {
                            *current = (*current).max(e);
                        }
                    }
                    Op::TakeStale(n, e) => {
                        let name = name_of(n);
                        let stale = book.take_stale(&name, e, request).is_some();
                        let expected = model.get(&name).is_some_and(|&current| current < e);
                        prop_assert_eq!(stale, expected, "take_stale({:?}, {})", name, e);
                    }
                }
                for e in 1..7 {
                    if model.values().any(|&current| current < e) {
                        prop_assert!(book.any_stale(e), "a stale statement under {} went unseen", e);
                    }
                }
            }
        }
    }
}
