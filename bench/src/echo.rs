//! The echo backend: answers the upgrade, then streams every frame back unmasked.
//!
//! It never holds a whole message: each chunk read is unmasked into the output buffer
//! and written before the next read, so a 64 KiB message costs one pass over its bytes
//! and no allocation (the two buffers are per connection and reused).

use std::io;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::ws::{self, OP_CLOSE, OP_PING, OP_PONG};

/// Read buffer per connection (touched only as far as reads fill it).
const BUF: usize = 64 << 10;

/// Serves echo connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(async move {
                    let _ = echo(s).await;
                });
            }
            Err(_) => {
                // Out of descriptors or a transient error: back off briefly.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
}

async fn echo(mut s: TcpStream) -> io::Result<()> {
    let rest = ws::server_handshake(&mut s).await?;
    let mut inb = vec![0u8; BUF];
    inb[..rest.len()].copy_from_slice(&rest);
    let mut filled = rest.len();
    let mut out: Vec<u8> = Vec::new();
    // The frame being streamed: payload bytes still to come, its key, key offset.
    let mut remaining: u64 = 0;
    let mut key = [0u8; 4];
    let mut off = 0usize;
    let mut in_close = false;
    loop {
        let mut pos = 0;
        let mut closed = false;
        loop {
            if remaining > 0 {
                let take = (remaining as usize).min(filled - pos);
                if take == 0 {
                    break;
                }
                let chunk = &mut inb[pos..pos + take];
                ws::apply_mask(chunk, key, off);
                out.extend_from_slice(chunk);
                off += take;
                pos += take;
                remaining -= take as u64;
                if remaining > 0 {
                    break;
                }
                if in_close {
                    closed = true;
                    break;
                }
                continue;
            }
            let Some(h) = ws::parse_header(&inb[pos..filled]) else {
                break;
            };
            pos += h.header_len;
            let op = if h.opcode == OP_PING {
                OP_PONG
            } else {
                h.opcode
            };
            ws::put_header(&mut out, op, h.len as usize, None);
            remaining = h.len;
            key = h.mask.unwrap_or([0; 4]);
            off = 0;
            in_close = h.opcode == OP_CLOSE;
            if in_close && remaining == 0 {
                closed = true;
                break;
            }
        }
        inb.copy_within(pos..filled, 0);
        filled -= pos;
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
        if closed {
            let _ = s.shutdown().await;
            return Ok(());
        }
        if filled == inb.len() {
            return Err(io::Error::other("frame header larger than the buffer"));
        }
        let n = s.read(&mut inb[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
    }
}
