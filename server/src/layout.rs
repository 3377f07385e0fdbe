//! The key layout of what belongs to no queue: the hash tag each family of keys shares, so that
//! no command, transaction, pipeline or script crosses Redis Cluster slots, and the one-time move
//! of a Redis from the layout before tags ([`upgrade`]).
//!
//! A queue's keys share the tag `{queue}` (`store.rs`). Keys that belong to no queue and are used
//! together (in one script, MULTI or pipeline) share a tag of their own, which starts with `_`:
//! no queue name can, so a family never shares a slot with a queue by accident. Each family's
//! keys are built in one place, from [`Tag::base`]:
//!
//! | tag | keys | built in |
//! |---|---|---|
//! | `{_queues}` | `queues`, `queue-numbers`, `queue-names`, `queue-numbers-since` | `queues::RegistryKeys` |
//! | `{_auth}` | `tokens`, `token-names`, `token-used`, `tokens-version`, `auth-enforced` | `auth::TokenKeys` |
//! | `{_kinds}` | `kinds`, `kinds-version` | `kinds::KindKeys` |
//! | `{_topics}` | `topics`, `topic:{topic}`, `topic-stats:{topic}` | `topics::TopicKeys` |
//! | `{_workers}` | `workers`, `worker:{id}` | `workers::WorkerKeys` |
//! | `{_workflows}` | `workflows`, `workflows:running`, `wf:{id}`, `wf:{id}:lock`, `wf-idem:{sha1}` | `workflows::WorkflowKeys` |
//!
//! So the registry of queues is `{prefix}:{_queues}:queues`, a token table
//! `{prefix}:{_auth}:tokens`. Keys that are only ever used one at a time keep their untagged
//! names, as a single-key command never crosses slots: `web-session:*`, `rate:*`, `link-keys`,
//! `audit`, `schedule:*`, `schedules`, `schedules-version`, and this layout's own [`marker`] and
//! upgrade lock.

mod upgrade;

pub use upgrade::upgrade;

/// A family of keys used together, named by the hash tag they share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag(&'static str);

/// The queue registry.
pub const QUEUES: Tag = Tag("_queues");
/// The access tokens.
pub const AUTH: Tag = Tag("_auth");
/// The declared kinds.
pub const KINDS: Tag = Tag("_kinds");
/// Topics and their subscriptions.
pub const TOPICS: Tag = Tag("_topics");
/// The worker registry.
pub const WORKERS: Tag = Tag("_workers");
/// Workflows.
pub const WORKFLOWS: Tag = Tag("_workflows");

impl Tag {
    /// The tag's name, between the braces.
    pub const fn name(self) -> &'static str {
        self.0
    }

    /// What every key of the family under `prefix` starts with: `{prefix}:{_name}`.
    pub fn base(self, prefix: &str) -> String {
        format!("{prefix}:{{{}}}", self.0)
    }
}

/// The layout version of the keys under `prefix` (absent before tags, [`upgrade`] sets it).
pub fn marker(prefix: &str) -> String {
    format!("{prefix}:layout")
}

