//! The login's second factor (issue 20, item 2). After a right password an
//! enrolled account gets a half-logged-in session (stage `code`) that
//! serves nothing but the code page; an account whose role requires a
//! second factor and has none gets one for the enrolment page only (stage
//! `enrol`). A right code (or unused recovery code) replaces it with a
//! full session under a new token. Wrong codes count toward the same
//! per-source and untrusted-network brakes as wrong passwords, and are
//! audited; codes and secrets never reach a log line or an audit row.

use super::*;

use crate::accounts::recovery;
use crate::accounts::totp::Secret;
use crate::storage::OperatorRow;

use super::second_factor_pages as sf_pages;

/// How long a half-logged-in session lives: time to open the app (or
/// scan the QR code) and type the code.
const STAGED_TTL_SECS: u64 = 600;
/// The issuer an authenticator app lists the account under.
const ISSUER: &str = "vpnnat center";

/// The page a session at `stage` is sent to.
pub(super) fn step_page(stage: SessionStage) -> &'static str {
    match stage {
        SessionStage::Enrol => "/totp/enrol",
        SessionStage::Code => "/login/code",
        SessionStage::Full => "/",
    }
}

/// The QR code of `text` as an `<svg>` element.
fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(220, 220)
        .build();
    // The XML declaration is for files, not for SVG inside HTML.
    svg.find("<svg").and_then(|i| svg.get(i..)).map(str::to_owned)
}

impl<G: GatewayCommands + 'static, R: RouterCommands + 'static> Ui<G, R> {
    /// After a right password: a full session, or the second factor's
    /// half-logged-in one. The password's `attempt` is taken back off the
    /// brakes only with a full session: until its last factor is right a
    /// login counts as failed, or someone who knows the password could
    /// wipe the count of their wrong codes with it again and again.
    pub(super) fn after_password(
        &self,
        row: &OperatorRow,
        operator: &str,
        peer: SocketAddr,
        attempt: vpnnat_proto::throttle::Attempt,
        now: u64,
    ) -> Response<Body> {
        let stage = if row.second_factor {
            SessionStage::Code
        } else if self.settings.totp_required_roles.contains(&row.role) {
            SessionStage::Enrol
        } else {
            if let Ok(mut t) = self.throttle.lock() {
                t.passed(attempt);
            }
            return self.full_session(&row.name, operator, peer, now, "");
        };
        let token = match self.new_session(operator, &row.name, stage, STAGED_TTL_SECS, now) {
            Ok(t) => t,
            Err(e) => return text(500, e),
        };
        let next = match stage {
            SessionStage::Enrol => "enrolment of a second factor next",
            _ => "second factor next",
        };
        log::info!("{operator} from {peer}: password right, {next}");
        let who = Actor::new(operator, peer.ip().to_string());
        self.center.audit(
            now,
            &who,
            "login_password",
            None,
            None,
            &format!("password right; {next}"),
        );
        with_cookie(redirect(step_page(stage)), &token, STAGED_TTL_SECS)
    }

    /// `GET /login/code`.
    pub(super) fn code_form(&self, s: &Session, msg: &str) -> Response<Body> {
        match s.stage {
            SessionStage::Code => html(200, sf_pages::code(msg, &csrf_token(&s.token))),
            other => redirect(step_page(other)),
        }
    }

    /// The answer to a throttled login step from `peer` (`what`: "operator
    /// login", "second factor"), a 429 with Retry-After. The first refusal
    /// of each wait per address is logged and audited; the repeats only at
    /// debug: a flood of guesses must not write a line, let alone an
    /// append-only row, each.
    pub(super) fn throttled_login(
        &self,
        peer: SocketAddr,
        who: &Actor,
        t: vpnnat_proto::throttle::Throttled,
        now: u64,
        what: &str,
        page: String,
    ) -> Response<Body> {
        let first = self
            .throttle
            .lock()
            .map(|mut th| th.refused(peer.ip(), &t, now))
            .unwrap_or(true);
        if first {
            log::warn!("{what} from {peer} refused: {t}");
            self.center
                .audit(now, who, "login_throttled", None, None, &t.to_string());
        } else {
            log::debug!("{what} from {peer} refused again: {t}");
        }
        let mut r = html(429, page);
        if let Ok(v) = HeaderValue::from_str(&t.retry_after_secs.to_string()) {
            r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
        }
        r
    }

    /// Admits one second-factor attempt from `peer` (counted as a failure
    /// until it turns out right), or the refusal to send.
    fn begin_attempt(
        &self,
        peer: SocketAddr,
        who: &Actor,
        now: u64,
        page: impl FnOnce() -> String,
    ) -> Result<vpnnat_proto::throttle::Attempt, Box<Response<Body>>> {
        let trusted = self.trusted(peer);
        let admitted = self.throttle.lock().ok().map(|mut t| t.begin(peer.ip(), trusted, now));
        match admitted {
            Some(Ok(a)) => Ok(a),
            Some(Err(t)) => Err(Box::new(self.throttled_login(
                peer,
                who,
                t,
                now,
                "second factor",
                page(),
            ))),
            None => Err(Box::new(text(500, "login throttle unavailable"))),
        }
    }

