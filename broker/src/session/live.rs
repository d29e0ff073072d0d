use super::persist::committed;
use super::*;

impl Session {
    /// The loop of a live connection.
    pub(super) async fn serve(&mut self, live: &mut Live) -> End {
        if let Err(e) = self.flush_router(true).await {
            return e;
        }
        if self.direct {
            // Subscribed on the link: the router delivers from here on.
            self.direct = false;
            self.shared.durable.set_direct(&self.key, false);
        }
        // Packets that arrived together with CONNECT.
        if let Err(e) = self.on_bytes(live).await {
            return e;
        }
        // Since when the device takes nothing: its socket accepts no byte of what waits, or
        // it acknowledges none of the QoS 1/2 messages it was sent. Past `stall_timeout` it
        // is disconnected (like a full queue: 5: 0x97), so a subscriber that stopped reading
        // costs only itself, early (a socket's buffers alone hold megabytes).
        let mut write_stall: Option<Instant> = None;
        let mut ack_stall: Option<Instant> = None;
        let mut acks = self.out.acks();
        loop {
            if let Err(e) = self.pump(live).await {
                return e;
            }
            if let Err(e) = self.sync_out().await {
                return e;
            }
            if live.wbuf.is_empty() {
                write_stall = None;
            } else if write_stall.is_none() {
                write_stall = Some(Instant::now());
            }
            // A device that reads (its socket took bytes lately) and still has a quarter of
            // its queue waiting slows the publishers to its filters (`pressure`) instead of
            // losing QoS 0 messages to a full queue.
            let reads = write_stall.is_none_or(|t| t.elapsed() < READING);
            let held = self.out.over_quarter() && reads;
            if let Some(r) = self.subs.reader() {
                r.queue(held);
            }
            if !self.out.unacknowledged() || self.out.acks() != acks {
                ack_stall = None;
                acks = self.out.acks();
            }
            if self.out.unacknowledged() && ack_stall.is_none() {
                ack_stall = Some(Instant::now());
            }
            let stall_deadline = [write_stall, ack_stall]
                .into_iter()
                .flatten()
                .min()
                .map(|t| t + self.shared.cfg.stall_timeout);
            // Checked here as well as in the select below: a busy connection (writes always
            // ready) would never let the timer branch win.
            if stall_deadline.is_some_and(|d| d <= Instant::now()) {
                return self.stalled();
            }
            let ka = live.req.keep_alive;
            let deadline = live.last_rx + Duration::from_millis(ka as u64 * 1500);
            let reading = live.wbuf.len() < 2 * WBUF_HIGH && self.held.len() < MAX_HELD;
            let step: Step = tokio::select! {
                biased;
                c = self.ctrl.recv() => match c {
                    Some(Control::Attach(a)) => Err(End::Takeover(a)),
                    Some(Control::Close(code)) => Err(End::Revoked(code)),
                    Some(Control::ShutDown) => Err(End::ShutDown),
                    Some(Control::Invalidate(ch)) => {
                        self.rights.invalidate(ch.as_deref());
                        Ok(())
                    }
                    Some(Control::Deliver(d)) => self.on_direct(*d, true).await,
                    Some(Control::Shared(d, filter)) => self.on_shared(*d, filter, true).await,
                    Some(Control::CatchUp) => self.catch_up().await,
                    Some(Control::Recovered(rows)) => self.on_recovered(rows, true).await,
                    None => Ok(()),
                },
                r = live.wr.write(&live.wbuf), if !live.wbuf.is_empty() => match r {
                    Ok(0) | Err(_) => Err(End::Abnormal("write failed".into())),
                    Ok(n) => {
                        Metrics::add(&self.m().bytes_out, n as u64);
                        let _ = live.wbuf.split_to(n);
                        write_stall = None;
                        Ok(())
                    }
                },
                ok = committed(&mut self.held) => {
                    match self.held.pop_front() {
                        Some((_, replies)) if ok => {
                            self.m().sent(&replies);
                            live.wbuf.extend_from_slice(&replies);
                            Ok(())
                        }
                        _ => Err(End::Abnormal("session store write failed".into())),
                    }
                }
                n = next_notification(&mut self.link) => self.on_link(n, true).await,
                r = live.rd.read_buf(&mut live.rbuf), if reading => match r {
                    Ok(0) => Err(End::Abnormal("closed by peer".into())),
                    Err(e) => Err(End::Abnormal(e.to_string())),
                    Ok(n) => {
                        Metrics::add(&self.m().bytes_in, n as u64);
                        live.last_rx = Instant::now();
                        self.on_bytes(live).await
                    }
                },
                _ = tokio::time::sleep_until(stall_deadline.unwrap_or(deadline)), if stall_deadline.is_some() => {
                    Err(self.stalled())
                }
                _ = tokio::time::sleep_until(deadline), if ka > 0 => {
                    if live.req.v5 {
                        Metrics::inc(&self.m().packets_out);
                        live.wbuf.extend_from_slice(&codec::encode_disconnect(reason::ended::KEEP_ALIVE));
                    }
                    Err(End::Abnormal("keep-alive timeout".into()))
                }
            };
            if let Err(e) = step {
                if let Some(r) = self.subs.reader() {
                    r.queue(false);
                }
                // Replies held for commits (acknowledgements of messages already accepted, and
                // a DISCONNECT queued behind them) go first, in order, once committed; then what
                // the session wrote last. Both bounded.
                if !self.held.is_empty() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.drain_held(live)).await;
                }
                if !live.wbuf.is_empty() {
                    let w = tokio::time::timeout(Duration::from_secs(1), live.wr.write_all(&live.wbuf)).await;
                    if matches!(w, Ok(Ok(()))) {
                        Metrics::add(&self.m().bytes_out, live.wbuf.len() as u64);
                    }
                    live.wbuf.clear();
                }
                return e;
            }
        }
    }
}

/// The next notification of a session's link (pending forever without a link).
pub(super) async fn next_notification(link: &mut Option<router::Link>) -> Result<Option<Notification>, ()> {
    match link.as_mut() {
        Some(l) => l.rx.next().await.map_err(|_| ()),
        None => std::future::pending().await,
    }
}

impl Session {
    /// The device took nothing for the stall timeout: counted, and its connection ends.
    fn stalled(&self) -> End {
        Metrics::inc(&self.m().disconnected_stalled);
        tracing::info!(client = %self.client(), "subscriber stalled: it took nothing for mqtt.stall_timeout_ms; disconnecting");
        End::Overflow
    }
}
