//! E-mail delivery of user notices (password reset) over SMTP, when configured.

use crate::config::SmtpConfig;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Sends notices through an SMTP relay. Sending happens in the background; failures are
/// logged (without the message body, which holds the reset token).
pub struct SmtpOutbox {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpOutbox {
    pub fn new(cfg: &SmtpConfig) -> Result<SmtpOutbox, String> {
        let from: Mailbox = cfg.from.parse().map_err(|e| format!("smtp.from: {e}"))?;
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host).port(cfg.port);
        if !cfg.username.is_empty() {
            b = b.credentials(Credentials::new(
                cfg.username.clone(),
                cfg.password.expose().to_string(),
            ));
        }
        Ok(SmtpOutbox {
            transport: b.build(),
            from,
        })
    }
}

impl mgmt::Outbox for SmtpOutbox {
    fn send(&self, to: &str, subject: &str, body: &str) {
        let to_box: Mailbox = match to.parse() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot e-mail an invalid address");
                return;
            }
        };
        let msg = match Message::builder()
            .from(self.from.clone())
            .to(to_box)
            .subject(subject)
            .body(body.to_string())
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build e-mail");
                return;
            }
        };
        let transport = self.transport.clone();
        let to = to.to_string();
        tokio::spawn(async move {
            match transport.send(msg).await {
                Ok(_) => tracing::info!(to = %to, "notice e-mailed"),
                Err(e) => tracing::warn!(to = %to, error = %e, "e-mail delivery failed"),
            }
        });
    }
}