    /// A wrong code: audited (why, never the code), and the brake it may
    /// have set.
    fn failed_code(
        &self,
        who: &Actor,
        peer: SocketAddr,
        attempt: vpnnat_proto::throttle::Attempt,
        why: &str,
        now: u64,
    ) -> Option<String> {
        log::warn!("failed second factor of {} from {peer}: {why}", who.who);
        self.center
            .audit(now, who, "login_failed_second_factor", None, None, why);
        attempt.locks.map(|t| {
            log::warn!("operator logins locked: {t}");
            self.center.audit(now, who, "login_locked", None, None, &t.to_string());
            format!(" Login refused: {t}.")
        })
    }

    /// `POST /login/code`: the TOTP code or a recovery code of a session
    /// at stage `code`.
    pub(super) async fn second_factor(&self, s: &Session, body: &[u8], peer: SocketAddr) -> Response<Body> {
        if s.stage != SessionStage::Code {
            return redirect(step_page(s.stage));
        }
        let Some(name) = s.account.as_deref() else {
            return text(400, "no account");
        };
        let code = zeroize::Zeroizing::new(form_field(body, "code").unwrap_or_default());
        let now = unix_now();
        let who = Actor::new(s.label.clone(), peer.ip().to_string());
        let csrf = csrf_token(&s.token);
        let attempt = match self.begin_attempt(peer, &who, now, || sf_pages::code("Too many wrong codes.", &csrf)) {
            Ok(a) => a,
            Err(r) => return *r,
        };
        match self.check_code(name, code.trim()) {
            Ok(how) => {
                if let Ok(mut t) = self.throttle.lock() {
                    t.passed(attempt);
                }
                if let Ok(mut st) = self.center.store() {
                    if let Err(e) = st.delete_session(&token_hash(&s.token)) {
                        log::warn!("second factor: {e}");
                    }
                }
                self.full_session(name, &s.label, peer, now, &how)
            }
            Err(why) => {
                let locked = self.failed_code(&who, peer, attempt, &why, now).unwrap_or_default();
                html(401, sf_pages::code(&format!("Wrong code.{locked}"), &csrf))
            }
        }
    }

    /// Checks a code of `name` and uses it up: how it logged in (for the
    /// audit row), or why not.
    fn check_code(&self, name: &str, code: &str) -> Result<String, String> {
        let mut st = self.center.store().map_err(|e| e.to_string())?;
        if recovery::looks_like_recovery(code) {
            let used = st
                .use_recovery_code(name, &recovery::hash(code), unix_now())
                .map_err(|e| e.to_string())?;
            if !used {
                return Err("wrong or used recovery code".into());
            }
            let left = st.recovery_codes_left(name).map_err(|e| e.to_string())?;
            return Ok(format!(" (second factor: a recovery code; {left} left)"));
        }
        let row = st
            .operator_totp(name)
            .map_err(|e| e.to_string())?
            .ok_or("no second factor enrolled (reset meanwhile)")?;
        let secret = Secret::from_base32(&row.secret).ok_or("the stored secret is unreadable")?;
        let step = secret
            .verify(code, self.settings.clock.now(), row.last_step)
            .map_err(|e| e.to_string())?;
        // The step is taken in the database, conditionally: the same code
        // at two centerds at once is accepted once.
        if !st.use_totp_step(name, step).map_err(|e| e.to_string())? {
            return Err(crate::accounts::totp::CodeError::Replayed.to_string());
        }
        Ok(" (second factor: TOTP)".into())
    }

    /// The secret on offer to this session's enrolment (made and kept in
    /// the session's row on the first look).
    fn pending_secret(&self, s: &Session) -> Result<Secret, String> {
        let th = token_hash(&s.token);
        let mut st = self.center.store().map_err(|e| e.to_string())?;
        if let Some(p) = st.pending_totp(&th).map_err(|e| e.to_string())? {
            if let Some(secret) = Secret::from_base32(&p) {
                return Ok(secret);
            }
        }
        let secret = Secret::generate(&self.rng).map_err(|_| "random number generator failed".to_owned())?;
        st.set_pending_totp(&th, &secret.to_base32())
            .map_err(|e| e.to_string())?;
        Ok(secret)
    }

    /// Whether `name` is enrolled.
    fn enrolled(&self, name: &str) -> Result<bool, String> {
        let st = self.center.reads().map_err(|e| e.to_string())?;
        Ok(st.operator_totp(name).map_err(|e| e.to_string())?.is_some())
    }

