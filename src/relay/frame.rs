//! WebSocket frame boundaries, found by reading headers only.
//!
//! The relay forwards payload bytes untouched: client frames stay masked (the backend
//! unmasks them), backend frames stay unmasked. What it needs from the stream is where
//! each frame starts and ends, so that it can count messages, cap their size, refuse
//! what RFC 6455 forbids, read close codes, and inject a close frame *between* frames.
//! [`FrameScanner`] walks a byte stream and reports exactly that, at the cost of a few
//! comparisons per frame header (2–14 bytes) and none per payload byte, except for the
//! payload of close frames (at most 125 bytes), which it checks (code, UTF-8 reason), and,
//! when [`ScanRules::validate_utf8`] is on, text messages, which it validates as they pass
//! (see [`super::utf8`]).
//!
//! A close frame is judged whole: until all of it has arrived it is held back like an
//! incomplete header, so a bad close code or reason is refused before any of its bytes
//! are forwarded. A text payload cannot be held back (it may be megabytes), so invalid
//! UTF-8 found in a frame whose start was already forwarded leaves the destination
//! inside that frame: the scanner marks itself [`cut`](FrameScanner::cut), and the relay
//! then ends that side with a TCP shutdown instead of a close frame that would land in
//! the payload.

use std::time::Instant;

use wsgate_layers::ratelimit::{Admit, MessageRateLimiter};

use super::utf8::MaskedText;

/// Opcode of a close frame.
pub(crate) const OP_CLOSE: u8 = 0x8;

/// The longest control frame: 2 header bytes, 4 of mask key, 125 of payload.
pub(crate) const MAX_CONTROL_FRAME: usize = 2 + 4 + 125;

/// What the scanner checks in one direction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanRules {
    /// Frames from clients must be masked; frames from servers must not be.
    pub(crate) masked: bool,
    /// Largest message (sum of its fragments' payloads) forwarded; larger ones close 1009.
    pub(crate) max_message: u64,
    /// RSV bits the negotiated extensions allow (0x40 = RSV1 for permessage-deflate).
    pub(crate) rsv_allowed: u8,
    /// Check that text messages and close reasons are UTF-8 (1007 otherwise).
    pub(crate) validate_utf8: bool,
}

/// A frame or message that must not be forwarded, and the close code it earns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
}

const fn protocol_error(reason: &'static str) -> Violation {
    Violation { code: 1002, reason }
}

/// Close code for a message whose payload does not match its type (RFC 6455 §7.4.1).
pub(crate) const INVALID_PAYLOAD: u16 = 1007;

const fn invalid_utf8(reason: &'static str) -> Violation {
    Violation {
        code: INVALID_PAYLOAD,
        reason,
    }
}

/// Whether a peer may send `code` in a close frame: RFC 6455 §7.4 and the IANA registry
/// (1012–1014 included, which wsgate itself sends), or the 3000–4999 ranges for
/// libraries and applications. 1005 and 1006 are for reporting only, never sent.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A close frame, as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CloseSeen {
    /// `None` for a close frame without a payload (RFC 6455 §7.1.5: treated as 1005).
    pub(crate) code: Option<u16>,
}

/// Where the bytes just scanned stop being forwardable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Everything up to `forward` is forwardable; bytes after it are an incomplete
    /// frame header to scan again together with the next read.
    More,
    /// A complete close frame ends at `forward`; nothing after it may be forwarded.
    Close(CloseSeen),
    /// The frame starting at `forward` breaks the rules; it and everything after is dropped.
    Violation(Violation),
    /// A frame boundary was requested ([`FrameScanner::stop_at_boundary`]) and reached.
    Boundary,
    /// After `forward`, the next N bytes belong to a message dropped by the message-rate
    /// limit: drop them, then scan on from there.
    Skip(usize),
}

/// The result of scanning one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    /// How many leading bytes of the chunk may be forwarded now.
    pub(crate) forward: usize,
    /// Why scanning stopped before the end of the chunk, or `More`.
    pub(crate) stop: Stop,
}

