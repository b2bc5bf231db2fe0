//! Splitting a byte stream of regular (post-startup) protocol messages into
//! what the relay forwards.
//!
//! Only frame headers (a tag byte and a big-endian length) are read. A run of
//! frames — including a frame that has only partly arrived — is split off the
//! read buffer as one [`Bytes`] that shares the buffer's memory: no payload is
//! copied, and a 1 GB DataRow streams through without being held whole. The
//! caller's [`FrameVisitor`] sees every frame's tag in stream order; for the
//! tags it asks to see whole it gets the complete frame and may keep it in
//! the run (the usual case: nothing is split or copied) or replace it.

use bytes::{Buf, Bytes, BytesMut};

use super::outqueue::OutQueue;

/// Bytes in a frame header: tag + length word.
pub const HEADER_LEN: usize = 5;

/// How the visitor wants frames of one tag delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Forwarded as the bytes come; the visitor sees the tag only.
    Forward,
    /// Held back until the whole frame is in; the visitor sees all of it.
    Whole,
}

/// The visitor's answer for a whole frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the frame as it arrived.
    Keep,
    /// Forward these bytes instead of the frame.
    Replace(Bytes),
    /// Not yet: stop before this frame and leave it in the buffer; the
    /// caller splits again later and the visitor sees it anew (the rename
    /// barrier holds a statement this way).
    Hold,
}

/// The caller's view of the stream.
pub trait FrameVisitor {
    /// How frames with `tag` are delivered.
    fn handling(&self, tag: u8) -> Handling;
    /// Called once per frame, in stream order: with the whole frame (header
    /// included) for [`Handling::Whole`] tags, `None` otherwise. An `Err`
    /// stops the stream; its text says why.
    fn visit(&mut self, tag: u8, frame: Option<&[u8]>) -> Result<Verdict, String>;
}

/// Why a stream cannot go on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {len} for message type {tag:?} (less than 4)")]
    LengthTooSmall { tag: char, len: u32 },
    #[error("message type {tag:?} of {len} bytes exceeds max_message_size ({max} bytes)")]
    TooLarge { tag: char, len: u32, max: usize },
    #[error("{0}")]
    Rejected(String),
}

/// Per-direction framing state: where the next header starts.
#[derive(Debug)]
pub struct FrameSplitter {
    /// Bytes of a forwarded frame that have not arrived yet.
    in_frame_remaining: usize,
    max_message_size: usize,
    /// The last split stopped before a frame the visitor holds.
    held: bool,
}

