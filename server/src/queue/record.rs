//! The task record's field names: one Redis hash per task (`{prefix}:{queue}:task:{id}`),
//! written by the enqueue transaction and the Lua scripts, read by the store. They are named once
//! here; a test reads every script and checks that each field it writes or reads is one of them.
//! The options a task was submitted with are kept together in one of them (`OPTIONS`), each
//! named here all the same (`OPTION_FIELDS`).
//!
//! While a worker process holds a task's lease, only a new start (which writes a new `lease`)
//! may change `kind`, `attempts`, `attempt_started`, `waited`, `payload` and the options (among
//! them `payload_ref` and `wf`):
//! the end of a lease a start without Lua took reads the `lease` field alone and trusts the start
//! for the rest (`Known`, queue/lease.rs). A writer that changes them under a held lease must
//! change the lease too.

/// The task kind.
pub const KIND: &str = "kind";
/// `queued`, `scheduled`, `running`, `retrying`, `succeeded`, `failed` or `cancelled`.
pub const STATUS: &str = "status";
/// Attempts started so far (absent until the first start: 0).
pub const ATTEMPTS: &str = "attempts";
/// Attempts allowed (absent: 1).
pub const MAX_ATTEMPTS: &str = "max_attempts";
/// Submission time, ms since the epoch; `updated`, `started`, `finished` likewise.
pub const CREATED: &str = "created";
/// The record's last change, where no other stamp says it: absent until the first change that
/// is not a start (whose `attempt_started` says it) or an end (whose `finished` does: ends.lua's
/// `end_running` deletes it). Readers take the latest of `updated`, `finished`,
/// `attempt_started` and `created` (the store's `updated_ms`): versions since the thirty-second
/// step of docs/benchmark-notes.md. The thirty-first step's read an ended record without it as
/// changed when it finished, but a running one as changed when it was created; earlier ones read
/// both so (README, "Upgrading").
pub const UPDATED: &str = "updated";
/// The first attempt's start, which attempt 1 of the attempt log says too once it has ended:
/// readers take that when the field is absent (versions since the thirty-third step of
/// docs/benchmark-notes.md). An attempt 1 the record tells (`ATTEMPT_LOG`) started here.
pub const STARTED: &str = "started";
pub const FINISHED: &str = "finished";
/// Progress of the running attempt, 0–100 (empty when none was reported). A success does not
/// write it: a succeeded task's reads as 100.
pub const PROGRESS: &str = "progress";
/// The size in bytes of a payload under a key of its own. A payload kept in the record
/// (`PAYLOAD`) is its own size: since the thirty-fourth step of docs/benchmark-notes.md such a
/// record goes without this field (readers since the thirty-third take the payload's length), and
/// lease.lua reads it only of a payload under its own key.
pub const PAYLOAD_BYTES: &str = "payload_bytes";
/// The payload's content type (absent: `DEFAULT_PAYLOAD_TYPE`).
pub const PAYLOAD_TYPE: &str = "payload_type";
/// What an absent `PAYLOAD_TYPE` reads as (every version since the twenty-ninth step reads it
/// so): a JSON submission's type, which the enqueue leaves out.
pub const DEFAULT_PAYLOAD_TYPE: &str = "application/json";
/// The task under whose id a shared payload (a topic message's) is stored; empty: its own.
pub const PAYLOAD_REF: &str = "payload_ref";
/// The task's own timeout for an attempt, in ms (empty: the kind's).
pub const TIMEOUT_MS: &str = "timeout_ms";
/// `h` or `l`; absent for `n` (normal), as every reader takes it.
pub const PRIORITY: &str = "priority";
/// The ordered session the task belongs to (empty: none).
pub const SESSION: &str = "session";
/// The topic subscription (`topic/name`) that created it (empty: none).
pub const SUBSCRIPTION: &str = "subscription";
/// The Redis key of its `Idempotency-Key` (empty: none).
pub const IDEMPOTENCY_KEY: &str = "idem";
/// When it expires if no attempt has started, ms since the epoch (empty: never).
pub const EXPIRES: &str = "expires";
/// The W3C trace context its attempts continue (`traceparent`): its submission's (empty for a
/// task stored before Courier kept one).
pub const TRACEPARENT: &str = "traceparent";
/// The workflow the task is a step of (empty: none): its events of ending carry it, so that the
/// workflow moves on (`workflows.rs`).
pub const WORKFLOW: &str = "wf";
/// Its step in that workflow: `id`, or `id[n]` for the n-th task of a map.
pub const WORKFLOW_STEP: &str = "wf_step";
/// The token of the lease held on it (absent or empty: none; an end deletes it, ends.lua's
/// `end_running`).
pub const LEASE: &str = "lease";
/// `1` once cancellation was asked of its running attempt.
pub const CANCEL: &str = "cancel";
/// When a retrying task runs next, ms since the epoch. Its attempt's end drops it, and a success
/// drops an earlier attempt's `error` with it (ends.lua's `end_running`).
pub const NEXT_RUN: &str = "next_run";
pub const ERROR: &str = "error";
/// Why it ended as a dead letter (`DeadReason`).
pub const DEAD_REASON: &str = "dead_reason";
/// The result's content type, written by a success unless it is `DEFAULT_RESULT_TYPE` (see
/// `stored_result_type`). Readers take an absent one as that: versions since the thirty-second
/// step of docs/benchmark-notes.md; earlier ones read an absent one as
/// `application/octet-stream` (README, "Upgrading").
pub const RESULT_TYPE: &str = "result_type";
/// What an absent `RESULT_TYPE` reads as.
pub const DEFAULT_RESULT_TYPE: &str = "application/json";

