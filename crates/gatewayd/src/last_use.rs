//! Each tunnel's last traffic for the state report (issue 19, item 8: the
//! center's idle timeout). Pure: the kernel's per-policy stamps in, one
//! time per slot out; the dump is `PolicyDatapath::policy_uses`, its
//! caching [`LastUseCache`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vpnnat_datapath::xfrm::policy_use::last_use_by_reqid;
use vpnnat_datapath::xfrm::PolicyUse;
use vpnnat_datapath::REQID_BASE;

/// How long a reading of the policies serves state reports: centerd asks
/// for one every second (its heartbeat), and a dump of every policy each
/// time would cost the gateway for nothing, the idle timeout counting in
/// minutes.
pub const REFRESH: Duration = Duration::from_secs(10);

/// The last use of each slot's policies (reqid `REQID_BASE + slot`), in
/// Unix seconds, 0 for none; slots without policies are left out (the
/// report says 0 for them: a tunnel without addresses carries nothing).
pub fn by_slot(uses: &[PolicyUse]) -> BTreeMap<u16, u64> {
    last_use_by_reqid(uses)
        .into_iter()
        .filter_map(|(reqid, t)| {
            let slot = u16::try_from(reqid.checked_sub(REQID_BASE)?).ok()?;
            Some((slot, t.unwrap_or(0)))
        })
        .collect()
}

/// The last reading and when it was taken.
#[derive(Debug, Default)]
pub struct LastUseCache {
    read: Option<(Instant, BTreeMap<u16, u64>)>,
}

impl LastUseCache {
    /// The reading, if taken less than [`REFRESH`] before `now`.
    pub fn fresh(&self, now: Instant) -> Option<&BTreeMap<u16, u64>> {
        self.read
            .as_ref()
            .filter(|(at, _)| now.saturating_duration_since(*at) < REFRESH)
            .map(|(_, m)| m)
    }

    pub fn store(&mut self, now: Instant, m: BTreeMap<u16, u64>) -> &BTreeMap<u16, u64> {
        &self.read.insert((now, m)).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpnnat_datapath::{Dir, PolicyId};

    fn u(reqid: u32, dir: Dir, last_use: Option<u64>) -> PolicyUse {
        PolicyUse {
            id: PolicyId {
                src: "10.64.0.5/32".parse().unwrap(),
                dst: "172.16.0.0/24".parse().unwrap(),
                dir,
            },
            reqid,
            last_use,
        }
    }

    #[test]
    fn each_slot_gets_the_latest_use_of_its_policies_and_0_for_none() {
        let m = by_slot(&[
            u(REQID_BASE + 3, Dir::In, Some(100)),
            u(REQID_BASE + 3, Dir::Out, Some(160)),
            u(REQID_BASE + 4, Dir::In, None),
            // Not the project's (another IPsec daemon's reqid).
            u(7, Dir::In, Some(999)),
        ]);
        assert_eq!(m, BTreeMap::from([(3, 160), (4, 0)]));
    }

    #[test]
    fn a_reading_serves_for_the_refresh_interval_only() {
        let t0 = Instant::now();
        let mut c = LastUseCache::default();
        assert!(c.fresh(t0).is_none());
        c.store(t0, BTreeMap::from([(1, 5)]));
        assert_eq!(
            c.fresh(t0 + REFRESH - Duration::from_millis(1)),
            Some(&BTreeMap::from([(1, 5)]))
        );
        assert!(c.fresh(t0 + REFRESH).is_none());
    }
}
