//! INFORMATIONAL requests from the peer: delete, liveness check (DPD).

use crate::codec::{notify_type as nt, protocol_id, Delete, ExchangeType, Payload};
use crate::error::Error;
use crate::event::DownReason;

use super::{find_notify, spi_bytes_u32, IkeSa, Out, Result};

impl IkeSa {
    pub(super) fn handle_informational(&mut self, mid: u32, payloads: &[Payload], out: &mut Out) -> Result<()> {
        let deletes: Vec<&Delete> = payloads
            .iter()
            .filter_map(|p| match p {
                Payload::Delete(d) => Some(d),
                _ => None,
            })
            .collect();
        if deletes.iter().any(|d| d.protocol == protocol_id::IKE) {
            self.send_response(ExchangeType::Informational, mid, &[], out)?;
            self.die(DownReason::DeletedByPeer, out);
            return Ok(());
        }
        if find_notify(payloads, nt::AUTHENTICATION_FAILED).is_some() {
            // The initiator refused our AUTH after we had considered the SA
            // up (RFC 7296 2.21.2).
            self.send_response(ExchangeType::Informational, mid, &[], out)?;
            self.die(DownReason::AuthenticationFailed, out);
            return Err(Error::PeerError(nt::AUTHENTICATION_FAILED));
        }
        let mut ours = Vec::new();
        for d in deletes.iter().filter(|d| d.protocol == protocol_id::ESP) {
            for spi in d.spis.iter().filter_map(|s| spi_bytes_u32(s)) {
                let found = self
                    .children
                    .iter()
                    .find(|c| c.outbound_spi == spi)
                    .map(|c| c.inbound_spi);
                if let Some(c) = found.and_then(|i| self.remove_child(i, out)) {
                    ours.push(c.inbound_spi.to_be_bytes().to_vec());
                }
            }
        }
        // The pending rekey of a child the peer just deleted is moot; the
        // queued ones too.
        let resp = if ours.is_empty() {
            Vec::new()
        } else {
            vec![Payload::Delete(Delete {
                protocol: protocol_id::ESP,
                spi_size: 4,
                spis: ours,
            })]
        };
        self.send_response(ExchangeType::Informational, mid, &resp, out)
    }
}
