use super::*;

impl Session {
    /// Takes a new connection: clean start or resumption, link, CONNACK, redelivery.
    pub(super) async fn accept(&mut self, mut a: Box<Attach>) -> Option<Live> {
        let resumed = self.started && !a.req.clean_start;
        // A reconnect cancels a will that waits for its delay.
        self.pending_will = None;
        if self.started && a.req.clean_start {
            self.reset();
        }
        if a.req.session_expiry > 0 && self.expiry == 0 {
            if let Some(id) = &self.identity {
                if !self
                    .shared
                    .registry
                    .make_room(id, &self.key, self.shared.cfg.max_sessions_per_client)
                {
                    connect::refuse_attach(&mut a, reason::QUOTA, self.m()).await;
                    return None;
                }
            }
        }
        if self.link.is_none() {
            let router = self.shared.router.clone();
            let built = tokio::task::spawn_blocking(move || router.link())
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
            match built {
                Ok(l) => self.link = Some(l),
                Err(e) => {
                    tracing::error!(client = %self.client(), error = %e, "the router refused a link");
                    connect::refuse_attach(&mut a, reason::UNAVAILABLE, self.m()).await;
                    return None;
                }
            }
        }
        if self.direct {
            // The restored session's subscriptions go to its new link now.
            let subscribes = self.subs.router_subscribes();
            self.to_router.extend(subscribes);
        }
        self.direct_seen.clear();
        self.started = true;
        self.expiry = a.req.session_expiry;
        self.v5 = a.req.v5;
        self.transport = a.req.transport;
        self.live_will = a.req.will.clone();
        self.save(None);
        let Attach {
            req,
            peer,
            io,
            rbuf,
            guard,
        } = *a;
        self.shared
            .registry
            .update(&self.key, self.gen, req.cert_serial.clone(), self.expiry > 0, false);
        let (rd, wr) = tokio::io::split(io);
        let mut live = Live {
            rd,
            wr,
            rbuf,
            wbuf: BytesMut::with_capacity(64),
            aliases: HashMap::new(),
            out_aliases: Default::default(),
            last_rx: Instant::now(),
            req,
            peer,
            _guard: guard,
        };
        let props = codec::ConnAckProps {
            assigned_id: live.req.assigned.then_some(live.req.mqtt_client_id.as_str()),
            receive_max: self.shared.cfg.inflight_window,
            max_packet: self.shared.cfg.max_packet_size as u32,
            topic_alias_max: TOPIC_ALIAS_MAX,
            session_expiry: live.req.expiry_capped.then_some(self.expiry),
            server_keep_alive: live.req.server_keep_alive,
            shared_subs: true,
        };
        let before = live.wbuf.len();
        live.wbuf
            .extend_from_slice(&codec::encode_connack(0, resumed, live.req.v5, Some(&props)));
        if resumed {
            self.out.resend(&mut live.wbuf, live.req.v5, router::now_ms());
        }
        self.m().sent(&live.wbuf[before..]);
        if !resumed {
            self.in_qos2.clear();
        }
        Some(live)
    }

    /// Drops subscriptions, queued and in-flight messages (Clean Start on an existing session).
    pub(super) fn reset(&mut self) {
        // A restored session had nothing subscribed on a link yet.
        let on_router = !self.direct;
        if self.direct {
            self.direct = false;
            self.shared.durable.set_direct(&self.key, false);
        }
        self.forget_stored();
        let undo = self.subs.clear(on_router);
        self.to_router.extend(undo);
        self.out.clear();
        self.in_qos2.clear();
        // A catch-up read that runs now would bring back what was just dropped.
        self.catching_up = None;
        self.catch_up_again = false;
        self.recovered.clear();
    }
}
