//! Leader election with a `coordination.k8s.io/v1` Lease: of several replicas, only the holder reconciles.
//! Every write is conditional on the Lease's resourceVersion, so two replicas can never both win.

use crate::{Error, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a holder that stops renewing keeps the Lease.
    pub duration: Duration,
    pub renew_every: Duration,
}

/// What to do with the Lease as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    Create,
    Renew,
    TakeOver,
    Follow { holder: String },
}

/// Decides from the Lease's spec (`None`: there is no Lease yet).
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> LeaseDecision {
    let Some(spec) = spec else { return LeaseDecision::Create };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return LeaseDecision::Renew;
    }
    if holder.is_empty() {
        return LeaseDecision::TakeOver;
    }
    let last = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    match last.and_then(|t| t.checked_add(duration).ok()) {
        Some(expiry) if expiry > now => LeaseDecision::Follow { holder },
        _ => LeaseDecision::TakeOver,
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
}

impl LeaderElector {
    pub fn new(client: kube::Client, settings: LeaseSettings) -> LeaderElector {
        LeaderElector { api: Api::namespaced(client, &settings.namespace), settings }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.duration.as_secs().clamp(1, i32::MAX as u64) as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One try: returns whether this replica holds the Lease afterwards.
    pub async fn try_lead(&self) -> Result<bool> {
        let name = &self.settings.name;
        let current = self.api.get_opt(name).await.map_err(Error::kube(format!("reading Lease {name}")))?;
        let now = Timestamp::now();
        let decision = decide(current.as_ref().and_then(|l| l.spec.as_ref()), &self.settings.identity, now);
        let written = match (decision, current) {
            (LeaseDecision::Follow { .. }, _) => return Ok(false),
            (LeaseDecision::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(now, None, 0)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (decision, Some(mut lease)) => {
                let old = lease.spec.clone().unwrap_or_default();
                let transitions = old.lease_transitions.unwrap_or(0);
                lease.spec = Some(match decision {
                    LeaseDecision::Renew => self.spec(now, old.acquire_time, transitions),
                    _ => self.spec(now, None, transitions.saturating_add(1)),
                });
                // The resourceVersion read above makes this a compare-and-swap.
                self.api.replace(name, &PostParams::default(), &lease).await
            }
        };
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(Error::kube(format!("writing Lease {name}"))(e)),
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self) {
        loop {
            match self.try_lead().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.settings.renew_every).await;
        }
    }

    /// Renews the Lease until it is lost: returns why. A replica that cannot renew within the Lease's duration
    /// stops leading, since another may have taken over — also when the apiserver does not answer at all: a
    /// renewal is given up when the Lease it renews would expire (the client's own timeout is minutes).
    pub async fn hold(&self) -> Error {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.settings.renew_every).await;
            let expires = last_renewed + self.settings.duration;
            // The Lease a renewal writes runs from before it is sent, so its holder counts from then too.
            let asked = tokio::time::Instant::now();
            let Ok(renewed) = tokio::time::timeout_at(expires, self.try_lead()).await else {
                let message = format!(
                    "no answer to its renewal within the Lease's {}s: another replica may hold it",
                    self.settings.duration.as_secs()
                );
                return Error::LeadershipLost { lease: self.settings.name.clone(), message };
            };
            match renewed {
                Ok(true) => last_renewed = asked,
                Ok(false) => {
                    return Error::LeadershipLost {
                        lease: self.settings.name.clone(),
                        message: "another replica holds it".into(),
                    };
                }
                Err(e) if last_renewed.elapsed() >= self.settings.duration => {
                    return Error::LeadershipLost { lease: self.settings.name.clone(), message: e.to_string() };
                }
                Err(e) => tracing::warn!(error = %e, "renewing the leader Lease"),
            }
        }
    }

    /// Gives the Lease up, so that a standby replica takes over at once.
    pub async fn release(&self) {
        let name = &self.settings.name;
        if let Ok(Some(mut lease)) = self.api.get_opt(name).await {
            let ours = lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(&self.settings.identity);
            if ours {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                }
                if let Err(e) = self.api.replace(name, &PostParams::default(), &lease).await {
                    tracing::warn!(error = %e, "releasing the leader Lease");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("valid")
    }

    fn held(holder: Option<&str>, renewed: Option<i64>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(15),
            renew_time: renewed.map(|s| MicroTime(at(s))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn the_lease_goes_to_whoever_may_take_it() {
        let cases = [
            (None, 0, LeaseDecision::Create),
            (Some(held(Some("me"), Some(0))), 5, LeaseDecision::Renew),
            (Some(held(Some("me"), Some(0))), 500, LeaseDecision::Renew),
            (Some(held(Some("other"), Some(0))), 5, LeaseDecision::Follow { holder: "other".into() }),
            (Some(held(Some("other"), Some(0))), 14, LeaseDecision::Follow { holder: "other".into() }),
            (Some(held(Some("other"), Some(0))), 16, LeaseDecision::TakeOver),
            (Some(held(Some("other"), None)), 0, LeaseDecision::TakeOver),
            (Some(held(None, Some(0))), 1, LeaseDecision::TakeOver),
            (Some(held(Some(""), Some(0))), 1, LeaseDecision::TakeOver),
        ];
        for (spec, now, expected) in cases {
            assert_eq!(decide(spec.as_ref(), "me", at(now)), expected, "{spec:?} at {now}");
        }
    }

    #[tokio::test]
    async fn a_holder_whose_renewal_gets_no_answer_stops_leading_when_its_lease_would_expire() {
        // An apiserver that accepts connections and never answers (loopback only).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                held.push(connection);
            }
        });
        let config = kube::Config::new(url.parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        let settings = LeaseSettings {
            name: "silverline-operator".into(),
            namespace: "ops".into(),
            identity: "me".into(),
            duration: Duration::from_millis(1500),
            renew_every: Duration::from_millis(200),
        };
        let elector = LeaderElector::new(client, settings);
        let started = std::time::Instant::now();
        let lost = tokio::time::timeout(Duration::from_secs(20), elector.hold()).await.expect("hold returns");
        let waited = started.elapsed();
        assert!(matches!(&lost, Error::LeadershipLost { message, .. } if message.starts_with("no answer")), "{lost}");
        assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5), "{waited:?}");
        silent.abort();
    }
}
