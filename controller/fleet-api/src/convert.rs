//! Wire ↔ API conversions: what an agent reports (`Nic`, `FlashResult`) as the `NexusNode.status`
//! types, checked on the way in (an agent is outside input: a malformed digest is dropped, not
//! written into a status the API server would refuse).

use nexus_crds::common::Time;
use nexus_crds::node::{Bank, BankStatus, FlashOutcome, FlashResult, NicStatus};

use crate::v1 as pb;

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn bounded(s: &str, max: usize) -> Option<String> {
    let s = opt(s)?;
    if s.len() <= max {
        return Some(s);
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    Some(s[..cut].to_owned())
}

fn bank(b: i32) -> Option<Bank> {
    match pb::Bank::try_from(b) {
        Ok(pb::Bank::A) => Some(Bank::A),
        Ok(pb::Bank::B) => Some(Bank::B),
        _ => None,
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn time_ms(ms: i64) -> Option<Time> {
    if ms <= 0 {
        return None;
    }
    k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(Time)
}

/// A reported NIC as its status entry.
pub fn nic_status(n: &pb::Nic) -> NicStatus {
    NicStatus {
        pci_address: n.pci_address.clone(),
        vendor: n.vendor.clone(),
        model: n.model.clone(),
        pci_vendor_id: n.pci_vendor_id.clone(),
        pci_device_id: n.pci_device_id.clone(),
        running_firmware: bounded(&n.running_firmware, 64),
        active_bank: bank(n.active_bank),
        banks: n
            .banks
            .iter()
            .filter_map(|b| {
                Some(BankStatus {
                    bank: bank(b.bank)?,
                    version: bounded(&b.version, 64),
                    sha256: is_sha256(&b.sha256).then(|| b.sha256.clone()),
                    bootable: b.bootable,
                })
            })
            .collect(),
    }
}

/// A reported flash result as its status entry; `None` for an unspecified outcome.
pub fn flash_result(r: &pb::FlashResult) -> Option<FlashResult> {
    let result = match pb::FlashOutcome::try_from(r.outcome).ok()? {
        pb::FlashOutcome::Succeeded => FlashOutcome::Succeeded,
        pb::FlashOutcome::Failed => FlashOutcome::Failed,
        pb::FlashOutcome::RolledBack => FlashOutcome::RolledBack,
        pb::FlashOutcome::Refused => FlashOutcome::Refused,
        pb::FlashOutcome::Interrupted => FlashOutcome::Interrupted,
        pb::FlashOutcome::Unspecified => return None,
    };
    Some(FlashResult {
        version: bounded(&r.version, 64)?,
        result,
        stage: bounded(&r.stage, 32),
        message: bounded(&r.message, 1024),
        started_at: time_ms(r.started_at_ms),
        finished_at: time_ms(r.finished_at_ms),
    })
}

/// The wire outcome of an API outcome.
impl From<FlashOutcome> for pb::FlashOutcome {
    fn from(o: FlashOutcome) -> Self {
        match o {
            FlashOutcome::Succeeded => Self::Succeeded,
            FlashOutcome::Failed => Self::Failed,
            FlashOutcome::RolledBack => Self::RolledBack,
            FlashOutcome::Refused => Self::Refused,
            FlashOutcome::Interrupted => Self::Interrupted,
        }
    }
}

/// The CRD's view of an agent's routing report (`None` when it reports nothing).
pub fn routing_status(r: &crate::v1::RoutingStatus) -> Option<nexus_crds::node::NodeRoutingStatus> {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let out = nexus_crds::node::NodeRoutingStatus {
        programmed_version: opt(&r.programmed_version),
        refused_version: opt(&r.refused_version),
        refused_reason: opt(&r.refused_reason),
    };
    (out != nexus_crds::node::NodeRoutingStatus::default()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_digests_and_long_strings_are_not_passed_on() {
        let n = pb::Nic {
            pci_address: "0000:3b:00.0".into(),
            running_firmware: "x".repeat(100),
            active_bank: pb::Bank::A as i32,
            banks: vec![pb::BankInfo {
                bank: pb::Bank::B as i32,
                version: "1.0".into(),
                sha256: "not-a-digest".into(),
                bootable: true,
            }],
            ..Default::default()
        };
        let s = nic_status(&n);
        assert_eq!(s.running_firmware.as_deref().map(str::len), Some(64));
        assert_eq!(s.active_bank, Some(Bank::A));
        assert_eq!(s.banks[0].sha256, None);
        let r = pb::FlashResult {
            version: "2.0".into(),
            outcome: pb::FlashOutcome::Interrupted as i32,
            ..Default::default()
        };
        assert_eq!(
            flash_result(&r).map(|f| f.result),
            Some(FlashOutcome::Interrupted)
        );
        assert!(flash_result(&pb::FlashResult::default()).is_none());
    }
}
