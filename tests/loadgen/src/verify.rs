//! The exactly-once check: after a run, a guest reconnects with `lastSeq: 0` (protocol v1) and
//! the history must hold every acknowledged message once, in the order it was sent.

use std::collections::HashMap;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::client::{self, Identity, Target};

#[derive(Debug, Default, Clone, Copy)]
pub struct Verdict {
    pub guests: u64,
    pub messages: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub failed_checks: u64,
}

impl Verdict {
    pub fn merge(&mut self, other: Verdict) {
        self.guests += other.guests;
        self.messages += other.messages;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.failed_checks += other.failed_checks;
    }

    pub fn to_json(self) -> Value {
        json!({"guests": self.guests, "messages": self.messages, "lost": self.lost, "duplicated": self.duplicated, "out_of_order": self.out_of_order, "failed_checks": self.failed_checks})
    }

    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0 && self.failed_checks == 0
    }
}

/// Compares what was expected (ids in the order they were sent or produced) with what was
/// seen (ids in the order they arrived or are stored).
pub fn compare(expected: &[String], seen: &[String]) -> Verdict {
    let mut positions: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, id) in seen.iter().enumerate() {
        positions.entry(id.as_str()).or_default().push(i);
    }
    let mut verdict = Verdict { guests: 1, messages: expected.len() as u64, ..Default::default() };
    let mut last = None;
    for id in expected {
        match positions.get(id.as_str()).map(Vec::as_slice) {
            None | Some([]) => verdict.lost += 1,
            Some(found) => {
                if found.len() > 1 {
                    verdict.duplicated += found.len() as u64 - 1;
                }
                if last.is_some_and(|l| found[0] < l) {
                    verdict.out_of_order += 1;
                }
                last = Some(found[0]);
            }
        }
    }
    verdict
}

/// Reconnects as the guest and checks its stored history against the acknowledged ids.
pub async fn stored_history(
    target: &Target,
    source: Option<IpAddr>,
    identity: &Identity,
    acked_ids: &[String],
) -> Verdict {
    let identify = json!({
        "type": "identify",
        "visitorId": identity.visitor_id,
        "visitorToken": identity.visitor_token,
        "resumeConversation": true,
        "lastSeq": 0,
    });
    match client::connect_and_identify(target, source, identify).await {
        Ok((_ws, _, frames)) => {
            let seen: Vec<String> = frames
                .iter()
                .filter(|f| f["type"] == "history")
                .flat_map(|f| f["messages"].as_array().cloned().unwrap_or_default())
                .filter(|m| m["role"] == "guest")
                .filter_map(|m| m["messageId"].as_str().map(str::to_owned))
                .collect();
            compare(acked_ids, &seen)
        }
        Err(_) => Verdict { guests: 1, failed_checks: 1, ..Default::default() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn finds_loss_duplicates_and_disorder() {
        assert!(compare(&ids(&["a", "b", "c"]), &ids(&["a", "b", "c"])).clean());
        let v = compare(&ids(&["a", "b", "c"]), &ids(&["a", "c"]));
        assert_eq!(v.lost, 1);
        let v = compare(&ids(&["a", "b"]), &ids(&["a", "b", "b"]));
        assert_eq!(v.duplicated, 1);
        let v = compare(&ids(&["a", "b", "c"]), &ids(&["a", "c", "b"]));
        assert_eq!(v.out_of_order, 1);
    }
}
