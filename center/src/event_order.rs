//! Which tunnel events are news: gatewayd numbers its events in the order
//! they happen and stamps each state report with the number reached when
//! it was taken. Events arrive in order but late under load (one HTTP call
//! at a time), so an event can arrive after the reconciliation applied a
//! newer report; applied then, a stale "connecting" would undo the "up"
//! the report gave, and the end that follows would skip the router's
//! commands. Pure bookkeeping, kept in memory: after a restart of centerd
//! everything is news until the first report.

use std::collections::HashMap;

/// Per gateway and router: the newest event and the newest report applied.
#[derive(Debug, Default)]
pub struct EventOrder {
    applied: HashMap<(String, String), Applied>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Applied {
    event: u64,
    report: u64,
}

impl EventOrder {
    fn entry(&mut self, gateway: &str, terminal: &str) -> &mut Applied {
        self.applied
            .entry((gateway.to_owned(), terminal.to_owned()))
            .or_default()
    }

    /// Whether an event numbered `seq` for `terminal` on `gateway` is news
    /// (and if so, remember it): newer than every event and report applied.
    /// 0 is a gateway that does not number its events: always news.
    pub fn event_is_news(&mut self, gateway: &str, terminal: &str, seq: u64) -> bool {
        if seq == 0 {
            return true;
        }
        let a = self.entry(gateway, terminal);
        if seq <= a.event.max(a.report) {
            return false;
        }
        a.event = seq;
        true
    }

    /// Whether a report numbered `seq` may set `terminal`'s state on
    /// `gateway` (and if so, remember it). A report reflects every event up
    /// to and including its number, so it is news unless an event after it
    /// was applied; one equal to the last event is news too (the state may
    /// have been changed meanwhile by something that is not an event, such
    /// as the heartbeat marking the gateway down).
    pub fn report_is_news(&mut self, gateway: &str, terminal: &str, seq: u64) -> bool {
        if seq == 0 {
            return true;
        }
        let a = self.entry(gateway, terminal);
        if seq < a.event || seq < a.report {
            return false;
        }
        a.report = seq;
        true
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
    fn a_report_at_the_last_event_is_news() {
        // The heartbeat marked the gateway down (not an event); when it is
        // back its report, with no event since, must set the state again.
        let mut o = EventOrder::default();
        assert!(o.event_is_news("gw1", "r1", 6));
        assert!(o.report_is_news("gw1", "r1", 6));
        assert!(o.report_is_news("gw1", "r1", 6), "the same report again");
        assert!(!o.event_is_news("gw1", "r1", 6));
        assert!(!o.report_is_news("gw1", "r1", 5));
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