    /// `GET /totp/enrol`: the QR code of a new secret (a session at stage
    /// `enrol`, or a full session enrolling of its own accord).
    pub(super) fn enrol_form(&self, s: &Session, msg: &str) -> Response<Body> {
        if s.stage == SessionStage::Code {
            return redirect(step_page(s.stage));
        }
        let Some(name) = s.account.as_deref() else {
            return html(
                400,
                sf_pages::nothing_to_enrol("This session has no account: log in with your operator name to enrol."),
            );
        };
        match self.enrolled(name) {
            Ok(false) => {}
            Ok(true) => {
                return html(
                    200,
                    sf_pages::nothing_to_enrol(
                        "Your account has a second factor already. An admin can reset it \
                         (centerd operator totp-reset NAME).",
                    ),
                )
            }
            Err(e) => return text(500, format!("cannot read the database: {e}")),
        }
        let secret = match self.pending_secret(s) {
            Ok(x) => x,
            Err(e) => return text(500, e),
        };
        let b32 = secret.to_base32();
        let uri = secret.uri(ISSUER, name);
        let Some(svg) = qr_svg(&uri) else {
            return text(500, "cannot make the QR code");
        };
        let e = sf_pages::Enrolment {
            account: name,
            secret: &b32,
            uri: &uri,
            qr_svg: &svg,
            required: s.stage == SessionStage::Enrol,
        };
        html(200, sf_pages::enrol(&e, msg, &csrf_token(&s.token)))
    }

    /// `POST /totp/enrol`: a current code of the offered secret confirms
    /// it; the enrolment is stored, ten recovery codes are shown once, and
    /// the session becomes a full one under a new token.
    pub(super) async fn enrol(&self, s: &Session, body: &[u8], peer: SocketAddr) -> Response<Body> {
        if s.stage == SessionStage::Code {
            return redirect(step_page(s.stage));
        }
        let Some(name) = s.account.as_deref() else {
            return self.enrol_form(s, "");
        };
        let code = zeroize::Zeroizing::new(form_field(body, "code").unwrap_or_default());
        let now = unix_now();
        let who = Actor::new(s.label.clone(), peer.ip().to_string());
        let attempt = match self.begin_attempt(peer, &who, now, || {
            sf_pages::nothing_to_enrol("Too many wrong codes: wait, then reload the enrolment page.")
        }) {
            Ok(a) => a,
            Err(r) => return *r,
        };
        let secret = match self.pending_secret(s) {
            Ok(x) => x,
            Err(e) => return text(500, e),
        };
        let step = match secret.verify(code.trim(), self.settings.clock.now(), None) {
            Ok(step) => step,
            Err(e) => {
                let why = format!("enrolment not confirmed: {e}");
                let locked = self.failed_code(&who, peer, attempt, &why, now).unwrap_or_default();
                let mut r = self.enrol_form(
                    s,
                    &format!("Wrong code: try again with the code your app shows now.{locked}"),
                );
                *r.status_mut() = StatusCode::UNAUTHORIZED;
                return r;
            }
        };
        if let Ok(mut t) = self.throttle.lock() {
            t.passed(attempt);
        }
        let codes = match recovery::generate(&self.rng) {
            Ok(c) => c,
            Err(_) => return text(500, "random number generator failed"),
        };
        let hashes: Vec<String> = codes.iter().map(|c| recovery::hash(c)).collect();
        let stored = self.center.store().and_then(|mut st| {
            let done = st.enrol_totp(name, &secret.to_base32(), step, &hashes, now)?;
            st.delete_session(&token_hash(&s.token))?;
            Ok(done)
        });
        match stored {
            Ok(true) => {}
            Ok(false) => {
                return html(
                    409,
                    sf_pages::nothing_to_enrol("Your account has a second factor already: log in again."),
                )
            }
            Err(e) => return text(500, format!("cannot store the enrolment: {e}")),
        }
        log::info!("{} enrolled a second factor from {peer}", s.label);
        self.center.audit(
            now,
            &who,
            "totp_enrol",
            None,
            None,
            &format!(
                "second factor (TOTP) enrolled; {} recovery codes issued",
                recovery::COUNT
            ),
        );
        // A new token for the full session (the half-logged-in one is gone).
        let ttl = self.settings.session_ttl.as_secs();
        let token = match self.new_session(&s.label, name, SessionStage::Full, ttl, now) {
            Ok(t) => t,
            Err(e) => return text(500, e),
        };
        self.center.audit(
            now,
            &who,
            "login",
            None,
            None,
            "session started (second factor enrolled)",
        );
        let shown: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
        with_cookie(html(200, sf_pages::recovery_codes(name, &shown)), &token, ttl)
    }
}
