//! The centre: reading the fleet's stream with a durable consumer, and sending tasks to
//! hosts with the statuses of one host's task layer.

use super::{connect, js_error, FleetError, HostInfo, HostReply};
use crate::codec::{Codec, Envelope, DEFAULT_MAX_MESSAGE_SIZE};
use crate::config::UplinkConfig;
use crate::task::{Attempt, Status, TaskEvent, TaskSpec};
use async_nats::jetstream::{self, consumer::pull};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;

/// One event read from the stream.
pub struct FleetEvent {
    /// Its subject (`<prefix>.<host>.<topic>`).
    pub subject: String,
    /// The host that sent it (the subject's second token).
    pub host: String,
    /// Its position in the stream.
    pub stream_seq: u64,
    /// The event with its origin and sequence number.
    pub envelope: Envelope,
    message: jetstream::Message,
}

impl FleetEvent {
    /// Tells JetStream this event is processed and waits for it to record that: a consumer
    /// restarted after this point does not get it again.
    pub async fn ack(&self) -> Result<(), FleetError> {
        self.message.double_ack().await.map_err(js_error)
    }
}

/// A reader of the fleet's stream: with a durable name, every event once per name across
/// the reader's restarts (events are acknowledged one by one, after they are handled).
pub struct FleetSubscriber {
    messages: pull::Stream,
    codec: Codec,
    /// Messages that were not busbridge envelopes (acknowledged and skipped).
    pub malformed: u64,
}

impl FleetSubscriber {
    /// Reads `subjects` (NATS subjects, wildcards allowed; empty: the whole stream) from the
    /// stream of `config`, as the durable consumer `durable` if given, else from the start
    /// with an ephemeral one.
    pub async fn connect(
        config: &UplinkConfig,
        subjects: &[String],
        durable: Option<&str>,
    ) -> Result<Self, FleetError> {
        let client = connect(config, "busbridge-fleet-sub", true).await?;
        let js = jetstream::new(client);
        let stream = js.get_stream(&config.stream).await.map_err(js_error)?;
        let consumer_config = pull::Config {
            durable_name: durable.map(str::to_owned),
            filter_subjects: subjects.to_vec(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        };
        let consumer: jetstream::consumer::PullConsumer = match durable {
            Some(name) => stream
                .get_or_create_consumer(name, consumer_config)
                .await
                .map_err(js_error)?,
            None => stream
                .create_consumer(consumer_config)
                .await
                .map_err(js_error)?,
        };
        let messages = consumer.messages().await.map_err(js_error)?;
        Ok(Self {
            messages,
            codec: Codec::new(config.codec, DEFAULT_MAX_MESSAGE_SIZE),
            malformed: 0,
        })
    }

    /// The next event; `None` when the connection is closed for good.
    pub async fn next(&mut self) -> Option<Result<FleetEvent, FleetError>> {
        loop {
            let message = match self.messages.next().await? {
                Ok(m) => m,
                Err(e) => return Some(Err(js_error(e))),
            };
            let stream_seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
            let subject = message.subject.to_string();
            match self.codec.decode(&message.payload) {
                Ok(envelope) => {
                    let host = subject.split('.').nth(1).unwrap_or_default().to_owned();
                    return Some(Ok(FleetEvent {
                        subject,
                        host,
                        stream_seq,
                        envelope,
                        message,
                    }));
                }
                Err(e) => {
                    self.malformed += 1;
                    tracing::warn!(%subject, stream_seq, error = %e, "fleet: not a busbridge envelope; skipped");
                    let _ = message.ack().await;
                }
            }
        }
    }
}

/// A task for the fleet.
#[derive(Debug, Clone)]
pub struct FleetTask {
    /// The task, as on one host (its mode applies within each host).
    pub spec: TaskSpec,
    /// Only this host; `None`: every host that can run it.
    pub host: Option<String>,
}

/// What one host made of a task.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HostResult {
    /// The host.
    pub host: String,
    /// Its results, in arrival order.
    pub results: Vec<TaskEvent>,
    /// How the task ended there; `None` if the host never said.
    pub status: Option<Status>,
    /// Why the host did not dispatch it, if it did not.
    pub refused: Option<String>,
}

/// Sends tasks to hosts' uplinks and gathers their answers.
pub struct FleetTasks {
    client: async_nats::Client,
    js: jetstream::Context,
    config: UplinkConfig,
}

/// Time beyond a task's deadline for the hosts' final answers to arrive.
const GRACE: Duration = Duration::from_millis(500);

impl FleetTasks {
    /// Connects to the NATS servers of `config`.
    pub async fn connect(config: &UplinkConfig) -> Result<Self, FleetError> {
        let client = connect(config, "busbridge-fleet-task", true).await?;
        Ok(Self {
            js: jetstream::new(client.clone()),
            client,
            config: config.clone(),
        })
    }

