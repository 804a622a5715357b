//! One direction of a relay: read from one socket, forward whole frames to the other.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use wsgate_layers::ratelimit::MessageRateLimiter;

use super::{
    buffer,
    frame::{CloseSeen, ControlFrame, FrameScanner, ScanRules, Stop, Violation},
    stream::Stream,
};

/// What a pump tells the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// The source sent a close frame; it was forwarded.
    Closed(CloseSeen),
    /// The source broke the protocol; nothing from it is forwarded any more.
    Violation(Violation),
    /// The source is gone and the destination was shut down; the pump is done.
    Finished,
    /// Resume mode, backend-to-client pump: the backend vanished at a message boundary
    /// and nothing was sent to the client; the pump is parked.
    SourceLost,
    /// Resume mode, client-to-backend pump: writing to the backend failed; the pump is
    /// parked with the client's unforwarded bytes.
    DstLost,
    /// A [`Pump::detach`] reached its boundary; the pump is parked.
    Parked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Read,
    Write,
    WriteControl,
    Discard,
    Shutdown,
    Done,
    /// Stopped at a boundary for a backend switch: neither reads nor writes.
    Parked,
}

/// What to do once the scanned bytes are written.
#[derive(Debug, Clone, Copy)]
enum After {
    Continue,
    /// Drop this many bytes after the written ones, then scan on.
    Skip(usize),
    Close(CloseSeen),
    Violation(Violation),
    Boundary,
}

/// One direction's state: scanner, buffer and progress.
#[derive(Debug)]
pub(crate) struct Pump {
    scanner: FrameScanner,
    buf: Option<Box<[u8]>>,
    /// A `u32`, as is `inject_pos`: together they take one word of every pump instead
    /// of two (`server.buffer_size` is at most 16 MiB; a control frame, 131 bytes).
    buf_size: u32,
    /// `buf[write_pos..write_end]` is scanned and still to be written.
    write_pos: usize,
    write_end: usize,
    /// `buf[..filled]` holds bytes read; past `write_end` they are an incomplete header.
    filled: usize,
    after: After,
    state: State,
    /// Boxed, as is `queued_close`: a control frame is 132 bytes and is needed only for
    /// the moment wsgate injects one, so idle sockets do not carry the space.
    inject: Option<Box<ControlFrame>>,
    inject_pos: u32,
    /// The injected frame is a close: nothing is forwarded after it.
    inject_closes: bool,
    /// A close waiting for a half-written ping to finish.
    queued_close: Option<Box<ControlFrame>>,
    /// Close frame sent to the source's peer when the source vanishes without one
    /// (a reference: 8 bytes of every socket's task instead of 24).
    on_vanish: &'static (u16, &'static str),
    /// Whether frames written toward the destination must be masked.
    mask_to_dst: bool,
    /// The destination was left inside a frame ([`FrameScanner::cut`]): it gets a TCP
    /// shutdown instead of a close frame, which would land in that frame's payload.
    shut_dst: bool,
    /// The source reached EOF or failed.
    src_gone: bool,
    /// A close frame has been written to the destination.
    pub(crate) dst_closed: bool,
    /// The close frame the source sent, if any.
    pub(crate) src_close: Option<CloseSeen>,
    /// The other direction forwarded its source's close frame: with `src_close` too, the
    /// close handshake is complete and the relay ends once this pump finishes.
    pub(crate) peer_closed: bool,
    /// Bytes read from the source.
    pub(crate) bytes: u64,
    /// Bytes were read from the source since the relay last looked (idle detection).
    /// Flags, not counts: only "any" matters, and 16 bytes per pump are 32 per socket.
    pub(crate) activity: bool,
    /// Bytes were read from the source since the last keep-alive check (ping deadline).
    pub(crate) heard: bool,
    /// Resume mode: the backend side of this pump may be replaced, so losing it parks
    /// the pump instead of closing the client.
    resume: bool,
    /// Park at the next boundary (a planned backend switch).
    detach: bool,
}

