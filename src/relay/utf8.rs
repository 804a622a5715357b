//! UTF-8 validation of text messages as they stream through the relay.
//!
//! # Design
//!
//! RFC 6455 §8.1 makes an endpoint fail a connection whose text message is not UTF-8
//! (close 1007). The relay sees a message as a run of reads cut anywhere, frames with
//! control frames in between, and (from clients) masked bytes; it forwards each read at
//! once, so it cannot collect a message and check it at the end. [`Utf8Validator`]
//! checks each piece as it passes and keeps only what cannot be judged yet: the first
//! 1–3 bytes of a code point whose rest is still to come. That is enough to
//!
//! * fail fast: a byte that no continuation can make valid (a stray continuation byte,
//!   an overlong form, a surrogate, a value past U+10FFFF) is an error in the piece
//!   that carries it, not at the end of the message;
//! * call a message that ends inside a code point invalid ([`Utf8Validator::finish`]).
//!
//! Each piece goes through `simdutf8`'s `compat` validator (SIMD, chosen at run time),
//! whose `error_len` tells a valid-but-unfinished end from an invalid byte, as `std`'s
//! does; only a character split between pieces (≤ 4 bytes) goes through `std`. Measured
//! with `examples/utf8_throughput.rs`, `compat` was as fast as `basic` plus a separate
//! check of the piece's last bytes, and faster on small messages; `std` is several times
//! slower on non-ASCII text.
//! Masked client bytes are first checked for ASCII in place (eight bytes at a time, the
//! mask applied on the fly); anything else is unmasked into a small stack block and
//! validated ([`MaskedText`]). What the relay forwards is never touched. Nothing here
//! allocates.

/// Bytes unmasked per block: a stack buffer, large enough that the per-call cost of the
/// SIMD validator is spread over many bytes.
const BLOCK: usize = 4096;

/// The block for short pieces, so a small message does not pay for clearing 4 KiB.
const SMALL_BLOCK: usize = 256;

/// A text message that is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8")]
pub struct InvalidUtf8;

/// Validates one text message fed in pieces of any size.
///
/// ```
/// use wsgate::relay::Utf8Validator;
///
/// let euro = "€".as_bytes(); // e2 82 ac
/// let mut v = Utf8Validator::new();
/// assert!(v.feed(&euro[..1]).is_ok());
/// assert!(v.feed(&euro[1..]).is_ok());
/// assert!(v.finish().is_ok());
///
/// // 0xe2 0x28 can never be completed: refused as soon as the 0x28 arrives.
/// let mut v = Utf8Validator::new();
/// assert!(v.feed(&[0xe2]).is_ok());
/// assert!(v.feed(&[0x28]).is_err());
/// ```
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    /// The start of a code point whose remaining bytes have not arrived yet.
    carry: [u8; 4],
    carry_len: u8,
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next bytes of the message. Fails as soon as the message so far can no
    /// longer be the start of valid UTF-8.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InvalidUtf8> {
        if self.carry_len > 0 {
            let have = usize::from(self.carry_len);
            let need = sequence_len(self.carry[0]);
            let take = need.saturating_sub(have).min(bytes.len());
            self.carry[have..have + take].copy_from_slice(&bytes[..take]);
            let filled = have + take;
            match std::str::from_utf8(&self.carry[..filled]) {
                Ok(_) => {
                    self.carry_len = 0;
                    bytes = &bytes[take..];
                }
                // Still unfinished: every byte given went into the carry.
                Err(e) if e.error_len().is_none() => {
                    self.carry_len = filled as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
        }
        // `error_len() == None`: the bytes end inside a character that may still be
        // completed; those 1-3 bytes are kept for the next piece.
        match simdutf8::compat::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// The message ended: fails if it ended inside a code point. Ready for the next
    /// message either way.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let unfinished = self.carry_len > 0;
        self.carry_len = 0;
        if unfinished {
            Err(InvalidUtf8)
        } else {
            Ok(())
        }
    }

    /// Forgets the current message (it was dropped, not finished).
    pub fn reset(&mut self) {
        self.carry_len = 0;
    }
}

/// Length of the sequence a lead byte announces (1 for anything that is not a lead byte
/// of a multi-byte sequence; the validator judges those).
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

/// A [`Utf8Validator`] for frames from clients: payload bytes arrive masked with the
/// frame's key, and are unmasked into a stack block to be checked.
#[derive(Debug, Clone, Default)]
pub struct MaskedText {
    /// The message being validated.
    pub validator: Utf8Validator,
    key: [u8; 4],
    /// Payload bytes of the current frame seen so far, modulo 4.
    offset: usize,
}

impl MaskedText {
    /// A new frame of the message starts, masked with `key` (all zero: not masked).
    pub fn start_frame(&mut self, key: [u8; 4]) {
        self.key = key;
        self.offset = 0;
    }

    /// Checks the next payload bytes of the current frame, as they are on the wire.
    pub fn feed(&mut self, wire: &[u8]) -> Result<(), InvalidUtf8> {
        if self.key == [0; 4] {
            return self.validator.feed(wire);
        }
        let ascii = self.validator.carry_len == 0 && masked_ascii(wire, self.key, self.offset);
        let result = if ascii {
            // Most text is ASCII: judged in place, nothing unmasked or copied.
            Ok(())
        } else if wire.len() <= SMALL_BLOCK {
            self.feed_blocks::<SMALL_BLOCK>(wire)
        } else {
            self.feed_blocks::<BLOCK>(wire)
        };
        self.offset = (self.offset + wire.len()) % 4;
        result
    }