    /// The hosts that announced themselves recently, with their collectors.
    pub async fn hosts(&self) -> Result<Vec<HostInfo>, FleetError> {
        let bucket = super::hosts_bucket(&self.config.stream);
        let kv = match self.js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => return Ok(Vec::new()),
        };
        let mut keys = kv.keys().await.map_err(js_error)?;
        let mut hosts = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(js_error)?;
            if let Some(value) = kv.get(&key).await.map_err(js_error)? {
                match serde_json::from_slice::<HostInfo>(&value) {
                    Ok(info) => hosts.push(info),
                    Err(e) => tracing::warn!(%key, error = %e, "fleet: unreadable host entry"),
                }
            }
        }
        Ok(hosts)
    }

    /// Sends `task` and gathers every expected host's answer until its deadline, calling
    /// `on_event` as they arrive. The hosts expected are those announced (in the hosts
    /// bucket) with a collector that can run it, or the one named. The status is the
    /// task layer's: complete when every expected host completed, timed out when none
    /// answered with a result, partial otherwise (with who is missing and why).
    pub async fn run(
        &self,
        mut task: FleetTask,
        mut on_event: impl FnMut(&str, &TaskEvent),
    ) -> Result<(Status, Vec<HostResult>), FleetError> {
        if task.spec.id.is_empty() {
            task.spec.id = uuid::Uuid::new_v4().to_string();
        }
        let announced = self.hosts().await?;
        let expected: Vec<String> = match &task.host {
            Some(h) => vec![h.clone()],
            None => announced
                .iter()
                .filter(|h| h.can_run(&task.spec))
                .map(|h| h.host.clone())
                .collect(),
        };
        if expected.is_empty() {
            return Err(FleetError::NoHost(format!(
                "no announced host can run `{}` ({} hosts announced)",
                task.spec.operation,
                announced.len()
            )));
        }
        let subject = match &task.host {
            Some(h) => super::host_task_subject(&self.config.prefix, h),
            None => super::fleet_task_subject(&self.config.prefix),
        };
        let inbox = self.client.new_inbox();
        let mut replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(js_error)?;
        let body = serde_json::to_vec(&task.spec).expect("a task serializes");
        self.client
            .publish_with_reply(subject, inbox, body.into())
            .await
            .map_err(js_error)?;
        self.client.flush().await.map_err(js_error)?;
        let mut hosts: BTreeMap<String, HostResult> = expected
            .iter()
            .map(|h| {
                (
                    h.clone(),
                    HostResult {
                        host: h.clone(),
                        results: Vec::new(),
                        status: None,
                        refused: None,
                    },
                )
            })
            .collect();
        let done = |hosts: &BTreeMap<String, HostResult>| {
            hosts
                .values()
                .all(|h| h.status.is_some() || h.refused.is_some())
        };
        let deadline = tokio::time::Instant::now() + task.spec.timeout + GRACE;
        while !done(&hosts) {
            let message = match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => break,
            };
            let Ok(reply) = serde_json::from_slice::<HostReply>(&message.payload) else {
                tracing::warn!("fleet: an unreadable task reply");
                continue;
            };
            match reply {
                HostReply::Refused { host, reason } => {
                    hosts
                        .entry(host.clone())
                        .or_insert_with(|| empty(&host))
                        .refused = Some(reason);
                }
                HostReply::Event { host, event } => {
                    on_event(&host, &event);
                    let entry = hosts.entry(host.clone()).or_insert_with(|| empty(&host));
                    match event {
                        TaskEvent::Finished(status) => entry.status = Some(status),
                        e @ TaskEvent::Result { .. } => entry.results.push(e),
                        _ => {}
                    }
                }
            }
        }
        let hosts: Vec<HostResult> = hosts.into_values().collect();
        Ok((overall(&hosts), hosts))
    }
}

fn empty(host: &str) -> HostResult {
    HostResult {
        host: host.to_owned(),
        results: Vec::new(),
        status: None,
        refused: None,
    }
}

/// The fleet's status from each host's: collectors are named `host/collector`.
fn overall(hosts: &[HostResult]) -> Status {
    let mut missing = Vec::new();
    let mut any_result = false;
    let mut failed = Vec::new();
    for h in hosts {
        let ok_results = h
            .results
            .iter()
            .any(|r| matches!(r, TaskEvent::Result { outcome: Ok(_), .. }));
        any_result |= ok_results;
        let prefixed = |a: &Attempt| Attempt {
            collector: format!("{}/{}", h.host, a.collector),
            reason: a.reason.clone(),
        };
        match (&h.status, &h.refused) {
            (Some(Status::Complete), _) => {}
            (Some(Status::Partial { missing: m } | Status::TimedOut { missing: m }), _) => {
                missing.extend(m.iter().map(prefixed));
            }
            (Some(Status::Failed { attempts }), _) => {
                failed.extend(attempts.iter().map(prefixed));
            }
            (Some(Status::Cancelled), _) => missing.push(Attempt {
                collector: h.host.clone(),
                reason: "cancelled".into(),
            }),
            (None, Some(reason)) => failed.push(Attempt {
                collector: h.host.clone(),
                reason: reason.clone(),
            }),
            (None, None) => missing.push(Attempt {
                collector: h.host.clone(),
                reason: "the host did not answer before the deadline".into(),
            }),
        }
    }
    if missing.is_empty() && failed.is_empty() {
        Status::Complete
    } else if !any_result && missing.is_empty() {
        Status::Failed { attempts: failed }
    } else if !any_result {
        missing.extend(failed);
        Status::TimedOut { missing }
    } else {
        missing.extend(failed);
        Status::Partial { missing }
    }
}
