//! Publish/subscribe: topics, their subscriptions (each a task kind with a property filter),
//! and publishing, which creates one task per matching subscription.
//!
//! Subscriptions live in Redis (`{prefix}:{_topics}:topic:{topic}`, a hash of name → JSON; the
//! set `{prefix}:{_topics}:topics` names the topics, and `{prefix}:{_topics}:topic-stats:{topic}`
//! counts a topic's messages), declared in `courier.toml` and managed over the API. A topic has
//! at most [`MAX_SUBSCRIPTIONS`]; a message's payload is stored once, whatever the number of
//! tasks it becomes.

use crate::redis_client::Conn;
use crate::tasks::{BatchError, Options, Payload, Submission, SubmitError, Tasks};
use bytes::Bytes;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// The most subscriptions one topic may have: a message becomes at most this many tasks.
pub const MAX_SUBSCRIPTIONS: usize = 100;

/// What a subscription does with each matching message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "echo", "filter": {"region": {"equals": "eu"}}, "max_attempts": 3}))]
pub struct Subscription {
    /// The task kind each message becomes.
    pub kind: String,
    /// Conditions on the message's properties; every one must hold. Empty: every message.
    #[serde(default)]
    pub filter: BTreeMap<String, Condition>,
    /// Attempts of each task, else the kind's or the server's default.
    #[serde(
        default,
        deserialize_with = "app::model::whole::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// The queue its tasks go to, else the kind's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,63}$")]
    pub queue: Option<String>,
}

/// One condition on a message property.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// The property equals this value.
    Equals(Value),
    /// The property equals one of these values.
    In(Vec<Value>),
    /// The property is present (`true`) or absent (`false`).
    Exists(bool),
}

impl Condition {
    fn holds(&self, value: Option<&Value>) -> bool {
        match self {
            Condition::Equals(expected) => value == Some(expected),
            Condition::In(allowed) => value.is_some_and(|v| allowed.contains(v)),
            Condition::Exists(wanted) => value.is_some() == *wanted,
        }
    }
}

impl Subscription {
    /// Whether a message with `properties` matches this subscription's filter.
    pub fn matches(&self, properties: &BTreeMap<String, Value>) -> bool {
        self.filter.iter().all(|(name, condition)| condition.holds(properties.get(name)))
    }
}

/// A subscription declared in the configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredSubscription {
    pub topic: String,
    pub name: String,
    #[serde(flatten)]
    pub subscription: Subscription,
}

/// The configuration file (`courier.toml`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub subscriptions: Vec<DeclaredSubscription>,
    #[serde(default)]
    pub queues: Vec<DeclaredQueue>,
    /// Kinds declared without code (`[[kinds]]`): each a `kinds::Declaration`, with
    /// `schema_file` allowed for `schema`; read by `kinds::Declaration::from_file_entry`.
    #[serde(default)]
    pub kinds: Vec<toml::Table>,
    /// Schedules (`[[schedules]]`): each a `name` and the fields of
    /// `app::model::schedules::ScheduleSpec`; read by `schedules::Schedules::declare_from_file`.
    #[serde(default)]
    pub schedules: Vec<toml::Table>,
}

/// A queue declared in the configuration file, with its limits (`[[queues]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredQueue {
    pub name: String,
    pub max_depth: Option<u64>,
    pub concurrency: Option<u32>,
    pub rate: Option<app::model::RateLimit>,
}

impl DeclaredQueue {
    /// The limits it declares.
    pub fn limits(&self) -> app::model::QueueLimits {
        app::model::QueueLimits { max_depth: self.max_depth, concurrency: self.concurrency, rate: self.rate }
    }
}

impl FileConfig {
    /// Parses the TOML text of a configuration file.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// A message as published. The edge reads the payload as raw JSON (`P = &RawValue`) and hands
/// publishing its text as sent (`P = Bytes`), never parsed into a tree.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(bound = "", example = json!({"payload": {"order": 7}, "properties": {"region": "eu"}}))]
pub struct Message<P> {
    /// The payload of every task the message becomes (any JSON).
    #[schema(value_type = serde_json::Value)]
    pub payload: P,
    /// What subscriptions' filters look at.
    #[serde(default)]
    pub properties: BTreeMap<String, Value>,
}

/// What publishing did.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Published {
    pub message_id: Uuid,
    pub tasks: Vec<CreatedTask>,
}

/// One task a publish created.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CreatedTask {
    pub subscription: String,
    pub task_id: Uuid,
}

/// A topic with its subscriptions and counters, for listing.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TopicView {
    pub topic: String,
    pub subscriptions: BTreeMap<String, Subscription>,
    pub messages: u64,
    pub unmatched: u64,
}