    /// Unmasks `wire` into a stack block of `N` bytes at a time and validates each.
    fn feed_blocks<const N: usize>(&mut self, wire: &[u8]) -> Result<(), InvalidUtf8> {
        let mut block = [0u8; N];
        let mut offset = self.offset;
        for piece in wire.chunks(N) {
            let plain = &mut block[..piece.len()];
            unmask(plain, piece, self.key, offset);
            offset = (offset + piece.len()) % 4;
            self.validator.feed(plain)?;
        }
        Ok(())
    }
}

/// Whether `wire`, unmasked with `key` from `offset`, is all ASCII: no byte has its top
/// bit set. Eight bytes at a time, no copy.
fn masked_ascii(wire: &[u8], key: [u8; 4], offset: usize) -> bool {
    let k = rotated_key(key, offset);
    let kw = u64::from_ne_bytes(k);
    let mut chunks = wire.chunks_exact(8);
    let mut seen = 0u64;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        seen |= u64::from_ne_bytes(w) ^ kw;
    }
    for (b, k) in chunks.remainder().iter().zip(k) {
        seen |= u64::from(b ^ k);
    }
    seen & 0x8080_8080_8080_8080 == 0
}

/// The 4-byte key repeated over 8 bytes, starting at payload position `offset`.
fn rotated_key(key: [u8; 4], offset: usize) -> [u8; 8] {
    let mut k = [0u8; 8];
    for (i, b) in k.iter_mut().enumerate() {
        *b = key[(offset + i) % 4];
    }
    k
}

/// `dst = src ^ key`, the key applied from payload position `offset` (mod 4).
fn unmask(dst: &mut [u8], src: &[u8], key: [u8; 4], offset: usize) {
    let k = u64::from_ne_bytes(rotated_key(key, offset));
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        let mut w = [0u8; 8];
        w.copy_from_slice(s);
        d.copy_from_slice(&(u64::from_ne_bytes(w) ^ k).to_ne_bytes());
    }
    let k = k.to_ne_bytes();
    for (i, (d, s)) in d.into_remainder().iter_mut().zip(s.remainder()).enumerate() {
        *d = s ^ k[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict_in_pieces(bytes: &[u8], cuts: &[usize]) -> bool {
        let mut v = Utf8Validator::new();
        let mut from = 0;
        for &c in cuts.iter().chain([&bytes.len()]) {
            let c = c.clamp(from, bytes.len());
            if v.feed(&bytes[from..c]).is_err() {
                return false;
            }
            from = c;
        }
        v.finish().is_ok()
    }

    #[test]
    fn every_split_of_known_cases_agrees_with_std() {
        let cases: [&[u8]; 12] = [
            "héllo wörld €𝄞".as_bytes(),
            b"\xf0\x9f\x98\x80",
            b"\xed\xa0\x80",     // surrogate
            b"\xf4\x90\x80\x80", // past U+10FFFF
            b"\xc0\xaf",         // overlong
            b"\xe0\x80\xaf",     // overlong
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            b"ok \xff",
            b"\xe2\x82", // truncated at the end
            b"\x80",     // stray continuation
            b"\xf0\x9f\x98\x80\x80",
            b"",
        ];
        for bytes in cases {
            let want = std::str::from_utf8(bytes).is_ok();
            for a in 0..=bytes.len() {
                for b in a..=bytes.len() {
                    assert_eq!(
                        verdict_in_pieces(bytes, &[a, b]),
                        want,
                        "{bytes:x?} cut at {a},{b}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_byte_no_continuation_can_save_fails_in_its_own_piece() {
        for (start, bad) in [
            (&b"\xe2"[..], &b"("[..]),
            (b"\xed", b"\xa0"),
            (b"\xf4", b"\x90"),
            (b"abc", b"\xff"),
            (b"\xf0\x9f", b"\x98a"),
        ] {
            let mut v = Utf8Validator::new();
            assert!(v.feed(start).is_ok(), "{start:x?}");
            assert!(v.feed(bad).is_err(), "{start:x?} then {bad:x?}");
        }
    }

    #[test]
    fn masked_pieces_unmask_from_their_offset() {
        let text = "ünïcödé 𝄞 text that spans several masks".as_bytes();
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let wire: Vec<u8> = text
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        for cut in 0..=wire.len() {
            let mut m = MaskedText::default();
            m.start_frame(key);
            assert!(m.feed(&wire[..cut]).is_ok());
            assert!(m.feed(&wire[cut..]).is_ok());
            assert!(m.validator.finish().is_ok(), "cut at {cut}");
        }
        // ASCII after an unfinished character must not take the in-place ASCII path.
        let mut m = MaskedText::default();
        m.start_frame(key);
        assert!(m.feed(&[0xe2 ^ key[0]]).is_ok());
        assert!(m.feed(&[b'(' ^ key[1], b'a' ^ key[2]]).is_err());
        let mut bad = wire.clone();
        bad[1] ^= 0x40; // ü's continuation byte becomes a lead byte
        let mut m = MaskedText::default();
        m.start_frame(key);
        assert!(m.feed(&bad).is_err());
    }
}