/// Tracks frame boundaries across reads in one direction.
#[derive(Debug)]
pub(crate) struct FrameScanner {
    rules: ScanRules,
    /// Payload bytes of the current frame not yet seen; 0 at a frame boundary.
    remaining: u64,
    /// Set while inside the payload of a close frame (already checked whole).
    close: Option<CloseSeen>,
    /// A fragmented data message is open (its first frame had FIN = 0).
    fragmented: bool,
    /// FIN bit of the current data frame.
    fin: bool,
    /// Opcode class of the current frame: true for data (text, binary, continuation).
    data_frame: bool,
    /// Payload bytes of the current message so far.
    message_len: u64,
    /// Stop at the next frame boundary (to inject a frame there).
    stop_at_boundary: bool,
    /// Messages completed.
    pub(crate) messages: u64,
    /// Per-socket message and byte rate limit (client to backend only), with its count
    /// of dropped messages. Boxed: its buckets are ~190 bytes of `u128`s that most
    /// sockets (and every backend-to-client direction) never use, and an idle socket's
    /// task is most of what it costs.
    limiter: Option<Box<Limited>>,
    /// The current frame is being dropped (payload bytes are skipped, not forwarded).
    skipping: bool,
    /// The current message is being dropped, continuation frames included.
    dropping: bool,
    /// The current message is text being validated (`rules.validate_utf8`).
    text: bool,
    /// UTF-8 state of the current text message, across frames and reads.
    utf8: MaskedText,
    /// Where the current frame's header starts in the chunk being scanned; `None` when
    /// it came in an earlier chunk (and was forwarded). A `u32` (chunks are at most
    /// `server.buffer_size`, 16 MiB): 8 bytes less in each pump of every socket.
    frame_start: Option<u32>,
    /// Scanning stopped inside a frame whose start was forwarded: the destination holds
    /// part of a frame, so nothing (not even a close frame) may follow.
    cut: bool,
}

/// A message-rate limiter and what it dropped, boxed together in a [`FrameScanner`].
#[derive(Debug)]
struct Limited {
    limiter: MessageRateLimiter,
    /// Messages dropped by the limit (`on_excess = "drop"`).
    dropped: u64,
}

impl FrameScanner {
    pub(crate) fn new(rules: ScanRules) -> Self {
        Self {
            rules,
            remaining: 0,
            close: None,
            fragmented: false,
            fin: true,
            data_frame: false,
            message_len: 0,
            stop_at_boundary: false,
            messages: 0,
            limiter: None,
            skipping: false,
            dropping: false,
            text: false,
            utf8: MaskedText::default(),
            frame_start: None,
            cut: false,
        }
    }

    /// Messages dropped by the message-rate limit.
    pub(crate) fn dropped(&self) -> u64 {
        self.limiter.as_ref().map_or(0, |l| l.dropped)
    }

    /// Stopped inside a frame already partly forwarded (invalid UTF-8 in its payload):
    /// the destination must not get another byte, a close frame included.
    pub(crate) fn cut(&self) -> bool {
        self.cut
    }

    /// Judges every new message from this source by `limiter`.
    pub(crate) fn with_limiter(mut self, limiter: Option<MessageRateLimiter>) -> Self {
        self.limiter = limiter.map(|limiter| {
            Box::new(Limited {
                limiter,
                dropped: 0,
            })
        });
        self
    }

