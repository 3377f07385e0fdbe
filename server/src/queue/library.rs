//! The queue's Lua scripts as one Redis Functions library (`FUNCTION LOAD`, Redis 7.0 or later):
//! Redis defines the helpers the scripts share once, as it loads the library, where an `EVALSHA`
//! defined all of them again on every call (64,000 instructions a call: docs/benchmark-notes.md,
//! "Ninth step").
//!
//! The library's name and its functions' carry a hash of its whole source, so that processes of
//! two versions of Courier on one Redis each call their own (each version leaves its library in
//! Redis: README, "Redis"). A process loads it as it starts; a Redis that lost it since (a
//! restart without persistence, `FUNCTION FLUSH`, a new cluster master) answers "Function not
//! found", and the call loads it (on every master of a cluster) and is sent again.
//!
//! A function's body is the script's file as it was written for `EVAL`: `KEYS` and `ARGV` are
//! the call's (library locals that `call.lua`'s `begin_call` sets), and each call starts with
//! the per-call state of the helpers made afresh. While Redis loads a library its code sees none
//! of Lua's libraries (`math`, `string`, `table`): the helpers' top level only defines.

use redis::{Cmd, FromRedisValue, RedisError, RedisResult, ToRedisArgs};
use std::sync::Arc;

/// What every call of the library's functions does first.
const BEGIN_CALL: &str = include_str!("call.lua");

/// Stands for the library's name in its source until the source's hash names it.
const NAME: &str = "{library}";

/// What a function may do, which Redis checks before it runs (function flags). Every function's
/// keys may be of several slots of one node, as `EVAL`'s could (`allow-cross-slot-keys`: the
/// keys of a queue share its hash tag, and a script's keys are its queue's).
#[derive(Clone, Copy)]
pub(super) enum Access {
    /// Writes, and is refused whole while Redis is over its `maxmemory` (or cannot persist):
    /// never applied in part.
    Writes,
    /// Writes, even over `maxmemory`: what it writes frees memory, or keeps what runs running
    /// (a lease renewed, an entry handed back, a queue looked at), as a script could whose first
    /// write was not one that grows memory.
    WritesEvenOom,
    /// Only reads (`no-writes`).
    Reads,
}

impl Access {
    fn flags(self) -> &'static str {
        match self {
            Access::Writes => "{'allow-cross-slot-keys'}",
            Access::WritesEvenOom => "{'allow-cross-slot-keys', 'allow-oom'}",
            Access::Reads => "{'allow-cross-slot-keys', 'no-writes'}",
        }
    }
}

/// The library's source and name, shared by its functions.
pub(super) struct Library {
    name: String,
    source: String,
}

impl Library {
    /// A library of `helpers` (in the order given: a Lua local must be defined before its first
    /// use) and `scripts`: each a function's name, the body of its script and what it may do.
    pub(super) fn new(helpers: &[&str], scripts: &[(&str, &str, Access)]) -> Arc<Library> {
        let mut code = String::from(
            "-- The keys and arguments of the call running now (begin_call sets them).\nlocal KEYS, ARGV\n",
        );
        for helper in helpers.iter().chain([&BEGIN_CALL]) {
            code.push_str(helper);
            code.push('\n');
        }
        for (name, body, _) in scripts {
            code.push_str(&format!("local function script_{name}()\n{body}\nend\n"));
        }
        for (function, _, access) in scripts {
            code.push_str(&format!(
                "redis.register_function{{function_name = '{NAME}_{function}', flags = {},\n  \
                 callback = function(keys, args)\n    begin_call(keys, args)\n    \
                 local reply = script_{function}()\n    flush_events()\n    return reply\n  end}}\n",
                access.flags()
            ));
        }
        let hash = sha1_smol::Sha1::from(code.as_bytes()).digest().to_string();
        let name = format!("courier_{}", &hash[..12]);
        let source = format!("#!lua name={name}\n{}", code.replace(NAME, &name));
        Arc::new(Library { name, source })
    }

    /// The library's function `name` (one of the scripts it was made with).
    pub(super) fn function(self: &Arc<Self>, name: &str) -> Function {
        debug_assert!(self.source.contains(&format!("local function script_{name}()\n")), "{name}");
        Function { name: format!("{}_{name}", self.name), library: self.clone() }
    }

    /// Loads the library into Redis (on a cluster, into every master) unless it has it already:
    /// one of the same name is the same source. A load Redis refuses says why (a Redis before
    /// 7.0 has no Functions; an ACL user needs `FUNCTION LOAD` and `FCALL`).
    pub(super) async fn load(&self, conn: &mut impl redis::aio::ConnectionLike) -> RedisResult<()> {
        let loaded: RedisResult<String> =
            redis::cmd("FUNCTION").arg("LOAD").arg(&self.source).query_async(conn).await;
        match loaded {
            Err(error) if !has_detail(&error, |detail| detail.contains("already exists")) => Err(error),
            _ => Ok(()),
        }
    }
}