/// Why a topic request was refused.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("{0}")]
    InvalidName(String),
    #[error("unknown task kind `{0}`")]
    UnknownKind(String),
    #[error("max_attempts must be between 1 and 100")]
    InvalidAttempts,
    #[error("topic `{0}` has {MAX_SUBSCRIPTIONS} subscriptions, the most a topic may have")]
    TooManySubscriptions(String),
    #[error("subscription `{subscription}`: {error}")]
    Rejected { subscription: String, error: SubmitError },
    /// The message as a whole was refused (a queue it goes to is full, or cannot be opened).
    #[error(transparent)]
    Refused(SubmitError),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl From<crate::queues::QueueError> for TopicError {
    fn from(e: crate::queues::QueueError) -> TopicError {
        TopicError::Refused(e.into())
    }
}

/// The topics service; cheap to clone.
#[derive(Clone)]
pub struct Topics {
    conn: Conn,
    /// `topics/put_subscription.lua`, loaded once.
    put_script: std::sync::Arc<redis::Script>,
    keys: std::sync::Arc<TopicKeys>,
    tasks: Tasks,
}

/// The Redis keys of the topics, all tagged `{_topics}` (`layout.rs`): a subscription is put
/// together with the set of topics, a message counted together with it.
#[derive(Clone, Debug)]
pub(crate) struct TopicKeys {
    base: String,
}

impl TopicKeys {
    /// The keys under `prefix`.
    pub(crate) fn new(prefix: &str) -> TopicKeys {
        TopicKeys::under(&crate::layout::TOPICS.base(prefix))
    }

    /// The keys under `base`: the family's tagged base, or the bare prefix of the layout before
    /// tags.
    pub(crate) fn under(base: &str) -> TopicKeys {
        TopicKeys { base: base.to_string() }
    }

    /// The set of topic names.
    pub(crate) fn topics(&self) -> String {
        format!("{}:topics", self.base)
    }

    /// `topic`'s subscriptions, name → JSON.
    pub(crate) fn topic(&self, topic: &str) -> String {
        format!("{}:topic:{topic}", self.base)
    }

    /// `topic`'s counters: `messages`, `unmatched`.
    pub(crate) fn stats(&self, topic: &str) -> String {
        format!("{}:topic-stats:{topic}", self.base)
    }
}

impl Topics {
    /// Topics under `prefix`, creating tasks through `tasks`.
    pub fn new(conn: Conn, prefix: &str, tasks: Tasks) -> Topics {
        let put_script = std::sync::Arc::new(redis::Script::new(include_str!("topics/put_subscription.lua")));
        Topics { conn, put_script, keys: std::sync::Arc::new(TopicKeys::new(prefix)), tasks }
    }

    /// Every topic with its subscriptions and counters.
    pub async fn list(&self) -> Result<Vec<TopicView>, TopicError> {
        let mut conn = self.conn.clone();
        let mut names: Vec<String> = conn.smembers(self.keys.topics()).await?;
        names.sort();
        let mut topics = Vec::new();
        for topic in names {
            let subscriptions = self.subscriptions(&topic).await?;
            let stats: BTreeMap<String, u64> = conn.hgetall(self.keys.stats(&topic)).await?;
            topics.push(TopicView {
                messages: stats.get("messages").copied().unwrap_or(0),
                unmatched: stats.get("unmatched").copied().unwrap_or(0),
                topic,
                subscriptions,
            });
        }
        Ok(topics)
    }

    /// The subscriptions of `topic`, by name.
    pub async fn subscriptions(&self, topic: &str) -> Result<BTreeMap<String, Subscription>, TopicError> {
        validate_name("topic", topic)?;
        let raw: BTreeMap<String, String> = self.conn.clone().hgetall(self.keys.topic(topic)).await?;
        // A field that no longer parses (written by a newer version) is skipped, not fatal.
        Ok(raw
            .into_iter()
            .filter_map(|(name, json)| Some((name, serde_json::from_str(&json).ok()?)))
            .collect())
    }

    /// Creates or replaces a subscription; `true` if it was new.
    pub async fn put(
        &self,
        topic: &str,
        name: &str,
        subscription: &Subscription,
    ) -> Result<bool, TopicError> {
        validate_name("topic", topic)?;
        validate_name("subscription", name)?;
        if !self.tasks.kinds().iter().any(|k| k.name == subscription.kind) {
            return Err(TopicError::UnknownKind(subscription.kind.clone()));
        }
        if subscription.max_attempts.is_some_and(|n| !(1..=100).contains(&n)) {
            return Err(TopicError::InvalidAttempts);
        }
        if let Some(queue) = &subscription.queue {
            self.tasks.queues().open(queue).await?;
        }
        let json = serde_json::to_string(subscription).expect("subscriptions always serialize");
        let created: i64 = self
            .put_script
            .key(self.keys.topic(topic))
            .key(self.keys.topics())
            .arg(name)
            .arg(json)
            .arg(MAX_SUBSCRIPTIONS)
            .arg(topic)
            .invoke_async(&mut self.conn.clone())
            .await?;
        if created < 0 {
            return Err(TopicError::TooManySubscriptions(topic.to_string()));
        }
        Ok(created == 1)
    }