    /// True between frames, where a control frame may be injected.
    pub(crate) fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.close.is_none()
    }

    /// A fragmented data message is open: its last frame so far had FIN = 0.
    pub(crate) fn in_message(&self) -> bool {
        self.fragmented
    }

    /// Inside the payload of a close frame.
    pub(crate) fn in_close(&self) -> bool {
        self.close.is_some()
    }

    /// The stream goes to a new destination that never saw the current message: the
    /// rest of the current frame and of its message (continuation frames up to FIN) is
    /// dropped; control frames in between still pass, the next message goes on whole.
    pub(crate) fn abandon_message(&mut self) {
        self.stop_at_boundary = false;
        if self.remaining > 0 {
            self.skipping = true;
        }
        if self.fragmented {
            self.dropping = true;
        }
        self.data_frame = false;
        self.message_len = 0;
        self.text = false;
        self.utf8.validator.reset();
    }

    /// Makes the next [`scan`](Self::scan) stop at the first frame boundary it reaches
    /// (immediately, if already at one).
    pub(crate) fn stop_at_boundary(&mut self) {
        self.stop_at_boundary = true;
    }

    /// Scans `data`, which starts at the scanner's current position in the stream.
    pub(crate) fn scan(&mut self, data: &[u8]) -> Scan {
        let mut pos = 0usize;
        self.frame_start = None;
        loop {
            if self.remaining > 0 {
                let avail = data.len() - pos;
                let take = usize::try_from(self.remaining).map_or(avail, |r| r.min(avail));
                if self.skipping {
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.skipping = false;
                    }
                    return Scan {
                        forward: pos,
                        stop: Stop::Skip(take),
                    };
                }
                if self.data_frame && self.text && self.utf8.feed(&data[pos..pos + take]).is_err() {
                    return self.stop_invalid_utf8("invalid UTF-8 in a text message");
                }
                pos += take;
                self.remaining -= take as u64;
                if self.remaining > 0 {
                    return Scan {
                        forward: pos,
                        stop: Stop::More,
                    };
                }
            }
            // At the end of a frame (or at the start of the stream).
            if let Some(seen) = self.close.take() {
                return Scan {
                    forward: pos,
                    stop: Stop::Close(seen),
                };
            }
            if self.data_frame {
                self.data_frame = false;
                if self.fin {
                    if self.text {
                        self.text = false;
                        if self.utf8.validator.finish().is_err() {
                            return self.stop_invalid_utf8("text message ends inside a character");
                        }
                    }
                    self.messages += 1;
                    self.message_len = 0;
                }
            }
            if self.stop_at_boundary {
                self.stop_at_boundary = false;
                return Scan {
                    forward: pos,
                    stop: Stop::Boundary,
                };
            }
            if pos == data.len() {
                return Scan {
                    forward: pos,
                    stop: Stop::More,
                };
            }
            match self.header(&data[pos..]) {
                Ok(Some(len)) if self.skipping => {
                    // Drop the header and whatever of the payload is here.
                    let avail = data.len() - pos - len;
                    let take = usize::try_from(self.remaining).map_or(avail, |r| r.min(avail));
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.skipping = false;
                    }
                    return Scan {
                        forward: pos,
                        stop: Stop::Skip(len + take),
                    };
                }
                Ok(Some(len)) => {
                    // A chunk past 4 GiB cannot happen (see the field); were it to,
                    // `None` only makes an invalid-UTF-8 stop the cautious one (cut).
                    self.frame_start = u32::try_from(pos).ok();
                    pos += len;
                }
                Ok(None) => {
                    return Scan {
                        forward: pos,
                        stop: Stop::More,
                    }
                }
                Err(v) => {
                    return Scan {
                        forward: pos,
                        stop: Stop::Violation(v),
                    }
                }
            }
        }
    }

    /// Parses and checks one frame header at the start of `b`. `Ok(None)` when `b` holds
    /// only part of it.
    fn header(&mut self, b: &[u8]) -> Result<Option<usize>, Violation> {
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let rsv = b[0] & 0x70;
        let opcode = b[0] & 0x0f;
        let masked = b[1] & 0x80 != 0;
        let len7 = b[1] & 0x7f;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let need = 2 + ext + if masked { 4 } else { 0 };
        if b.len() < need {
            return Ok(None);
        }
        let len = match ext {
            2 => u64::from(u16::from_be_bytes([b[2], b[3]])),
            8 => {
                let l = u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]);
                if l >> 63 != 0 {
                    return Err(protocol_error("frame length has its top bit set"));
                }
                l
            }
            _ => u64::from(len7),
        };
        if masked != self.rules.masked {
            return Err(protocol_error(if self.rules.masked {
                "client frames must be masked"
            } else {
                "server frames must not be masked"
            }));
        }
        let control = opcode & 0x8 != 0;
        if control {
            if !matches!(opcode, 0x8..=0xA) {
                return Err(protocol_error("reserved opcode"));
            }
            if rsv != 0 {
                return Err(protocol_error("RSV bits set on a control frame"));
            }
            if !fin {
                return Err(protocol_error("fragmented control frame"));
            }
            if len > 125 {
                return Err(protocol_error("control frame longer than 125 bytes"));
            }
        } else {
            if rsv & !self.rules.rsv_allowed != 0 {
                return Err(protocol_error(
                    "RSV bits set without a negotiated extension",
                ));
            }
            match opcode {
                0x0 if !self.fragmented => {
                    return Err(protocol_error("continuation frame outside a message"))
                }
                0x1 | 0x2 if self.fragmented => {
                    return Err(protocol_error("new message inside a fragmented message"))
                }
                0x0..=0x2 => {}
                _ => return Err(protocol_error("reserved opcode")),
            }
            if opcode == 0 && rsv != 0 {
                // RFC 7692 §6.1: RSV1 marks the first frame of a compressed message only.
                return Err(protocol_error("RSV bits set on a continuation frame"));
            }
            if opcode != 0 {
                self.dropping = false;
                if let Some(limiter) = self.limiter.as_mut() {
                    let bytes = usize::try_from(len).unwrap_or(usize::MAX);
                    match limiter.limiter.admit(Instant::now(), bytes) {
                        Admit::Pass => {}
                        Admit::Close(e) => {
                            return Err(Violation {
                                code: e.close_code(),
                                reason: e.reason(),
                            })
                        }
                        Admit::Drop(_) => self.dropping = true,
                    }
                }
            }
            if self.dropping {
                // The whole message goes, continuation frames included; it never counts
                // toward the size limit or the message count.
                self.fragmented = !fin;
                if fin {
                    self.dropping = false;
                    // Only a limiter drops, so there is one to count on.
                    if let Some(l) = self.limiter.as_mut() {
                        l.dropped += 1;
                    }
                }
                self.skipping = true;
                self.remaining = len;
                return Ok(Some(need));
            }
            let total = self.message_len.saturating_add(len);
            if total > self.rules.max_message {
                return Err(Violation {
                    code: 1009,
                    reason: "message too big",
                });
            }
            self.message_len = total;
            self.fragmented = !fin;
            self.fin = fin;
            self.data_frame = true;
            if opcode != 0x0 {
                // Compressed text (RSV1) is not UTF-8 until inflated: not judged here.
                self.text = opcode == 0x1 && self.rules.validate_utf8 && rsv == 0;
            }
            if self.text {
                self.utf8.start_frame(mask_key(b, need, masked));
            }
        }
        if opcode == OP_CLOSE {
            // At most 125 bytes: held back until whole, then judged before forwarding.
            let end = need + len as usize;
            if b.len() < end {
                return Ok(None);
            }
            self.close = Some(self.check_close(&b[need..end], mask_key(b, need, masked))?);
        }
        self.remaining = len;
        Ok(Some(need))
    }

    /// Reads and checks a close frame's payload: a 2-byte code a peer may send, then a
    /// UTF-8 reason.
    fn check_close(&self, wire: &[u8], key: [u8; 4]) -> Result<CloseSeen, Violation> {
        if wire.is_empty() {
            return Ok(CloseSeen { code: None });
        }
        if wire.len() == 1 {
            return Err(protocol_error("close frame with a 1-byte payload"));
        }
        let mut payload = [0u8; 125];
        let payload = &mut payload[..wire.len()];
        for (i, (p, w)) in payload.iter_mut().zip(wire).enumerate() {
            *p = w ^ key[i % 4];
        }
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        if !close_code_allowed(code) {
            return Err(protocol_error("invalid close code"));
        }
        if self.rules.validate_utf8 && std::str::from_utf8(&payload[2..]).is_err() {
            return Err(invalid_utf8("invalid UTF-8 in a close reason"));
        }
        Ok(CloseSeen { code: Some(code) })
    }

    /// Stops at invalid UTF-8 in the current text frame: before its header when that is
    /// in this chunk (the destination stays at a frame boundary), else right here, cut.
    fn stop_invalid_utf8(&mut self, reason: &'static str) -> Scan {
        let forward = match self.frame_start {
            Some(start) => start as usize,
            None => {
                // This chunk starts inside the frame (its header went out earlier).
                self.cut = true;
                0
            }
        };
        Scan {
            forward,
            stop: Stop::Violation(invalid_utf8(reason)),
        }
    }
}

