//! Splitting a byte stream of regular (post-startup) protocol messages into
//! what the relay forwards untouched and what it needs to look at.
//!
//! Only frame headers (a tag byte and a big-endian length) are read. A run of
//! frames the caller does not inspect — including a frame that has only partly
//! arrived — is split off the read buffer as one [`Bytes`] that shares the
//! buffer's memory: no payload is copied or decoded, and a 1 GB DataRow streams
//! through without being held whole. Each frame is classified by its tag
//! ([`Handling`]): forwarded blind, observed (the caller sees the whole frame
//! but it stays part of the forwarded run), or inspected (handed over whole
//! as its own piece, so the caller can replace it).

use bytes::{Bytes, BytesMut};

/// Bytes in a frame header: tag + length word.
pub const HEADER_LEN: usize = 5;

/// What [`FrameSplitter::split`] hands back, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes to forward as they are: whole frames, and possibly the start or
    /// the rest of a frame that spans reads.
    Forward(Bytes),
    /// One whole frame (header included) whose tag the caller inspects.
    Inspect { tag: u8, frame: Bytes },
}

/// What the caller wants done with frames of one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Forward as it comes; the observer sees the tag only.
    Forward,
    /// Wait for the whole frame, show it to the observer, forward it as part
    /// of the surrounding run.
    Observe,
    /// Wait for the whole frame and hand it over as its own piece.
    Inspect,
}

/// A frame header that cannot be right.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {len} for message type {tag:?} (less than 4)")]
    LengthTooSmall { tag: char, len: u32 },
    #[error("message type {tag:?} of {len} bytes exceeds max_message_size ({max} bytes)")]
    TooLarge { tag: char, len: u32, max: usize },
}

/// Per-direction framing state: where the next header starts.
#[derive(Debug)]
pub struct FrameSplitter {
    /// Bytes of a forwarded frame that have not arrived yet.
    in_frame_remaining: usize,
    max_message_size: usize,
}