    /// Deletes a subscription; `false` if there was none.
    pub async fn delete(&self, topic: &str, name: &str) -> Result<bool, TopicError> {
        validate_name("topic", topic)?;
        let removed: i64 = self.conn.clone().hdel(self.keys.topic(topic), name).await?;
        Ok(removed == 1)
    }

    /// Creates one task per subscription whose filter the message matches, all or none.
    pub async fn publish(&self, topic: &str, message: Message<Bytes>) -> Result<Published, TopicError> {
        let subscriptions = self.subscriptions(topic).await?;
        let payload = message.payload;
        let matching: Vec<(String, Subscription)> =
            subscriptions.into_iter().filter(|(_, s)| s.matches(&message.properties)).collect();
        let submissions: Vec<(String, Submission)> = matching
            .into_iter()
            .map(|(name, subscription)| {
                let submission = Submission {
                    kind: subscription.kind,
                    payload: Payload::Json(payload.clone()),
                    options: Options {
                        max_attempts: subscription.max_attempts,
                        subscription: Some(format!("{topic}/{name}")),
                        queue: subscription.queue,
                        ..Options::default()
                    },
                    idempotency_key: None,
                };
                (name, submission)
            })
            .collect();
        let names: Vec<String> = submissions.iter().map(|(n, _)| n.clone()).collect();
        let records =
            self.tasks.submit_shared(submissions.into_iter().map(|(_, s)| s).collect()).await.map_err(
                |e| match e {
                    BatchError::Rejected { index, error } => {
                        TopicError::Rejected { subscription: names[index].clone(), error }
                    }
                    BatchError::Refused(error) => TopicError::Refused(error),
                    BatchError::Redis(e) => TopicError::Redis(e),
                },
            )?;
        let mut pipe = redis::pipe();
        pipe.hincr(self.keys.stats(topic), "messages", 1).ignore();
        if records.is_empty() {
            pipe.hincr(self.keys.stats(topic), "unmatched", 1).ignore();
        }
        pipe.sadd(self.keys.topics(), topic).ignore();
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        Ok(Published {
            message_id: Uuid::now_v7(),
            tasks: names
                .into_iter()
                .zip(records)
                .map(|(subscription, record)| CreatedTask { subscription, task_id: record.id })
                .collect(),
        })
    }
}

fn validate_name(what: &str, name: &str) -> Result<(), TopicError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(TopicError::InvalidName(format!(
            "a {what} name is 1 to 100 characters of A-Z, a-z, 0-9, '-', '_', '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subscription(filter: Value) -> Subscription {
        serde_json::from_value(json!({"kind": "echo", "filter": filter})).unwrap()
    }

    fn props(value: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn filters_match_equals_in_and_exists_all_together() {
        let s = subscription(json!({
            "region": {"equals": "eu"},
            "tier": {"in": ["gold", "silver"]},
            "trace": {"exists": true},
            "test": {"exists": false}
        }));
        assert!(s.matches(&props(json!({"region": "eu", "tier": "gold", "trace": 1}))));
        assert!(!s.matches(&props(json!({"region": "us", "tier": "gold", "trace": 1}))));
        assert!(!s.matches(&props(json!({"region": "eu", "tier": "bronze", "trace": 1}))));
        assert!(!s.matches(&props(json!({"region": "eu", "tier": "gold"}))));
        assert!(!s.matches(&props(json!({"region": "eu", "tier": "gold", "trace": 1, "test": true}))));
        assert!(subscription(json!({})).matches(&props(json!({}))));
    }

    #[test]
    fn unknown_conditions_are_refused() {
        let bad =
            serde_json::from_value::<Subscription>(json!({"kind": "echo", "filter": {"a": {"like": "x"}}}));
        assert!(bad.is_err());
    }

    #[test]
    fn the_config_file_declares_subscriptions() {
        let config = FileConfig::parse(
            r#"
            [[subscriptions]]
            topic = "orders"
            name = "audit"
            kind = "echo"
            max_attempts = 3
            filter = { region = { equals = "eu" }, tier = { in = ["gold"] } }
            "#,
        )
        .unwrap();
        let declared = &config.subscriptions[0];
        assert_eq!((declared.topic.as_str(), declared.name.as_str()), ("orders", "audit"));
        assert_eq!(declared.subscription.max_attempts, Some(3));
        assert_eq!(declared.subscription.filter["region"], Condition::Equals(json!("eu")));
        assert!(FileConfig::parse("[[subscriptions]]\ntopic = 1").is_err());
    }
}