/// The masking key of the frame header `b[..need]`, or zeros when unmasked (XOR with
/// zeros changes nothing).
fn mask_key(b: &[u8], need: usize, masked: bool) -> [u8; 4] {
    if masked {
        [b[need - 4], b[need - 3], b[need - 2], b[need - 1]]
    } else {
        [0; 4]
    }
}

/// An unmasked text frame toward a client (the resume notice): written once per
/// re-attachment, never on the relay's hot path.
pub(crate) fn text_frame(text: &str) -> Vec<u8> {
    let len = text.len();
    let mut v = Vec::with_capacity(len + 10);
    v.push(0x81);
    if len < 126 {
        v.push(len as u8);
    } else if let Ok(l) = u16::try_from(len) {
        v.push(126);
        v.extend_from_slice(&l.to_be_bytes());
    } else {
        v.push(127);
        v.extend_from_slice(&(len as u64).to_be_bytes());
    }
    v.extend_from_slice(text.as_bytes());
    v
}

/// A frame the relay writes itself (a close), masked when it goes to a backend.
#[derive(Debug, Clone)]
pub(crate) struct ControlFrame {
    bytes: [u8; 2 + 4 + 125],
    len: u8,
}

impl ControlFrame {
    /// A close frame with `code` and `reason` (cut to fit 123 bytes on a char boundary).
    pub(crate) fn close(code: u16, reason: &str, masked: bool) -> Self {
        let mut reason = reason;
        while reason.len() > 123 {
            let mut cut = 123;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason = &reason[..cut];
        }
        let plen = 2 + reason.len();
        let mut bytes = [0u8; 131];
        bytes[0] = 0x80 | OP_CLOSE;
        bytes[1] = plen as u8 | if masked { 0x80 } else { 0 };
        let start = if masked { 6 } else { 2 };
        bytes[start..start + 2].copy_from_slice(&code.to_be_bytes());
        bytes[start + 2..start + plen].copy_from_slice(reason.as_bytes());
        if masked {
            let key = fastrand::u32(..).to_be_bytes();
            bytes[2..6].copy_from_slice(&key);
            for (i, b) in bytes[start..start + plen].iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        Self {
            bytes,
            len: (start + plen) as u8,
        }
    }

    /// An empty ping, masked when it goes to a backend.
    pub(crate) fn ping(masked: bool) -> Self {
        let mut bytes = [0u8; 131];
        bytes[0] = 0x89;
        let len = if masked {
            bytes[1] = 0x80;
            // Nothing to mask in an empty payload; the key still has to be sent.
            bytes[2..6].copy_from_slice(&fastrand::u32(..).to_be_bytes());
            6
        } else {
            2
        };
        Self { bytes, len }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: ScanRules = ScanRules {
        masked: true,
        max_message: 1 << 20,
        rsv_allowed: 0,
        validate_utf8: true,
    };
    const SERVER: ScanRules = ScanRules {
        masked: false,
        ..CLIENT
    };

    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => v.push(m | n as u8),
            n if n < 65536 => {
                v.push(m | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(m | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                v.extend_from_slice(&k);
                v.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => v.extend_from_slice(payload),
        }
        v
    }

    #[test]
    fn whole_stream_of_messages_is_forwarded_and_counted() {
        let mut s = FrameScanner::new(SERVER);
        let mut data = frame(true, 1, b"hello", None);
        data.extend(frame(false, 2, &[7; 300], None));
        data.extend(frame(true, 9, b"ping", None));
        data.extend(frame(true, 0, &[8; 70000], None));
        let r = s.scan(&data);
        assert_eq!(
            r,
            Scan {
                forward: data.len(),
                stop: Stop::More
            }
        );
        assert_eq!(s.messages, 2);
    }

    #[test]
    fn byte_by_byte_scanning_matches_whole_scanning() {
        let mut data = frame(true, 1, b"hi", Some([1, 2, 3, 4]));
        data.extend(frame(true, 2, &[0; 200], Some([9, 9, 9, 9])));
        let mut s = FrameScanner::new(CLIENT);
        // Feed growing windows the way the relay does: unforwarded bytes are rescanned.
        let mut start = 0;
        let mut end = 0;
        while start < data.len() {
            end = (end + 1).min(data.len());
            let r = s.scan(&data[start..end]);
            assert_eq!(r.stop, Stop::More);
            start += r.forward;
        }
        assert_eq!(s.messages, 2);
    }

    #[test]
    fn close_code_is_read_through_the_mask() {
        let mut s = FrameScanner::new(CLIENT);
        let mut payload = 4001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        let mut data = frame(true, 8, &payload, Some([0xde, 0xad, 0xbe, 0xef]));
        let n = data.len();
        data.extend_from_slice(b"trailing junk");
        let r = s.scan(&data);
        assert_eq!(r.forward, n);
        assert_eq!(r.stop, Stop::Close(CloseSeen { code: Some(4001) }));
    }

    #[test]
    fn rule_breaking_frames_are_stopped_before_their_header() {
        let cases: Vec<(ScanRules, Vec<u8>, u16)> = vec![
            (CLIENT, frame(true, 1, b"x", None), 1002), // unmasked client frame
            (SERVER, frame(true, 1, b"x", Some([1; 4])), 1002), // masked server frame
            (SERVER, frame(true, 3, b"", None), 1002),  // reserved data opcode
            (SERVER, frame(true, 0xB, b"", None), 1002), // reserved control opcode
            (SERVER, frame(false, 9, b"", None), 1002), // fragmented ping
            (SERVER, frame(true, 9, &[0; 126], None), 1002), // long ping
            (SERVER, frame(true, 0, b"x", None), 1002), // stray continuation
            (SERVER, frame(true, 2, &[0; (1 << 20) + 1], None), 1009), // too big
            (SERVER, vec![0xC1, 0x00], 1002),           // RSV1 not negotiated
            (SERVER, vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0], 1002), // 2^63 length
        ];
        for (rules, bad, code) in cases {
            let mut s = FrameScanner::new(rules);
            let good = frame(true, 2, b"ok", rules.masked.then_some([5; 4]));
            let mut data = good.clone();
            data.extend(bad);
            let r = s.scan(&data);
            assert_eq!(r.forward, good.len());
            assert!(
                matches!(r.stop, Stop::Violation(v) if v.code == code),
                "{r:?}"
            );
        }
    }

    #[test]
    fn fragments_count_toward_the_message_limit() {
        let rules = ScanRules {
            max_message: 100,
            ..SERVER
        };
        let mut s = FrameScanner::new(rules);
        let mut data = frame(false, 1, &[b'a'; 60], None);
        let first = data.len();
        data.extend(frame(true, 0, &[b'a'; 60], None));
        let r = s.scan(&data);
        assert_eq!(r.forward, first);
        assert!(matches!(r.stop, Stop::Violation(v) if v.code == 1009));
    }

    #[test]
    fn stops_at_the_next_boundary_when_asked() {
        let mut s = FrameScanner::new(SERVER);
        let a = frame(true, 2, &[1; 10], None);
        let r = s.scan(&a[..5]);
        assert_eq!(r.forward, 5);
        s.stop_at_boundary();
        let mut rest = a[5..].to_vec();
        rest.extend(frame(true, 2, &[2; 10], None));
        let r = s.scan(&rest);
        assert_eq!(
            r,
            Scan {
                forward: a.len() - 5,
                stop: Stop::Boundary
            }
        );
    }

    #[test]
    fn messages_over_the_rate_are_skipped_whole_in_drop_mode() {
        use wsgate_layers::ratelimit::{MessageLimits, OnExcess};
        let limits = MessageLimits::new()
            .messages("1/m".parse().unwrap(), 1)
            .on_excess(OnExcess::Drop);
        let mut s = FrameScanner::new(CLIENT).with_limiter(Some(limits.limiter()));
        let kept = frame(true, 1, b"kept", Some([1; 4]));
        let dropped_first = frame(false, 2, &[9; 300], Some([2; 4]));
        let dropped_cont = frame(true, 0, &[9; 10], Some([3; 4]));
        let ping = frame(true, 9, b"p", Some([4; 4]));
        let mut data = kept.clone();
        data.extend(&dropped_first);
        data.extend(&ping);
        data.extend(&dropped_cont);
        // Walk the chunk the way the pump does: forward, skip, rescan the rest.
        let mut out = Vec::new();
        let mut rest = &data[..];
        loop {
            let r = s.scan(rest);
            out.extend_from_slice(&rest[..r.forward]);
            match r.stop {
                Stop::Skip(k) => rest = &rest[r.forward + k..],
                Stop::More => break,
                other => panic!("{other:?}"),
            }
        }
        let mut expected = kept;
        expected.extend(ping);
        assert_eq!(
            out, expected,
            "the dropped message vanished, the ping inside it did not"
        );
        assert_eq!((s.messages, s.dropped()), (1, 1));
    }

    #[test]
    fn injected_close_frames_parse_back() {
        let f = ControlFrame::close(1001, "going away", true);
        let mut s = FrameScanner::new(CLIENT);
        assert_eq!(
            s.scan(f.as_bytes()).stop,
            Stop::Close(CloseSeen { code: Some(1001) })
        );
        let long = "é".repeat(100);
        let f = ControlFrame::close(1000, &long, false);
        assert!(f.as_bytes().len() <= 127);
        let mut s = FrameScanner::new(SERVER);
        assert_eq!(
            s.scan(f.as_bytes()).stop,
            Stop::Close(CloseSeen { code: Some(1000) })
        );
    }

    #[test]
    fn invalid_text_stops_before_its_frame_when_the_header_is_in_the_same_read() {
        let mut s = FrameScanner::new(CLIENT);
        let good = frame(true, 1, "κόσμε".as_bytes(), Some([1, 2, 3, 4]));
        let mut data = good.clone();
        data.extend(frame(true, 1, b"ok \xed\xa0\x80", Some([5, 6, 7, 8])));
        let r = s.scan(&data);
        assert_eq!(r.forward, good.len());
        assert!(
            matches!(r.stop, Stop::Violation(v) if v.code == 1007),
            "{r:?}"
        );
        assert!(!s.cut(), "the destination stays at a frame boundary");
    }

    #[test]
    fn invalid_text_in_a_frame_already_started_is_a_cut() {
        let mut s = FrameScanner::new(SERVER);
        let data = frame(true, 1, b"abcdef\xff", None);
        let r = s.scan(&data[..5]);
        assert_eq!((r.forward, r.stop), (5, Stop::More));
        let r = s.scan(&data[5..]);
        assert_eq!(r.forward, 0);
        assert!(
            matches!(r.stop, Stop::Violation(v) if v.code == 1007),
            "{r:?}"
        );
        assert!(s.cut());
    }

    #[test]
    fn control_frames_inside_a_text_message_are_not_judged_as_its_text() {
        let mut s = FrameScanner::new(SERVER);
        let mut data = frame(false, 1, b"a\xe2\x82", None);
        data.extend(frame(true, 9, b"\xff\xff", None)); // a ping's payload is binary
        data.extend(frame(true, 0, b"\xacb", None)); // completes the euro sign
        let r = s.scan(&data);
        assert_eq!((r.forward, r.stop), (data.len(), Stop::More));
        assert_eq!(s.messages, 1);
    }

    #[test]
    fn compressed_text_and_disabled_validation_pass_unjudged() {
        let deflate = ScanRules {
            rsv_allowed: 0x40,
            ..SERVER
        };
        let mut data = frame(true, 1, b"\xff\xfe", None);
        data[0] |= 0x40;
        let r = FrameScanner::new(deflate).scan(&data);
        assert_eq!((r.forward, r.stop), (data.len(), Stop::More));
        let off = ScanRules {
            validate_utf8: false,
            ..SERVER
        };
        let data = frame(true, 1, b"\xff\xfe", None);
        let r = FrameScanner::new(off).scan(&data);
        assert_eq!((r.forward, r.stop), (data.len(), Stop::More));
    }

    #[test]
    fn close_frames_are_held_back_until_whole_then_judged() {
        let key = Some([9, 8, 7, 6]);
        let ok = frame(
            true,
            8,
            &[&1000u16.to_be_bytes()[..], "é".as_bytes()].concat(),
            key,
        );
        let mut s = FrameScanner::new(CLIENT);
        for cut in 0..ok.len() {
            let r = s.scan(&ok[..cut]);
            assert_eq!((r.forward, r.stop), (0, Stop::More), "cut at {cut}");
        }
        assert_eq!(
            s.scan(&ok).stop,
            Stop::Close(CloseSeen { code: Some(1000) })
        );
        for (payload, code) in [
            (1005u16.to_be_bytes().to_vec(), 1002),
            (999u16.to_be_bytes().to_vec(), 1002),
            (2000u16.to_be_bytes().to_vec(), 1002),
            ([&1000u16.to_be_bytes()[..], b"\xc3"].concat(), 1007),
        ] {
            let r = FrameScanner::new(CLIENT).scan(&frame(true, 8, &payload, key));
            assert_eq!(r.forward, 0);
            assert!(
                matches!(r.stop, Stop::Violation(v) if v.code == code),
                "{payload:x?}: {r:?}"
            );
        }
    }
}