impl FrameSplitter {
    /// A splitter that refuses frames longer than `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        FrameSplitter {
            in_frame_remaining: 0,
            max_message_size,
        }
    }

    /// True when the bytes forwarded so far end exactly at a frame boundary,
    /// so a frame of pgshift's own may be written to this stream.
    pub fn at_frame_boundary(&self) -> bool {
        self.in_frame_remaining == 0
    }

    /// Takes every complete piece off the front of `buf` and appends it to
    /// `out`. `classify` says how each tag is handled; `observe` is called
    /// once per frame, in stream order, when its header is read — with the
    /// whole frame for observed and inspected tags, `None` for forwarded
    /// ones. What is left in `buf` is the start of a frame that must be seen
    /// whole (or of a header) and needs more bytes; the return value is how
    /// many bytes that frame needs in total, so the caller can reserve room.
    pub fn split(
        &mut self,
        buf: &mut BytesMut,
        classify: impl Fn(u8) -> Handling,
        mut observe: impl FnMut(u8, Option<&[u8]>),
        out: &mut Vec<Piece>,
    ) -> Result<usize, FrameError> {
        // `run` counts bytes at the front of `buf` that are forwarded as is.
        let mut run = 0;
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
            match classify(tag) {
                Handling::Forward => {
                    observe(tag, None);
                    self.in_frame_remaining = total;
                }
                _ if avail.len() < total => break Ok(total),
                Handling::Observe => {
                    observe(tag, Some(&avail[..total]));
                    self.in_frame_remaining = total;
                }
                Handling::Inspect => {
                    observe(tag, Some(&avail[..total]));
                    if run > 0 {
                        out.push(Piece::Forward(buf.split_to(run).freeze()));
                        run = 0;
                    }
                    out.push(Piece::Inspect {
                        tag,
                        frame: buf.split_to(total).freeze(),
                    });
                }
            }
        };
        if run > 0 {
            out.push(Piece::Forward(buf.split_to(run).freeze()));
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

    fn inspect_qp(tag: u8) -> Handling {
        match tag {
            b'Q' | b'P' => Handling::Inspect,
            b'S' => Handling::Observe,
            _ => Handling::Forward,
        }
    }

    fn ignore(_: u8, _: Option<&[u8]>) {}

    /// Feeds `input` in chunks of the given sizes and reassembles the output.
    fn run(input: &[u8], chunks: &[usize]) -> (Vec<u8>, Vec<(u8, Vec<u8>)>) {
        let mut splitter = FrameSplitter::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut forwarded = Vec::new();
        let mut inspected = Vec::new();
        let mut seen = Vec::new();
        let mut pos = 0;
        let mut sizes = chunks.iter().cycle();
        while pos < input.len() {
            let n = (*sizes.next().unwrap()).min(input.len() - pos);
            buf.put_slice(&input[pos..pos + n]);
            pos += n;
            let mut out = Vec::new();
            splitter
                .split(
                    &mut buf,
                    inspect_qp,
                    |tag, frame| seen.push((tag, frame.map(<[u8]>::to_vec))),
                    &mut out,
                )
                .unwrap();
            for piece in out {
                match piece {
                    Piece::Forward(b) => forwarded.extend_from_slice(&b),
                    Piece::Inspect { tag, frame } => {
                        inspected.push((tag, frame.to_vec()));
                        forwarded.extend_from_slice(&frame);
                    }
                }
            }
        }
        assert!(buf.is_empty(), "all bytes consumed");
        assert!(splitter.at_frame_boundary());
        let tags: Vec<u8> = seen.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            tags,
            b"BQEdPS".to_vec(),
            "every frame observed once, in order"
        );
        assert_eq!(
            seen[5].1.as_deref(),
            Some(&frame(b'S', b"")[..]),
            "observed frames are whole"
        );
        assert_eq!(seen[0].1, None, "forwarded frames show only their tag");
        (forwarded, inspected)
    }

    #[test]
    fn whole_stream_in_one_read() {
        let input = stream();
        let (fwd, insp) = run(&input, &[input.len()]);
        assert_eq!(fwd, input);
        assert_eq!(insp.len(), 2);
        assert_eq!(insp[0].1, frame(b'Q', b"select 1\0"));
        assert_eq!(insp[1].1, frame(b'P', b"s1\0select $1\0\0\0"));
    }

    #[test]
    fn every_chunking_gives_the_same_stream() {
        let input = stream();
        for size in 1..=input.len() {
            let (fwd, insp) = run(&input, &[size]);
            assert_eq!(fwd, input, "chunk size {size}");
            assert_eq!(insp.len(), 2, "chunk size {size}");
        }
        let (fwd, _) = run(&input, &[3, 1, 17, 2, 250, 5]);
        assert_eq!(fwd, input);
    }

    #[test]
    fn forwarded_frames_stream_before_they_are_complete() {
        let mut splitter = FrameSplitter::new(1 << 20);
        let big = frame(b'd', &[1u8; 1000]);
        let mut buf = BytesMut::from(&big[..400]);
        let mut out = Vec::new();
        splitter
            .split(&mut buf, inspect_qp, ignore, &mut out)
            .unwrap();
        assert_eq!(
            out,
            vec![Piece::Forward(Bytes::copy_from_slice(&big[..400]))]
        );
        assert!(!splitter.at_frame_boundary());
        assert!(buf.is_empty());
    }

    #[test]
    fn inspected_frame_waits_and_reports_its_size() {
        let mut splitter = FrameSplitter::new(1 << 20);
        let q = frame(b'Q', &[b'x'; 100]);
        let mut buf = BytesMut::from(&q[..10]);
        let mut out = Vec::new();
        let wanted = splitter
            .split(&mut buf, inspect_qp, ignore, &mut out)
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(wanted, q.len());
        assert_eq!(buf.len(), 10);
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut splitter = FrameSplitter::new(100);
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        let err = splitter
            .split(&mut buf, inspect_qp, ignore, &mut Vec::new())
            .unwrap_err();
        assert_eq!(err, FrameError::LengthTooSmall { tag: 'Q', len: 3 });
        let mut buf = BytesMut::from(&[b'd', 0, 0, 1, 0][..]);
        let err = FrameSplitter::new(100)
            .split(&mut buf, inspect_qp, ignore, &mut Vec::new())
            .unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                tag: 'd',
                len: 256,
                max: 100
            }
        );
    }

    #[test]
    fn frames_before_a_bad_header_are_still_forwarded() {
        let mut input = frame(b'B', b"ok");
        input.extend_from_slice(&[b'Q', 0, 0, 0, 1]);
        let mut buf = BytesMut::from(&input[..]);
        let mut out = Vec::new();
        let err = FrameSplitter::new(100).split(&mut buf, inspect_qp, ignore, &mut out);
        assert!(err.is_err());
        assert_eq!(out, vec![Piece::Forward(Bytes::from(frame(b'B', b"ok")))]);
    }
}