/// The hash tag of `key` as Redis Cluster finds it: what lies between its first `{` and the
/// next `}`, if that is not empty. A key without one hashes whole.
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = open + 1 + key[open + 1..].find('}')?;
    (close > open + 1).then(|| &key[open + 1..close])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        auth::TokenKeys, kinds::KindKeys, queues::RegistryKeys, store::Keys, topics::TopicKeys,
        workers::WorkerKeys, workflows::WorkflowKeys,
    };
    use app::model::is_queue_name;
    use uuid::Uuid;

    /// Every key of every family under `prefix`, by its tag (dynamic ones for a sample name).
    fn families(prefix: &str) -> Vec<(Tag, Vec<String>)> {
        let id = Uuid::now_v7();
        let topics = TopicKeys::new(prefix);
        let workers = WorkerKeys::new(prefix);
        let workflows = WorkflowKeys::new(prefix);
        let strings = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        vec![
            (QUEUES, strings(&RegistryKeys::new(prefix).all())),
            (AUTH, strings(&TokenKeys::new(prefix).all())),
            (KINDS, strings(&KindKeys::new(prefix).all())),
            (TOPICS, vec![topics.topics(), topics.topic("orders.created"), topics.stats("orders.created")]),
            (WORKERS, vec![workers.index(), workers.worker("host-1:42")]),
            (
                WORKFLOWS,
                vec![
                    workflows.list(),
                    workflows.running(),
                    workflows.workflow(&id),
                    workflows.lock(&id),
                    workflows.idempotency("da39a3ee5e6b4b0d3255bfef95601890afd80709"),
                ],
            ),
        ]
    }

    #[test]
    fn the_hash_tag_is_what_redis_hashes() {
        assert_eq!(hash_tag("courier:{_auth}:tokens"), Some("_auth"));
        assert_eq!(hash_tag("courier:{default}:task:{x}"), Some("default"));
        assert_eq!(hash_tag("courier:{}:x{y}"), None);
        assert_eq!(hash_tag("courier:tokens"), None);
        assert_eq!(hash_tag("courier:{open"), None);
    }

    #[test]
    fn every_key_of_a_family_has_its_tag_so_one_slot() {
        for prefix in ["courier", "my.app:prod"] {
            for (tag, keys) in families(prefix) {
                for key in keys {
                    assert_eq!(hash_tag(&key), Some(tag.name()), "{key}");
                    assert!(key.starts_with(&format!("{prefix}:{{{}}}:", tag.name())), "{key}");
                }
            }
        }
    }

    #[test]
    fn every_family_has_a_tag_of_its_own_that_no_queue_can_have() {
        let tags: Vec<Tag> = families("courier").into_iter().map(|(tag, _)| tag).collect();
        for (i, tag) in tags.iter().enumerate() {
            assert!(tag.name().starts_with('_') && !is_queue_name(tag.name()), "{tag:?}");
            assert!(!tags[i + 1..].contains(tag), "{tag:?} twice");
        }
        // A queue's keys carry its name as their tag.
        assert_eq!(hash_tag(&Keys::new("courier", "auth").settings()), Some("auth"));
    }

    #[test]
    fn the_layout_before_tags_is_each_family_under_the_bare_prefix() {
        let id: Uuid = "0190f5a3-1c2d-7e4f-8a6b-1c2d3e4f5a6b".parse().unwrap();
        assert_eq!(
            RegistryKeys::under("courier").all(),
            ["courier:queues", "courier:queue-numbers", "courier:queue-names", "courier:queue-numbers-since"]
        );
        assert_eq!(
            TokenKeys::under("courier").all(),
            [
                "courier:tokens",
                "courier:token-names",
                "courier:token-used",
                "courier:tokens-version",
                "courier:auth-enforced"
            ]
        );
        assert_eq!(KindKeys::under("courier").all(), ["courier:kinds", "courier:kinds-version"]);
        let topics = TopicKeys::under("courier");
        assert_eq!(
            [topics.topics(), topics.topic("t"), topics.stats("t")],
            ["courier:topics", "courier:topic:t", "courier:topic-stats:t"]
        );
        let workers = WorkerKeys::under("courier");
        assert_eq!([workers.index(), workers.worker("w")], ["courier:workers", "courier:worker:w"]);
        let workflows = WorkflowKeys::under("courier");
        assert_eq!(
            [
                workflows.list(),
                workflows.running(),
                workflows.workflow(&id),
                workflows.lock(&id),
                workflows.idempotency("ab")
            ],
            [
                "courier:workflows".to_string(),
                "courier:workflows:running".into(),
                format!("courier:wf:{id}"),
                format!("courier:wf:{id}:lock"),
                "courier:wf-idem:ab".into()
            ]
        );
    }
}