impl Pump {
    /// A pump whose source's frames follow `rules`. `initial` holds bytes already read
    /// from the source (leftovers of the HTTP handshake).
    pub(crate) fn new(
        rules: ScanRules,
        limiter: Option<MessageRateLimiter>,
        buf_size: usize,
        initial: &[u8],
        on_vanish: &'static (u16, &'static str),
    ) -> Self {
        // Client-bound frames are unmasked, so the destination of a masked source is a
        // backend, which needs masked frames.
        let mask_to_dst = rules.masked;
        // A close frame is held back until whole, so a buffer must hold one.
        let buf_size = buf_size
            .max(initial.len())
            .max(super::frame::MAX_CONTROL_FRAME * 2);
        let buf_size = u32::try_from(buf_size).unwrap_or(u32::MAX);
        let mut pump = Self {
            scanner: FrameScanner::new(rules).with_limiter(limiter),
            buf: None,
            buf_size,
            write_pos: 0,
            write_end: 0,
            filled: 0,
            after: After::Continue,
            state: State::Read,
            inject: None,
            inject_pos: 0,
            inject_closes: false,
            queued_close: None,
            on_vanish,
            mask_to_dst,
            shut_dst: false,
            src_gone: false,
            dst_closed: false,
            src_close: None,
            peer_closed: false,
            bytes: 0,
            activity: false,
            heard: false,
            resume: false,
            detach: false,
        };
        if !initial.is_empty() {
            let mut buf = buffer::take(pump.buf_size as usize);
            buf[..initial.len()].copy_from_slice(initial);
            pump.buf = Some(buf);
            pump.took(initial.len());
        }
        pump
    }

    /// Counts on from `bytes` and `messages` (resume mode: earlier backends' traffic),
    /// so the relay keeps no totals of its own beside the pumps'.
    pub(crate) fn counted_from(mut self, bytes: u64, messages: u64) -> Self {
        self.bytes = bytes;
        self.scanner.messages = messages;
        self
    }

    /// Messages forwarded so far.
    pub(crate) fn messages(&self) -> u64 {
        self.scanner.messages
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Sends a close frame to the destination at the next frame boundary and forwards
    /// nothing after it. Ignored when the destination already has a close frame.
    pub(crate) fn close_dst(&mut self, code: u16, reason: &str) {
        if self.dst_closed || self.state == State::Done {
            return;
        }
        if self.inject.is_some() && self.inject_closes {
            return;
        }
        if self.scanner.cut() {
            self.dst_closed = true;
            self.shut_dst = true;
            return;
        }
        let close = Box::new(ControlFrame::close(code, reason, self.mask_to_dst));
        if self.inject.is_some() && self.inject_pos > 0 {
            // A ping is half written: the close follows it, never cuts into it.
            self.queued_close = Some(close);
            return;
        }
        self.inject = Some(close);
        self.inject_closes = true;
        self.inject_pos = 0;
        if !self.scanner.at_boundary() {
            self.scanner.stop_at_boundary();
        }
    }

    /// Sends a ping to the destination at the next frame boundary, then carries on.
    pub(crate) fn ping_dst(&mut self) {
        if self.dst_closed || self.inject.is_some() || self.state == State::Done {
            return;
        }
        self.inject = Some(Box::new(ControlFrame::ping(self.mask_to_dst)));
        self.inject_closes = false;
        self.inject_pos = 0;
        if !self.scanner.at_boundary() {
            self.scanner.stop_at_boundary();
        }
    }

    /// Resume mode: losing this pump's backend side parks it instead of closing.
    pub(crate) fn resumable(mut self) -> Self {
        self.resume = true;
        self
    }

    /// Parked: stopped at a boundary for a backend switch.
    pub(crate) fn is_parked(&self) -> bool {
        self.state == State::Parked
    }

    /// Asks the pump to park at its next boundary: a frame boundary from the client
    /// (the rest of a message is dropped after the switch), a message boundary toward
    /// the client (a message cannot be finished by another backend).
    pub(crate) fn detach(&mut self) {
        self.detach = true;
        if !self.scanner.at_boundary() {
            self.scanner.stop_at_boundary();
        }
    }

    /// Cancels a [`detach`](Self::detach): something else (a close) happened first.
    pub(crate) fn undetach(&mut self) {
        self.detach = false;
        if self.state == State::Parked && !self.src_gone {
            self.state = State::Read;
        }
    }

    fn detach_ready(&self) -> bool {
        // Toward the client (unmasked source) only a message boundary will do.
        self.mask_to_dst || !self.scanner.in_message()
    }

    /// Backend-to-client pump in resume mode: the backend vanished. Parks when the
    /// client has seen whole messages only and nothing closes it yet.
    fn park_on_vanish(&mut self) -> bool {
        if !self.resume || self.mask_to_dst {
            return false;
        }
        let clean = !self.dst_closed
            && self.inject.is_none()
            && self.scanner.at_boundary()
            && !self.scanner.in_message();
        if clean {
            self.src_gone = true;
            self.filled = 0;
            self.state = State::Parked;
        }
        clean
    }

    /// The relay decided not to switch backends after [`Event::SourceLost`]: close the
    /// client as usual (1012).
    pub(crate) fn give_up_parked(&mut self) {
        self.resume = false;
        self.detach = false;
        if self.state == State::Parked && self.src_gone {
            self.vanished();
        }
    }

    /// Client-to-backend pump: stops for a backend switch, keeping the client's bytes
    /// not yet scanned. Bytes already scanned toward the dead backend are dropped (their
    /// message is lost). False when the client was closing or broke the protocol:
    /// then there is nothing to carry over.
    pub(crate) fn park_client_side(&mut self) -> bool {
        if !self.mask_to_dst || self.dst_closed || self.src_close.is_some() || self.src_gone {
            return false;
        }
        match self.state {
            State::Read | State::Parked => {}
            State::Write => {
                let from = match self.after {
                    After::Continue | After::Boundary => self.write_end,
                    After::Skip(k) => (self.write_end + k).min(self.filled),
                    After::Close(_) | After::Violation(_) => return false,
                };
                if let Some(b) = self.buf.as_mut() {
                    b.copy_within(from..self.filled, 0);
                }
                self.filled -= from;
                self.write_pos = 0;
                self.write_end = 0;
            }
            State::WriteControl | State::Discard | State::Shutdown | State::Done => return false,
        }
        if self.scanner.in_close() {
            return false;
        }
        self.state = State::Parked;
        true
    }

    /// Client-to-backend pump, parked by [`park_client_side`](Self::park_client_side):
    /// carries on toward a new backend, dropping the rest of the message the old one
    /// got part of, so the new one never sees a continuation without its start.
    pub(crate) fn reattach(&mut self) {
        self.scanner.abandon_message();
        self.detach = false;
        self.inject = None;
        self.queued_close = None;
        self.dst_closed = false;
        self.after = After::Continue;
        self.write_pos = 0;
        self.write_end = 0;
        if self.filled > 0 && self.buf.is_some() {
            self.rescan();
        } else {
            self.filled = 0;
            self.state = State::Read;
        }
    }

    /// Messages dropped by the message-rate limit.
    pub(crate) fn dropped(&self) -> u64 {
        self.scanner.dropped()
    }

    /// Accounts `n` new bytes at `buf[filled..]` and scans them.
    fn took(&mut self, n: usize) {
        self.filled += n;
        self.bytes += n as u64;
        self.activity = true;
        self.heard = true;
        self.rescan();
    }

    /// Scans `buf[..filled]` and sets up the write of what may be forwarded.
    fn rescan(&mut self) {
        let buf = match &self.buf {
            Some(b) => b,
            None => return,
        };
        let scan = self.scanner.scan(&buf[..self.filled]);
        self.write_pos = 0;
        self.write_end = scan.forward;
        self.after = match scan.stop {
            Stop::More => After::Continue,
            Stop::Close(c) => After::Close(c),
            Stop::Violation(v) => After::Violation(v),
            Stop::Boundary => After::Boundary,
            Stop::Skip(k) => After::Skip(k),
        };
        self.state = State::Write;
    }

    fn release_if_empty(&mut self, lends: bool) {
        if lends && self.filled == 0 {
            if let Some(b) = self.buf.take() {
                buffer::give(b);
            }
        }
    }

    /// Drives this direction until it needs to wait or has something to report.
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Stream,
        dst: &mut Stream,
    ) -> Poll<Event> {
        loop {
            match self.state {
                State::Read => {
                    if self.inject.is_some() && self.scanner.at_boundary() {
                        self.state = State::WriteControl;
                        continue;
                    }
                    if self.detach && self.scanner.at_boundary() {
                        if self.detach_ready() {
                            self.state = State::Parked;
                            return Poll::Ready(Event::Parked);
                        }
                        // Mid-message toward the client: on to the message's end.
                        self.scanner.stop_at_boundary();
                        if self.filled > 0 {
                            self.rescan();
                            continue;
                        }
                    }
                    match ready!(self.poll_read(cx, src)) {
                        Ok(0) | Err(_) => {
                            if self.park_on_vanish() {
                                return Poll::Ready(Event::SourceLost);
                            }
                            self.vanished()
                        }
                        Ok(n) => self.took(n),
                    }
                }
                State::Write => {
                    let buf = match &self.buf {
                        Some(b) => b,
                        None => {
                            self.state = State::Read;
                            continue;
                        }
                    };
                    while self.write_pos < self.write_end {
                        match ready!(Pin::new(&mut *dst)
                            .poll_write(cx, &buf[self.write_pos..self.write_end]))
                        {
                            Ok(0) | Err(_) => return Poll::Ready(self.dst_gone()),
                            Ok(n) => self.write_pos += n,
                        }
                    }
                    if ready!(Pin::new(&mut *dst).poll_flush(cx)).is_err() {
                        return Poll::Ready(self.dst_gone());
                    }
                    match self.after {
                        After::Continue => {
                            // Keep the incomplete header for the next read.
                            let carry = self.filled - self.write_end;
                            if let Some(b) = self.buf.as_mut() {
                                b.copy_within(self.write_end..self.filled, 0);
                            }
                            self.filled = carry;
                            self.write_end = 0;
                            self.state = State::Read;
                        }
                        After::Boundary => {
                            // Keep what follows the boundary: after an injected ping it
                            // is forwarded (a close discards it anyway).
                            if let Some(b) = self.buf.as_mut() {
                                b.copy_within(self.write_end..self.filled, 0);
                            }
                            self.filled -= self.write_end;
                            self.write_end = 0;
                            self.state = State::Read;
                        }
                        After::Skip(k) => {
                            let from = (self.write_end + k).min(self.filled);
                            if let Some(b) = self.buf.as_mut() {
                                b.copy_within(from..self.filled, 0);
                            }
                            self.filled -= from;
                            self.write_end = 0;
                            if self.filled == 0 {
                                self.state = State::Read;
                            } else {
                                self.rescan();
                            }
                        }
                        After::Close(seen) => {
                            self.filled = 0;
                            self.src_close = Some(seen);
                            self.dst_closed = true;
                            self.state = State::Discard;
                            return Poll::Ready(Event::Closed(seen));
                        }
                        After::Violation(v) => {
                            self.filled = 0;
                            self.state = State::Discard;
                            return Poll::Ready(Event::Violation(v));
                        }
                    }
                }
                State::WriteControl => {
                    let Some(frame) = self.inject.as_ref() else {
                        self.state = State::Discard;
                        continue;
                    };
                    let bytes = frame.as_bytes();
                    while (self.inject_pos as usize) < bytes.len() {
                        let rest = &bytes[self.inject_pos as usize..];
                        match ready!(Pin::new(&mut *dst).poll_write(cx, rest)) {
                            Ok(0) | Err(_) => return Poll::Ready(self.dst_gone()),
                            // At most the rest of the frame (131 bytes): fits.
                            Ok(n) => self.inject_pos += n as u32,
                        }
                    }
                    if ready!(Pin::new(&mut *dst).poll_flush(cx)).is_err() {
                        return Poll::Ready(self.dst_gone());
                    }
                    self.inject = None;
                    if let Some(close) = self.queued_close.take() {
                        self.inject = Some(close);
                        self.inject_closes = true;
                        self.inject_pos = 0;
                        continue;
                    }
                    if self.inject_closes {
                        self.dst_closed = true;
                        self.filled = 0;
                        self.state = if self.src_gone {
                            State::Shutdown
                        } else {
                            State::Discard
                        };
                    } else if self.src_gone {
                        self.state = State::Shutdown;
                    } else if self.filled > 0 {
                        // Bytes held back at the boundary go on now.
                        self.rescan();
                    } else {
                        self.state = State::Read;
                    }
                }
                State::Discard => {
                    if self.inject.is_some() && !self.dst_closed {
                        self.state = State::WriteControl;
                        continue;
                    }
                    if self.shut_dst {
                        // Best effort, as in `Shutdown`; the source is still read to its end.
                        let _ = ready!(Pin::new(&mut *dst).poll_shutdown(cx));
                        self.shut_dst = false;
                    }
                    self.filled = 0;
                    match ready!(self.poll_read(cx, src)) {
                        Ok(0) | Err(_) => self.vanished(),
                        Ok(_) => {}
                    }
                }
                State::Shutdown => {
                    // After a complete close handshake the relay drops both sockets as
                    // soon as this pump finishes, and closing a plain TCP socket sends the
                    // FIN anyway: a shutdown first would be a wasted system call. TLS
                    // still gets its close_notify.
                    let handshake_done = self.src_close.is_some() && self.peer_closed;
                    if !(handshake_done && matches!(dst, Stream::Tcp(_))) {
                        // The peer may already be gone; shutting down is best effort.
                        let _ = ready!(Pin::new(&mut *dst).poll_shutdown(cx));
                    }
                    self.state = State::Done;
                    if let Some(b) = self.buf.take() {
                        buffer::give(b);
                    }
                    return Poll::Ready(Event::Finished);
                }
                State::Done | State::Parked => return Poll::Pending,
            }
        }
    }

    /// The source ended (EOF or error): tell the destination if nobody has, then shut it.
    fn vanished(&mut self) {
        self.src_gone = true;
        self.filled = 0;
        // Mid-frame, a close frame would land inside the frame's payload and corrupt it;
        // then the destination only gets the shutdown.
        if !self.dst_closed && self.scanner.at_boundary() {
            if !(self.inject.is_some() && self.inject_closes) {
                let (code, reason) = *self.on_vanish;
                self.inject = Some(Box::new(ControlFrame::close(
                    code,
                    reason,
                    self.mask_to_dst,
                )));
                self.inject_closes = true;
                self.inject_pos = 0;
            }
            self.state = State::WriteControl;
        } else {
            self.state = State::Shutdown;
        }
    }

    /// Writing to the destination failed: it is gone, nothing more can go there.
    fn dst_gone(&mut self) -> Event {
        if self.resume && self.mask_to_dst && self.park_client_side() {
            return Event::DstLost;
        }
        self.state = State::Done;
        self.filled = 0;
        if let Some(b) = self.buf.take() {
            buffer::give(b);
        }
        Event::Finished
    }

    /// Reads from `src` into the buffer after `filled`, taking a buffer only once the
    /// socket is readable and giving it back when the read would block with nothing held.
    fn poll_read(&mut self, cx: &mut Context<'_>, src: &mut Stream) -> Poll<io::Result<usize>> {
        let lends = src.lends_buffers();
        if self.buf.is_none() {
            if lends {
                ready!(src.poll_read_ready(cx))?;
            }
            self.buf = Some(buffer::take(self.buf_size as usize));
        }
        let Some(buf) = self.buf.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::OutOfMemory.into()));
        };
        let mut rb = ReadBuf::new(&mut buf[self.filled..]);
        match Pin::new(src).poll_read(cx, &mut rb) {
            Poll::Pending => {
                self.release_if_empty(lends);
                Poll::Pending
            }
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            buffer::give(b);
        }
    }
}