/// Whether `error` is (or, of a pipeline, holds) a server error whose detail passes `test`.
fn has_detail(error: &RedisError, test: impl Fn(&str) -> bool) -> bool {
    error
        .clone()
        .into_server_errors()
        .is_some_and(|errors| errors.iter().any(|(_, e)| e.details().is_some_and(&test)))
}

/// Whether `error` is (or, of a pipeline, holds) Redis's answer to a call of a function it does not
/// have: nothing of the call ran.
pub(super) fn is_missing(error: &RedisError) -> bool {
    has_detail(error, |detail| detail.starts_with("Function not found"))
}

/// One of the library's functions.
pub(super) struct Function {
    name: String,
    library: Arc<Library>,
}

impl Function {
    /// A call with no keys or arguments yet.
    pub(super) fn prepare_invoke(&self) -> Call<'_> {
        Call { function: self, keys: Vec::new(), args: Vec::new() }
    }

    /// A call with its first key.
    pub(super) fn key<T: ToRedisArgs>(&self, key: T) -> Call<'_> {
        let mut call = self.prepare_invoke();
        call.key(key);
        call
    }
}

/// A call of a function being made: its keys (`KEYS`) and arguments (`ARGV`).
pub(super) struct Call<'f> {
    function: &'f Function,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Call<'_> {
    /// Adds a key (`KEYS[i]`). On a cluster, the first one names the node the call goes to.
    pub(super) fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Adds an argument (`ARGV[i]`).
    pub(super) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// The `FCALL` command, for a pipeline: whoever sends it loads the library when Redis answers
    /// that it lacks it (`is_missing`), as `invoke_async` does.
    pub(super) fn command(&self) -> Cmd {
        let mut fcall = redis::cmd("FCALL");
        fcall.arg(&self.function.name).arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        fcall
    }

    /// Calls the function, loading the library first where Redis has lost it.
    pub(super) async fn invoke_async<T: FromRedisValue>(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> RedisResult<T> {
        let fcall = self.command();
        match fcall.query_async(conn).await {
            Err(error) if is_missing(&error) => self.load_and_send(&fcall, conn).await,
            answer => answer,
        }
    }

    /// Loads the library and sends `command` again. On a cluster the load goes to every master,
    /// and one that fails (another master down) need not stop a call on this one: the load's
    /// error is the answer only where the function is still missing.
    pub(super) async fn load_and_send<T: FromRedisValue>(
        &self,
        command: &Cmd,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> RedisResult<T> {
        let loaded = self.function.library.load(conn).await;
        match command.query_async(conn).await {
            Err(error) if is_missing(&error) => Err(loaded.err().unwrap_or(error)),
            answer => answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{
        HELPERS,
        testing::{echo_task, private_queue},
    };
    use super::*;
    use crate::queue::Enqueued;
    use bytes::Bytes;

    /// Each top-level local of the helpers, with whether it is given a value there.
    fn top_level_locals() -> Vec<(String, bool)> {
        HELPERS
            .iter()
            .flat_map(|helper| helper.lines())
            .filter_map(|line| line.strip_prefix("local "))
            .filter(|rest| !rest.starts_with("function "))
            .flat_map(|rest| {
                let (names, valued) = match rest.split_once('=') {
                    Some((names, _)) => (names, true),
                    None => (rest.split("--").next().unwrap_or(rest), false),
                };
                names.split(',').map(move |name| (name.trim().to_string(), valued)).collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn the_helpers_keep_constants_and_functions_and_each_call_sets_the_rest_afresh() {
        let locals = top_level_locals();
        assert!(locals.len() > 10, "{locals:?}");
        let begin_call = BEGIN_CALL.split_once("local function begin_call").unwrap().1;
        for (name, valued) in locals {
            if valued {
                // A value given as the library loads outlives every call: only constants may.
                assert_eq!(name, name.to_uppercase(), "{name} is a constant, or set by begin_call");
            } else {
                let sets = |line: &str| {
                    line.split_once(" = ")
                        .is_some_and(|(set, _)| set.split(',').any(|set| set.trim() == name))
                };
                assert!(begin_call.lines().any(sets), "begin_call (call.lua) sets {name}");
            }
        }
    }

    #[test]
    fn a_library_is_named_by_its_whole_source() {
        let library = |body: &str, access: Access| Library::new(&HELPERS, &[("depth", body, access)]);
        let one = library("return 1", Access::Reads);
        assert_eq!(one.name, library("return 1", Access::Reads).name);
        // Its scripts, and what they may do, name it.
        assert_ne!(one.name, library("return 2", Access::Reads).name);
        assert_ne!(one.name, library("return 1", Access::Writes).name);
        assert!(one.source.starts_with(&format!("#!lua name={}\n", one.name)));
        assert!(!one.source.contains(NAME));
        let registered =
            format!("function_name = '{}_depth', flags = {{'allow-cross-slot-keys', 'no-writes'}}", one.name);
        assert!(one.source.contains(&registered));
        assert_eq!(one.function("depth").name, format!("{}_depth", one.name));
    }

    /// The events of the queue's stream, in order, each its parts joined by the unit separator.
    async fn events(queue: &crate::queue::Queue) -> Vec<String> {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(queue.keys.events())
            .arg("-")
            .arg("+")
            .query_async(&mut queue.conn.clone())
            .await
            .unwrap();
        let split =
            |(_, events): (String, String)| events.split('\u{1e}').map(str::to_string).collect::<Vec<_>>();
        entries.into_iter().flat_map(|(_, fields)| fields.into_iter().flat_map(split)).collect()
    }

    #[tokio::test]
    async fn a_redis_that_lost_the_library_is_given_it_again_by_the_next_call() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        for stored in 0..2 {
            let () = redis::cmd("FUNCTION").arg("FLUSH").query_async(&mut conn).await.unwrap();
            // A call on its own, then one in the enqueue's pipeline (a due time goes by the script).
            assert_eq!(queue.depth().await.unwrap(), stored);
            let () = redis::cmd("FUNCTION").arg("FLUSH").query_async(&mut conn).await.unwrap();
            let mut task = echo_task(Bytes::from_static(b"later"));
            task.delay_ms = Some(60_000);
            assert_eq!(queue.enqueue(&task).await.unwrap(), Enqueued::Stored);
        }
        assert_eq!(queue.depth().await.unwrap(), 2);
        // Loading it where Redis has it changes nothing, and says nothing is wrong.
        queue.load_scripts().await.unwrap();
        queue.load_scripts().await.unwrap();
        let libraries: Vec<redis::Value> =
            redis::cmd("FUNCTION").arg("LIST").query_async(&mut conn).await.unwrap();
        assert_eq!(libraries.len(), 1, "{libraries:?}");
    }

    #[tokio::test]
    async fn over_its_maxmemory_redis_refuses_a_write_whole_and_still_answers_reads() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let stored = echo_task(Bytes::from_static(b"stored"));
        assert_eq!(queue.enqueue(&stored).await.unwrap(), Enqueued::Stored);
        let before = events(&queue).await;
        let () =
            redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(1).query_async(&mut conn).await.unwrap();
        let mut later = echo_task(Bytes::from_static(b"later"));
        later.delay_ms = Some(60_000);
        let refused = queue.enqueue(&later).await.unwrap_err();
        assert!(refused.to_string().contains("OOM"), "{refused}");
        // Reads still answer, and the queue's view (it may write, and frees nothing) too.
        assert_eq!(queue.depth().await.unwrap(), 1);
        assert_eq!(queue.state().await.unwrap().counts.queued.normal, 1);
        let () =
            redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query_async(&mut conn).await.unwrap();
        // Nothing of the refused enqueue was applied.
        assert_eq!(events(&queue).await, before);
        let exists: bool =
            redis::cmd("EXISTS").arg(queue.keys.task(&later.id)).query_async(&mut conn).await.unwrap();
        assert!(!exists);
    }

    #[tokio::test]
    async fn a_call_starts_with_none_of_the_last_calls_state() {
        let (_redis, queue) = private_queue().await;
        let mut conn = queue.conn.clone();
        let lanes = queue.keys.lanes();
        for n in 1..=3 {
            // A lane Redis lost between two calls is made again by the next (`ensured` is per call).
            let () = redis::cmd("DEL").arg(&lanes).query_async(&mut conn).await.unwrap();
            // (A session goes by the script.)
            let mut task = echo_task(Bytes::from_static(b"now"));
            task.session = Some(format!("s{n}"));
            assert_eq!(queue.enqueue(&task).await.unwrap(), Enqueued::Stored);
            // Each call appends its own event, none of an earlier call's again.
            let written = events(&queue).await;
            assert_eq!(written.len(), n, "{written:?}");
            assert!(written[n - 1].contains(&task.id.to_string()), "{written:?}");
            let kinds: Vec<String> = redis::cmd("SMEMBERS").arg(&lanes).query_async(&mut conn).await.unwrap();
            assert_eq!(kinds, ["echo"]);
        }
    }
}
