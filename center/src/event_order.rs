//! Which tunnel events are news: gatewayd numbers its events in the order
//! they happen and stamps each state report with the number reached when
//! it was taken. Events arrive in order but late under load (one HTTP call
//! at a time), so an event can arrive after the reconciliation applied a
//! newer report; applied then, a stale "connecting" would undo the "up"
//! the report gave, and the end that follows would skip the router's
//! commands. Pure bookkeeping, kept in memory: after a restart of centerd
//! everything is news until the first report.

use std::collections::HashMap;

/// Per gateway and router: the newest event or report applied.
#[derive(Debug, Default)]
pub struct EventOrder {
    applied: HashMap<(String, String), u64>,
}

impl EventOrder {
    /// Whether an event numbered `seq` for `terminal` on `gateway` is news
    /// (and if so, remember it). 0 is a gateway that does not number its
    /// events: always news.
    pub fn event_is_news(&mut self, gateway: &str, terminal: &str, seq: u64) -> bool {
        if seq == 0 {
            return true;
        }
        let last = self
            .applied
            .entry((gateway.to_owned(), terminal.to_owned()))
            .or_insert(0);
        if seq <= *last {
            return false;
        }
        *last = seq;
        true
    }

    /// Whether a report numbered `seq` may set `terminal`'s state on
    /// `gateway` (no newer event was applied since; if so, remember it).
    pub fn report_is_news(&mut self, gateway: &str, terminal: &str, seq: u64) -> bool {
        self.event_is_news(gateway, terminal, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_event_older_than_the_applied_report_is_stale() {
        let mut o = EventOrder::default();
        // connecting (5) and up (6) happen; the report taken at 6 is
        // applied before either event arrives.
        assert!(o.report_is_news("gw1", "r1", 6));
        assert!(!o.event_is_news("gw1", "r1", 5), "the late 'connecting'");
        assert!(!o.event_is_news("gw1", "r1", 6), "the late 'up': nothing new");
        assert!(o.event_is_news("gw1", "r1", 7), "a later change is news");
        // A report taken before that change does not undo it.
        assert!(!o.report_is_news("gw1", "r1", 6));
        assert!(o.report_is_news("gw1", "r1", 9));
    }

    #[test]
    fn routers_and_gateways_are_ordered_apart() {
        let mut o = EventOrder::default();
        assert!(o.event_is_news("gw1", "r1", 10));
        assert!(o.event_is_news("gw1", "r2", 3));
        assert!(o.event_is_news("gw2", "r1", 3));
        assert!(!o.event_is_news("gw1", "r1", 4));
    }

    #[test]
    fn unnumbered_events_and_reports_are_always_news() {
        let mut o = EventOrder::default();
        assert!(o.event_is_news("gw1", "r1", 10));
        assert!(o.event_is_news("gw1", "r1", 0));
        assert!(o.report_is_news("gw1", "r1", 0));
        assert!(!o.event_is_news("gw1", "r1", 10));
    }
}