/// What a success writes as its `RESULT_TYPE`: nothing (empty) for `DEFAULT_RESULT_TYPE`, the
/// type of most results, which an absent field reads as: some 80 bytes less a kept task
/// (docs/benchmark-notes.md, thirty-third step).
pub fn stored_result_type(content_type: &str) -> &str {
    if content_type == DEFAULT_RESULT_TYPE { "" } else { content_type }
}

/// A small payload, kept in the record rather than under a key of its own (enqueue.lua): its
/// presence says so. Versions before the twenty-ninth step of docs/benchmark-notes.md read a
/// `payload_inline` flag beside it instead, which versions before the thirty-first step still
/// wrote: records of theirs carry it, and nothing reads it now (README, "Upgrading").
pub const PAYLOAD: &str = "payload";
/// `1` when the result is the payload, unchanged, kept once (under the payload's key, or in the
/// record with it).
pub const RESULT_IS_PAYLOAD: &str = "result_is_payload";
/// A small text result, kept in the record rather than under a key of its own (finish.lua).
pub const RESULT: &str = "result";

/// The worker running (or, until a retry starts, that last ran) an attempt: a built-in worker's
/// id, or a pulling worker's name. Deleted as the task ends, its attempt log naming it, unless
/// the record tells that attempt (`ATTEMPT_LOG`).
pub const WORKER: &str = "worker";
/// When the current (or, until a retry starts, last) attempt started, ms since the epoch.
/// Deleted as the task ends.
pub const ATTEMPT_STARTED: &str = "attempt_started";
/// `-` when the current (or last) attempt took over from a holder that stopped: its end takes no
/// wait sample (empty or absent otherwise: the end samples the wait from the ready entry's id).
pub const WAITED: &str = "waited";
/// The attempt log: field `a:{attempt}` holds that attempt's outcome, start and end (ms), worker
/// and error, separated by the unit separator (ends.lua's `log_attempt`). Since the thirty-fourth
/// step of docs/benchmark-notes.md, a task that ends on a first attempt begun at its first start
/// (no earlier start handed back) logs nothing: its record tells that attempt, by its status,
/// `started`, `finished`, `worker` and `error` (finish.lua's `told`). Its longest value, the
/// entry, was the one that kept a small task's record from staying a listpack, Redis's compact
/// encoding of a hash whose values are all 64 bytes or shorter.
pub const ATTEMPT_LOG: &str = "a:";
/// What separates the parts of an attempt log entry.
pub const ATTEMPT_LOG_SEPARATOR: char = '\u{1f}';

/// The options the task was submitted with (`OPTION_FIELDS`), kept together in one field: a JSON
/// array of their values as text, in `OPTION_FIELDS`' order, `null` (or empty) for one unset and
/// the unset ones at the end left off (`["5"]`: five attempts allowed, nothing else; `[]`: none).
/// Every other field is the record's state. Nothing changes them after the submission but a dead
/// letter's requeue, which drops the expiry. A start reads them as one value where it read nine
/// fields, most of them absent (docs/benchmark-notes.md, "Forty-second step"); by place rather
/// than by name, the value stays short, and a record whose values are all 64 bytes or shorter
/// stays a listpack (`ATTEMPT_LOG`).
///
/// Versions since the forty-second step write it, and none of `OPTION_FIELDS` beside it (but its
/// first, d54a112, which wrote both for older versions: README, "Upgrading"). Records stored
/// before have those as fields of their own and no `options`: every reader takes them so where
/// it is absent (record.lua's `options_of`, store.rs's `from_fields`), or leaves such a record to
/// a script (a start or an end without Lua).
pub const OPTIONS: &str = "options";