impl FrameSplitter {
    /// A splitter that refuses frames longer than `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        FrameSplitter {
            in_frame_remaining: 0,
            max_message_size,
            held: false,
        }
    }

    /// True when the last split stopped before a frame the visitor holds
    /// ([`Verdict::Hold`]): split again later, before reading more.
    pub fn held(&self) -> bool {
        self.held
    }

    /// True when the bytes forwarded so far end exactly at a frame boundary,
    /// so a frame of pgshift's own may be written to this stream.
    pub fn at_frame_boundary(&self) -> bool {
        self.in_frame_remaining == 0
    }

    /// Moves everything that can be forwarded from the front of `buf` to
    /// `out`. What stays in `buf` is the start of a frame the visitor wants
    /// whole (or of a header) that needs more bytes; the return value is how
    /// many bytes that frame needs in total, so the caller can reserve room.
    pub fn split(
        &mut self,
        buf: &mut BytesMut,
        visitor: &mut impl FrameVisitor,
        out: &mut OutQueue,
    ) -> Result<usize, FrameError> {
        // `run` counts bytes at the front of `buf` that are forwarded as is.
        let mut run = 0;
        self.held = false;
        let result = loop {
            if self.in_frame_remaining > 0 {
                let take = self.in_frame_remaining.min(buf.len() - run);
                run += take;
                self.in_frame_remaining -= take;
                if self.in_frame_remaining > 0 {
                    break Ok(HEADER_LEN);
                }
            }
            let avail = &buf[run..];
            if avail.len() < HEADER_LEN {
                break Ok(HEADER_LEN);
            }
            let tag = avail[0];
            let len = u32::from_be_bytes([avail[1], avail[2], avail[3], avail[4]]);
            if len < 4 {
                break Err(FrameError::LengthTooSmall {
                    tag: tag as char,
                    len,
                });
            }
            if len as usize > self.max_message_size {
                break Err(FrameError::TooLarge {
                    tag: tag as char,
                    len,
                    max: self.max_message_size,
                });
            }
            let total = 1 + len as usize;
            let frame = match visitor.handling(tag) {
                Handling::Forward => None,
                Handling::Whole if avail.len() < total => break Ok(total),
                Handling::Whole => Some(&avail[..total]),
            };
            match visitor.visit(tag, frame) {
                Ok(Verdict::Keep) => self.in_frame_remaining = total,
                Ok(Verdict::Replace(bytes)) => {
                    if run > 0 {
                        out.push(buf.split_to(run).freeze());
                        run = 0;
                    }
                    buf.advance(total);
                    out.push(bytes);
                }
                Ok(Verdict::Hold) => {
                    self.held = true;
                    break Ok(total);
                }
                Err(reason) => break Err(FrameError::Rejected(reason)),
            }
        };
        if run > 0 {
            out.push(buf.split_to(run).freeze());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(payload.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend(frame(b'B', b"bind-payload"));
        s.extend(frame(b'Q', b"select 1\0"));
        s.extend(frame(b'E', b"\0\0\0\0\0"));
        s.extend(frame(b'd', &[7u8; 300]));
        s.extend(frame(b'P', b"s1\0select $1\0\0\0"));
        s.extend(frame(b'S', b""));
        s
    }

    /// Wants Q, P and S whole; replaces Q by `replace_q` when set.
    #[derive(Default)]
    struct Recorder {
        seen: Vec<(u8, Option<Vec<u8>>)>,
        replace_q: Option<Bytes>,
    }

    impl FrameVisitor for Recorder {
        fn handling(&self, tag: u8) -> Handling {
            match tag {
                b'Q' | b'P' | b'S' => Handling::Whole,
                _ => Handling::Forward,
            }
        }
        fn visit(&mut self, tag: u8, frame: Option<&[u8]>) -> Result<Verdict, String> {
            self.seen.push((tag, frame.map(<[u8]>::to_vec)));
            match (&self.replace_q, tag) {
                (Some(q), b'Q') => Ok(Verdict::Replace(q.clone())),
                _ => Ok(Verdict::Keep),
            }
        }
    }

    /// Feeds `input` in chunks of the given sizes; returns what went out.
    fn run(input: &[u8], chunks: &[usize], visitor: &mut Recorder) -> Vec<u8> {
        let mut splitter = FrameSplitter::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut out = OutQueue::default();
        let mut forwarded = Vec::new();
        let mut pos = 0;
        let mut sizes = chunks.iter().cycle();
        while pos < input.len() {
            let n = (*sizes.next().unwrap()).min(input.len() - pos);
            buf.put_slice(&input[pos..pos + n]);
            pos += n;
            splitter.split(&mut buf, visitor, &mut out).unwrap();
            let n = out.remaining();
            forwarded.extend_from_slice(&out.copy_to_bytes(n));
        }
        assert!(buf.is_empty(), "all bytes consumed");
        assert!(splitter.at_frame_boundary());
        forwarded
    }

    #[test]
    fn every_chunking_gives_the_same_stream_and_visits() {
        let input = stream();
        for size in 1..=input.len() {
            let mut v = Recorder::default();
            assert_eq!(run(&input, &[size], &mut v), input, "chunk size {size}");
            let tags: Vec<u8> = v.seen.iter().map(|(t, _)| *t).collect();
            assert_eq!(
                tags,
                b"BQEdPS".to_vec(),
                "each frame visited once, in order"
            );
            assert_eq!(
                v.seen[1].1.as_deref(),
                Some(&frame(b'Q', b"select 1\0")[..])
            );
            assert_eq!(v.seen[5].1.as_deref(), Some(&frame(b'S', b"")[..]));
            assert_eq!(v.seen[0].1, None, "forwarded frames show only their tag");
        }
        let mut v = Recorder::default();
        assert_eq!(run(&input, &[3, 1, 17, 2, 250, 5], &mut v), input);
    }

    /// Holds the Parse frame `holds` times, then keeps it.
    struct Holder {
        holds: usize,
        seen: Vec<u8>,
    }

    impl FrameVisitor for Holder {
        fn handling(&self, tag: u8) -> Handling {
            match tag {
                b'P' => Handling::Whole,
                _ => Handling::Forward,
            }
        }
        fn visit(&mut self, tag: u8, _frame: Option<&[u8]>) -> Result<Verdict, String> {
            if tag == b'P' && self.holds > 0 {
                self.holds -= 1;
                return Ok(Verdict::Hold);
            }
            self.seen.push(tag);
            Ok(Verdict::Keep)
        }
    }

    #[test]
    fn a_held_frame_and_what_follows_wait_in_the_buffer_until_let_go() {
        let input = stream();
        let parse_at =
            input.len() - frame(b'S', b"").len() - frame(b'P', b"s1\0select $1\0\0\0").len();
        let mut splitter = FrameSplitter::new(1 << 20);
        let mut buf = BytesMut::from(&input[..]);
        let mut out = OutQueue::default();
        let mut v = Holder {
            holds: 2,
            seen: Vec::new(),
        };
        for _ in 0..2 {
            splitter.split(&mut buf, &mut v, &mut out).unwrap();
            assert!(splitter.held());
            assert_eq!(
                buf.len(),
                input.len() - parse_at,
                "nothing from the held frame on is gone"
            );
        }
        assert_eq!(out.copy_to_bytes(out.remaining()), input[..parse_at]);
        splitter.split(&mut buf, &mut v, &mut out).unwrap();
        assert!(!splitter.held() && buf.is_empty());
        assert_eq!(out.copy_to_bytes(out.remaining()), input[parse_at..]);
        assert_eq!(
            v.seen,
            b"BQEdPS".to_vec(),
            "each frame passed once, in order"
        );
    }

    #[test]
    fn kept_frames_stay_in_one_run() {
        let input = stream();
        let mut buf = BytesMut::from(&input[..]);
        let mut out = OutQueue::default();
        FrameSplitter::new(1 << 20)
            .split(&mut buf, &mut Recorder::default(), &mut out)
            .unwrap();
        assert_eq!(out.chunk_count(), 1, "nothing split or copied");
    }

    #[test]
    fn replaced_frames_are_swapped_in_place() {
        let input = stream();
        let new_q = Bytes::from(frame(b'Q', b"select 2\0"));
        let mut expected = Vec::new();
        expected.extend(frame(b'B', b"bind-payload"));
        expected.extend_from_slice(&new_q);
        expected.extend_from_slice(
            &input[frame(b'B', b"bind-payload").len() + frame(b'Q', b"select 1\0").len()..],
        );
        for size in [1, 7, input.len()] {
            let mut v = Recorder {
                replace_q: Some(new_q.clone()),
                ..Default::default()
            };
            assert_eq!(run(&input, &[size], &mut v), expected, "chunk size {size}");
        }
    }

    #[test]
    fn forwarded_frames_stream_before_they_are_complete() {
        let mut splitter = FrameSplitter::new(1 << 20);
        let big = frame(b'd', &[1u8; 1000]);
        let mut buf = BytesMut::from(&big[..400]);
        let mut out = OutQueue::default();
        splitter
            .split(&mut buf, &mut Recorder::default(), &mut out)
            .unwrap();
        assert_eq!(out.remaining(), 400);
        assert!(!splitter.at_frame_boundary());
        assert!(buf.is_empty());
    }

    #[test]
    fn whole_frames_wait_and_report_their_size() {
        let mut splitter = FrameSplitter::new(1 << 20);
        let q = frame(b'Q', &[b'x'; 100]);
        let mut buf = BytesMut::from(&q[..10]);
        let mut out = OutQueue::default();
        let wanted = splitter
            .split(&mut buf, &mut Recorder::default(), &mut out)
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(wanted, q.len());
        assert_eq!(buf.len(), 10);
    }

    #[test]
    fn bad_lengths_and_rejections_are_errors() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        let err = FrameSplitter::new(100)
            .split(&mut buf, &mut Recorder::default(), &mut OutQueue::default())
            .unwrap_err();
        assert_eq!(err, FrameError::LengthTooSmall { tag: 'Q', len: 3 });
        let mut buf = BytesMut::from(&[b'd', 0, 0, 1, 0][..]);
        let err = FrameSplitter::new(100)
            .split(&mut buf, &mut Recorder::default(), &mut OutQueue::default())
            .unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                tag: 'd',
                len: 256,
                max: 100
            }
        );
        struct No;
        impl FrameVisitor for No {
            fn handling(&self, _: u8) -> Handling {
                Handling::Whole
            }
            fn visit(&mut self, _: u8, _: Option<&[u8]>) -> Result<Verdict, String> {
                Err("no".into())
            }
        }
        let mut buf = BytesMut::from(&frame(b'Q', b"x\0")[..]);
        let err = FrameSplitter::new(100)
            .split(&mut buf, &mut No, &mut OutQueue::default())
            .unwrap_err();
        assert_eq!(err, FrameError::Rejected("no".into()));
    }
}