/// The fields `OPTIONS` holds, in its order: the ones most tasks set first (record.lua's
/// `OPTION_FIELDS`, which a test compares).
pub const OPTION_FIELDS: [&str; 11] = [
    MAX_ATTEMPTS,
    TIMEOUT_MS,
    EXPIRES,
    PAYLOAD_TYPE,
    PAYLOAD_BYTES,
    SESSION,
    IDEMPOTENCY_KEY,
    PAYLOAD_REF,
    SUBSCRIPTION,
    WORKFLOW,
    WORKFLOW_STEP,
];

/// A record's options (`OPTIONS`), each in its place in `OPTION_FIELDS`.
#[derive(Debug, Default, PartialEq)]
pub struct Options([Option<String>; OPTION_FIELDS.len()]);

/// Where option `field` is in `OPTION_FIELDS`.
fn option_at(field: &str) -> Option<usize> {
    OPTION_FIELDS.iter().position(|option| *option == field)
}

impl Options {
    /// The `OPTIONS` value of `set`: its fields (of `OPTION_FIELDS`) with a value, an empty one
    /// being unset as it is for every reader.
    pub fn write<'a>(set: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
        let mut values: [Option<&str>; OPTION_FIELDS.len()] = Default::default();
        for (field, value) in set {
            let at = option_at(field);
            debug_assert!(at.is_some(), "{field} is not an option");
            if let Some(at) = at.filter(|_| !value.is_empty()) {
                values[at] = Some(value);
            }
        }
        let set = values.iter().rposition(Option::is_some).map_or(0, |last| last + 1);
        serde_json::to_string(&values[..set]).expect("text values")
    }

    /// The options `OPTIONS` holds, as read (None: not as Courier writes them, a JSON array of
    /// at most `OPTION_FIELDS.len()` texts or nulls).
    pub fn read(value: &[u8]) -> Option<Options> {
        let values: Vec<Option<String>> = serde_json::from_slice(value).ok()?;
        if values.len() > OPTION_FIELDS.len() {
            return None;
        }
        let mut options = Options::default();
        for (place, value) in options.0.iter_mut().zip(values) {
            *place = value.filter(|value| !value.is_empty());
        }
        Some(options)
    }

    /// The value of option `field`, if set.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.0[option_at(field)?].as_deref()
    }

    /// The value of option `field`, taken out (None: unset).
    pub fn take(&mut self, field: &str) -> Option<String> {
        self.0[option_at(field)?].take()
    }
}

/// Every field a record may have (besides the attempt log's).
pub const FIELDS: [&str; 34] = [
    OPTIONS,
    KIND,
    STATUS,
    ATTEMPTS,
    MAX_ATTEMPTS,
    CREATED,
    UPDATED,
    STARTED,
    FINISHED,
    PROGRESS,
    PAYLOAD_BYTES,
    PAYLOAD_TYPE,
    PAYLOAD_REF,
    PAYLOAD,
    TIMEOUT_MS,
    PRIORITY,
    SESSION,
    SUBSCRIPTION,
    IDEMPOTENCY_KEY,
    EXPIRES,
    TRACEPARENT,
    WORKFLOW,
    WORKFLOW_STEP,
    LEASE,
    CANCEL,
    NEXT_RUN,
    ERROR,
    DEAD_REASON,
    RESULT_TYPE,
    RESULT_IS_PAYLOAD,
    RESULT,
    WORKER,
    ATTEMPT_STARTED,
    WAITED,
];

#[cfg(test)]
mod tests {
    use super::{
        DEFAULT_RESULT_TYPE, FIELDS, MAX_ATTEMPTS, OPTION_FIELDS, Options, SESSION, TIMEOUT_MS,
        stored_result_type,
    };

    #[test]
    fn a_json_result_type_goes_unwritten_and_any_other_is_written_as_it_is() {
        assert_eq!(stored_result_type(DEFAULT_RESULT_TYPE), "");
        // Only the exact default: a type with parameters says more than an absent one would.
        for kept in ["application/json; charset=utf-8", "text/csv", "application/octet-stream"] {
            assert_eq!(stored_result_type(kept), kept);
        }
    }

    #[test]
    fn the_options_are_record_luas_and_read_back_as_written() {
        let lua = include_str!("record.lua");
        let start = lua.find("local OPTION_FIELDS = {").expect("record.lua names the options");
        let table = &lua[start..][..lua[start..].find('}').unwrap()];
        let named: Vec<&str> = table.split('\'').skip(1).step_by(2).collect();
        assert_eq!(named, OPTION_FIELDS);

        // In their places, unset ones (empty) as null and left off at the end; any text survives.
        let written = Options::write([(SESSION, "a/\"b\u{1f}é"), (TIMEOUT_MS, ""), (MAX_ATTEMPTS, "3")]);
        assert_eq!(written, r#"["3",null,null,null,null,"a/\"b\u001fé"]"#);
        let mut read = Options::read(written.as_bytes()).unwrap();
        assert_eq!((read.get(SESSION), read.get(TIMEOUT_MS)), (Some("a/\"b\u{1f}é"), None));
        assert_eq!((read.take(MAX_ATTEMPTS).as_deref(), read.get(MAX_ATTEMPTS)), (Some("3"), None));
        assert_eq!(Options::write([(SESSION, "")]), "[]");
        assert_eq!(Options::read(b"[]"), Some(Options::default()));
        // As Lua's cjson writes them (a requeue writes them again): a slash escaped, an empty one.
        let read = Options::read(br#"["5","",null,null,null,"a\/b"]"#).unwrap();
        assert_eq!(
            (read.get(MAX_ATTEMPTS), read.get(TIMEOUT_MS), read.get(SESSION)),
            (Some("5"), None, Some("a/b"))
        );
        let too_many = format!("[{}]", vec!["null"; OPTION_FIELDS.len() + 1].join(","));
        for unreadable in [&b"{}"[..], b"[3]", b"", b"[", too_many.as_bytes()] {
            assert_eq!(Options::read(unreadable), None, "{}", String::from_utf8_lossy(unreadable));
        }
    }

    /// Every script of the queue, by file name.
    const SCRIPTS: [(&str, &str); 20] = [
        ("cancel.lua", include_str!("cancel.lua")),
        ("claim.lua", include_str!("claim.lua")),
        ("depth.lua", include_str!("depth.lua")),
        ("ends.lua", include_str!("ends.lua")),
        ("enqueue.lua", include_str!("enqueue.lua")),
        ("events.lua", include_str!("events.lua")),
        ("finish.lua", include_str!("finish.lua")),
        ("group.lua", include_str!("group.lua")),
        ("kind_counts.lua", include_str!("kind_counts.lua")),
        ("lease.lua", include_str!("lease.lua")),
        ("progress.lua", include_str!("progress.lua")),
        ("promote.lua", include_str!("promote.lua")),
        ("prune_index.lua", include_str!("prune_index.lua")),
        ("purge.lua", include_str!("purge.lua")),
        ("record.lua", include_str!("record.lua")),
        ("queue_view.lua", include_str!("queue_view.lua")),
        ("release.lua", include_str!("release.lua")),
        ("renew.lua", include_str!("renew.lua")),
        ("requeue.lua", include_str!("requeue.lua")),
        ("session.lua", include_str!("session.lua")),
    ];

    /// The argument lists of the `redis.call`s of `command` in `source`, split at top-level commas.
    fn calls<'a>(source: &'a str, command: &str) -> Vec<Vec<&'a str>> {
        let opening = format!("redis.call('{command}',");
        let mut found = Vec::new();
        let mut rest = source;
        while let Some(at) = rest.find(&opening) {
            let call = &rest[at + "redis.call(".len()..];
            let (mut depth, mut start, mut args) = (0, 0, Vec::new());
            for (i, c) in call.char_indices() {
                match c {
                    '(' | '{' => depth += 1,
                    ')' | '}' if depth == 0 => {
                        args.push(call[start..i].trim());
                        break;
                    }
                    ')' | '}' => depth -= 1,
                    ',' if depth == 0 => {
                        args.push(call[start..i].trim());
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            found.push(args);
            rest = &call[1..];
        }
        found
    }

    /// Whether a key argument names a task record in `source`: a variable or expression built
    /// with `:task:`, or `KEYS[1]` in a script whose first key is the task.
    fn is_task_key(source: &str, key: &str) -> bool {
        key == "task" || key.contains("':task:'") || (key == "KEYS[1]" && source.contains("-- KEYS: task"))
    }

    #[test]
    fn every_field_a_script_touches_is_a_field_of_the_record() {
        let mut checked = 0;
        for (file, source) in SCRIPTS {
            for command in ["HSET", "HMGET", "HGET", "HDEL", "HINCRBY"] {
                for args in calls(source, command) {
                    if !is_task_key(source, args[1]) {
                        continue;
                    }
                    // HSET takes field-value pairs; the others list fields (HINCRBY: one).
                    let fields: Vec<&str> = match command {
                        "HSET" => args[2..].iter().step_by(2).copied().collect(),
                        "HINCRBY" => vec![args[2]],
                        _ => args[2..].to_vec(),
                    };
                    for field in fields {
                        if ["logged", "field", "unpack(log)"].contains(&field) {
                            // The attempt log's field, one per attempt (ATTEMPT_LOG), as
                            // ends.lua's `attempt_log_entry` names it; requeue.lua's list of
                            // them.
                            continue;
                        }
                        if field == "unpack(extra)" {
                            // enqueue.lua's options and small payload (the options are checked
                            // below, through its table of them); finish.lua's optional pairs
                            // (checked below, through `also`).
                            continue;
                        }
                        if field.starts_with("unpack(") && field.contains("_FIELDS") {
                            // A table of field names, checked below.
                            continue;
                        }
                        if field == "..." {
                            // ends.lua's `end_running` and `end_told`: the fields their callers
                            // name, checked below.
                            continue;
                        }
                        if field == "option[1]" {
                            // Named through the script's table of optional fields, checked below.
                            continue;
                        }
                        let name = field.trim_matches('\'');
                        assert!(
                            field.starts_with('\'') && FIELDS.contains(&name),
                            "{file}: {command} touches `{field}`, not a field of record.rs"
                        );
                        checked += 1;
                    }
                }
            }
        }
        // finish.lua adds a record's optional pairs to its HSET with `also(extra, 'field', value)`
        // (and the attempt log's entry as `logged`, its field, as above).
        for (file, source) in SCRIPTS {
            for (at, _) in source.match_indices("also(extra, ") {
                let field = source[at + "also(extra, ".len()..].split(',').next().unwrap();
                if field == "logged" {
                    continue;
                }
                let name = field.trim_matches('\'');
                assert!(
                    field.starts_with('\'') && FIELDS.contains(&name),
                    "{file}: `also` adds `{field}`, not a field of record.rs"
                );
                checked += 1;
            }
        }
        // `end_running(task, 'field', ...)` drops the fields its callers name beside the running
        // ones: literally, or gathered as `dropped[#dropped + 1] = 'field'` (finish.lua).
        for (file, source) in SCRIPTS {
            let named =
                source.match_indices("end_running(").filter(|(at, _)| !source[..*at].ends_with("function "));
            let gathered = source.match_indices("dropped[#dropped + 1] = ");
            for (at, opening) in named.chain(gathered) {
                let line = source[at + opening.len()..].lines().next().unwrap();
                for name in line.split('\'').skip(1).step_by(2) {
                    assert!(
                        FIELDS.contains(&name),
                        "{file}: `{line}` drops `{name}`, not a field of record.rs"
                    );
                    checked += 1;
                }
            }
        }
        // A table of field names (`local NAME_FIELDS = ...`, a statement of its own at the top
        // level: enqueue.lua's optional fields, lease.lua's view, finish.lua's pulled ones) names
        // fields of the record too.
        for (file, source) in SCRIPTS {
            for (at, _) in source.match_indices("\nlocal ").filter(|(at, _)| {
                source[at + 7..].split_once(" = ").is_some_and(|(name, _)| name.ends_with("_FIELDS"))
            }) {
                let statement = &source[at + 1..];
                let end = statement
                    .match_indices('\n')
                    .map(|(i, _)| i)
                    .find(|&i| !statement[i + 1..].starts_with(' '));
                let statement = &statement[..end.unwrap_or(statement.len())];
                for name in statement.split('\'').skip(1).step_by(2) {
                    assert!(
                        FIELDS.contains(&name),
                        "{file}: `{statement}` names `{name}`, not a field of record.rs"
                    );
                    checked += 1;
                }
            }
        }
        // The scripts name dozens of fields: a parser that found none would pass for nothing.
        assert!(checked > 60, "only {checked} fields found in the scripts");
    }
}
