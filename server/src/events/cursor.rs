//! Places in the event streams. Each queue has a stream of its own, in the queue's hash slot, so
//! that the script that changes a task appends its event in the same call (on Redis Cluster as
//! on one node); kinds and workflows have one each. A [`Position`] is a place in one stream (its
//! entry id); a [`Cursor`] is a place in each, and is what a follower is sent as the SSE `id`.
//!
//! A cursor is written `<stream>=<ms>-<seq>` for each stream, comma-separated, streams named by
//! their queue (or `_kinds`, `_workflows`), for example
//! `default=1764561234567-0,reports=1764561234570-3`. A stream it does not name is at its
//! beginning, or at the bare `<ms>-<seq>` it may start with: an id from before the streams were
//! split (one stream for everything) names a place in time, which each stream resumes after.

use std::{collections::BTreeMap, fmt, sync::Arc};

/// The stream of kind declarations, in the kinds' slot.
pub const KINDS_CHANNEL: &str = crate::layout::KINDS.name();
/// The stream of workflow and step changes, in the workflows' slot.
pub const WORKFLOWS_CHANNEL: &str = crate::layout::WORKFLOWS.name();

/// The most streams one cursor names: every queue there may be, and the two of Courier's own.
const MAX_CHANNELS: usize = crate::queues::MAX_QUEUES + 2;

/// Whether `name` names an event stream: a queue's, or one of Courier's own.
pub fn is_channel(name: &str) -> bool {
    app::model::is_queue_name(name) || name == KINDS_CHANNEL || name == WORKFLOWS_CHANNEL
}

/// A place in one stream: an entry's id (milliseconds, sequence) and how far into the entry.
/// One script call writes the events of all the tasks it changed as one entry (events.lua), so
/// an event's place is its entry and its index there; the last event of an entry (and an entry
/// as a whole) is at [`Position::WHOLE`], so that most places are written as the plain entry id
/// `<ms>-<seq>`, and an event before the last of its entry as `<ms>-<seq>.<index>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub(super) u64, pub(super) u64, pub(super) u32);

impl Default for Position {
    fn default() -> Position {
        Position::ZERO
    }
}

impl Position {
    /// The index that stands for an entry's last event, and for the entry as a whole.
    pub const WHOLE: u32 = u32::MAX;
    /// The position before every event.
    pub const ZERO: Position = Position::entry(0, 0);

    /// Entry `<ms>-<seq>` as a whole (or its last event).
    pub const fn entry(ms: u64, seq: u64) -> Position {
        Position(ms, seq, Position::WHOLE)
    }

    /// Event `index` of this position's entry.
    pub fn event(self, index: u32) -> Position {
        Position(self.0, self.1, index)
    }

    /// Parses an entry id as Redis writes it, `<ms>-<seq>` in decimal digits; `None` for
    /// anything else.
    pub fn parse(id: &str) -> Option<Position> {
        let (ms, seq) = id.split_once('-')?;
        Some(Position::entry(digits(ms)?, digits(seq)?))
    }

    /// Parses a place as [`Position`]'s `Display` writes it: an entry id, or an entry id, a dot
    /// and the index of an event before the entry's last.
    pub fn parse_place(text: &str) -> Option<Position> {
        match text.split_once('.') {
            None => Position::parse(text),
            Some((id, index)) => {
                let index = digits(index)?.try_into().ok().filter(|&index| index != Position::WHOLE)?;
                Some(Position::parse(id)?.event(index))
            }
        }
    }

    /// Whether this is an entry as a whole (or its last event).
    pub fn is_whole(self) -> bool {
        self.2 == Position::WHOLE
    }

    /// The entry this place is in, as a whole.
    pub fn whole(self) -> Position {
        Position::entry(self.0, self.1)
    }

    /// The entry id, as Redis reads it.
    pub fn id(self) -> String {
        format!("{}-{}", self.0, self.1)
    }

    /// The first entry that may hold an event after this place: its own entry when events of it
    /// follow, else the next id; `None` after the last id a stream can hold.
    pub fn read_from(self) -> Option<Position> {
        if !self.is_whole() {
            return Some(self.whole());
        }
        match self.1.checked_add(1) {
            Some(seq) => Some(Position::entry(self.0, seq)),
            None => Some(Position::entry(self.0.checked_add(1)?, 0)),
        }
    }
}

/// A number in plain decimal digits.
fn digits(text: &str) -> Option<u64> {
    let plain = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if plain { text.parse().ok() } else { None }
}

impl Position {
    /// Writes the place as `Display` does, into a `String` or a `Formatter`.
    fn write_into(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let mut number = itoa::Buffer::new();
        out.write_str(number.format(self.0))?;
        out.write_char('-')?;
        out.write_str(number.format(self.1))?;
        if !self.is_whole() {
            out.write_char('.')?;
            out.write_str(number.format(self.2))?;
        }
        Ok(())
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_into(f)
    }
}

/// A place in every event stream: the last position taken from each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Where a stream the cursor does not name is.
    base: Position,
    at: BTreeMap<Arc<str>, Position>,
}

impl Cursor {
    /// The place in `channel`'s stream.
    pub fn get(&self, channel: &str) -> Position {
        self.at.get(channel).copied().unwrap_or(self.base)
    }

    /// Moves to `position` in `channel`'s stream.
    pub fn set(&mut self, channel: &Arc<str>, position: Position) {
        match self.at.get_mut(channel) {
            Some(at) => *at = position,
            None => {
                self.at.insert(channel.clone(), position);
            }
        }
    }

    /// Moves to `position` in `channel`'s stream unless the cursor is past it already.
    pub fn advance(&mut self, channel: &Arc<str>, position: Position) {
        if position > self.get(channel) {
            self.set(channel, position);
        }
    }

    /// Moves to each place `other` names that is past this cursor's.
    pub fn merge(&mut self, other: &Cursor) {
        for (channel, position) in self.at.iter_mut() {
            *position = (*position).max(other.get(channel));
        }
        self.base = self.base.max(other.base);
        for (channel, &position) in &other.at {
            self.advance(channel, position);
        }
    }

    /// Whether the cursor is at or past every place `other` names.
    pub fn covers(&self, other: &Cursor) -> bool {
        other.base <= self.base && other.at.iter().all(|(channel, &position)| self.get(channel) >= position)
    }

    /// Whether the cursor names `channel`'s stream (rather than placing it at its base).
    pub fn names(&self, channel: &str) -> bool {
        self.at.contains_key(channel)
    }

    /// The streams the cursor names.
    pub fn channels(&self) -> impl Iterator<Item = &Arc<str>> {
        self.at.keys()
    }

    /// Forgets the streams `keep` refuses (a follower is told only of the streams it reads).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.at.retain(|channel, _| keep(channel));
    }

    /// Reads a cursor as [`Cursor`]'s `Display` writes it; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Cursor, String> {
        let mut cursor = Cursor::default();
        let mut base = None;
        for part in text.split(',') {
            if cursor.at.len() == MAX_CHANNELS {
                return Err(format!("it names more than {MAX_CHANNELS} streams"));
            }
            let (channel, position) = match part.split_once('=') {
                Some((channel, position)) => (Some(channel), position),
                None => (None, part),
            };
            let position = Position::parse_place(position)
                .ok_or_else(|| format!("`{part}` is not `<stream>=<milliseconds>-<sequence>[.<index>]`"))?;
            if position.read_from().is_none() {
                return Err(format!("`{part}` is the last id there can be: no event can follow it"));
            }
            match channel {
                None if base.is_none() => base = Some(position),
                None => return Err("it has two places without a stream".into()),
                Some(channel) if !is_channel(channel) => {
                    return Err(format!(
                        "`{channel}` names no stream: a queue's name, `_kinds` or `_workflows`"
                    ));
                }
                // Named twice: the later of its places.
                Some(channel) => {
                    let at = cursor.at.entry(channel.into()).or_insert(position);
                    *at = (*at).max(position);
                }
            }
        }
        cursor.base = base.unwrap_or_default();
        Ok(cursor)
    }
}

impl From<Position> for Cursor {
    /// Every stream at `position`.
    fn from(base: Position) -> Cursor {
        Cursor { base, at: BTreeMap::new() }
    }
}

impl Cursor {
    /// The cursor as `Display` writes it, the SSE `id` of every event a follower is sent: written
    /// straight into a string of its size, where `to_string` went through `fmt`'s machinery and
    /// grew its string as it went (a fifth of a fanout server's instructions: docs/benchmark-notes.md,
    /// "Thirty-sixth step").
    pub fn id(&self) -> String {
        let mut id = String::with_capacity(48 * (self.at.len() + 1));
        // Writing into a `String` does not fail.
        let _ = self.write_into(&mut id);
        id
    }

    /// Writes the cursor as `Display` does, into a `String` or a `Formatter`.
    fn write_into(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let mut named = self.at.iter().filter(|&(_, &position)| position != self.base).peekable();
        let mut first = true;
        if self.base != Position::ZERO || named.peek().is_none() {
            self.base.write_into(out)?;
            first = false;
        }
        for (channel, position) in named {
            if !std::mem::take(&mut first) {
                out.write_char(',')?;
            }
            out.write_str(channel)?;
            out.write_char('=')?;
            position.write_into(out)?;
        }
        Ok(())
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_into(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(name: &str) -> Arc<str> {
        name.into()
    }

    #[test]
    fn stream_positions_compare_numerically() {
        assert!(Position::parse("10-0") > Position::parse("9-5"));
        assert!(Position::parse("10-10") > Position::parse("10-9"));
        assert_eq!(Position::parse("12-3"), Some(Position::entry(12, 3)));
        assert_eq!(Position::entry(12, 3).to_string(), "12-3");
    }

    #[test]
    fn only_ids_redis_writes_are_positions() {
        for id in
            ["12", "x-1", "1-x", "-1", "1-", "+1-1", "1-+1", " 1-1", "1-1-1", "18446744073709551616-0", ""]
        {
            assert_eq!(Position::parse(id), None, "{id:?}");
        }
        assert_eq!(
            Position::parse("18446744073709551615-18446744073709551615"),
            Some(Position::entry(u64::MAX, u64::MAX))
        );
    }

    #[test]
    fn the_last_possible_id_has_no_successor() {
        assert_eq!(Position::entry(7, 1).read_from(), Some(Position::entry(7, 2)));
        assert_eq!(Position::entry(7, u64::MAX).read_from(), Some(Position::entry(8, 0)));
        assert_eq!(Position::entry(u64::MAX, u64::MAX).read_from(), None);
        // Within an entry, what follows is the rest of that entry.
        assert_eq!(
            Position::entry(u64::MAX, u64::MAX).event(3).read_from(),
            Some(Position::entry(u64::MAX, u64::MAX))
        );
    }

    #[test]
    fn an_event_before_the_last_of_its_entry_is_placed_by_its_index() {
        let entry = Position::entry(12, 3);
        let (first, second) = (entry.event(0), entry.event(1));
        assert!(first < second && second < entry && entry < Position::entry(12, 4));
        assert!(Position::entry(12, 2) < first);
        assert_eq!((first.to_string(), entry.to_string()), ("12-3.0".to_string(), "12-3".to_string()));
        assert_eq!(second.id(), "12-3", "Redis is given the entry's id");
        for text in ["12-3.1", "12-3", "0-0.0"] {
            assert_eq!(Position::parse_place(text).unwrap().to_string(), text);
        }
        // The last event's index is the entry itself: it is never written as an index.
        for text in ["12-3.", "12-3.x", "12-3.-1", "12-3.4294967295", "12-3.4294967296", "12-3.1.1", ".1"] {
            assert_eq!(Position::parse_place(text), None, "{text:?}");
        }
        assert_eq!(Position::parse("12-3.1"), None, "an entry id is never an event's place");
        let cursor = Cursor::parse("default=12-3.1").unwrap();
        assert_eq!(cursor.get("default"), second);
        assert_eq!(cursor.to_string(), "default=12-3.1");
    }

    #[test]
    fn a_cursor_names_each_stream_it_moved_in_and_reads_back_the_same() {
        let mut cursor = Cursor::default();
        assert_eq!(cursor.to_string(), "0-0");
        cursor.set(&channel("reports"), Position::entry(17, 2));
        cursor.set(&channel("default"), Position::entry(15, 0));
        cursor.set(&channel(WORKFLOWS_CHANNEL), Position::entry(16, 1));
        cursor.set(&channel("idle"), Position::ZERO);
        let text = cursor.to_string();
        assert_eq!(text, "_workflows=16-1,default=15-0,reports=17-2");
        // The SSE id, written without `fmt`, is the same text.
        assert_eq!(cursor.id(), text);
        cursor.set(&channel("default"), Position::entry(u64::MAX, u64::MAX).event(u32::MAX - 1));
        let widest =
            "_workflows=16-1,default=18446744073709551615-18446744073709551615.4294967294,reports=17-2";
        assert_eq!((cursor.id(), cursor.to_string()), (widest.to_string(), widest.to_string()));
        cursor.set(&channel("default"), Position::entry(15, 0));
        let read = Cursor::parse(&text).unwrap();
        assert_eq!(read.to_string(), text);
        assert_eq!(read.get("reports"), Position::entry(17, 2));
        assert_eq!(read.get("idle"), Position::ZERO, "a stream it does not name is at its beginning");
    }

    #[test]
    fn an_id_from_one_stream_for_everything_places_every_stream_at_its_time() {
        let old = Cursor::parse("1764561234567-3").unwrap();
        assert_eq!(old.get("default"), Position::entry(1_764_561_234_567, 3));
        assert_eq!(old.get("reports"), Position::entry(1_764_561_234_567, 3));
        let mut moved = old.clone();
        moved.set(&channel("reports"), Position::entry(1_764_561_234_600, 0));
        assert_eq!(moved.to_string(), "1764561234567-3,reports=1764561234600-0");
        assert_eq!(moved.id(), "1764561234567-3,reports=1764561234600-0");
        assert_eq!((Cursor::default().id(), old.id()), ("0-0".to_string(), "1764561234567-3".to_string()));
        assert_eq!(Cursor::parse(&moved.to_string()).unwrap(), moved);
    }

    #[test]
    fn a_cursor_that_could_not_have_been_sent_is_refused_saying_why() {
        for (text, why) in [
            ("", "not `<stream>"),
            ("reports", "not `<stream>"),
            ("reports=12", "not `<stream>"),
            ("Reports=1-0", "names no stream"),
            ("_other=1-0", "names no stream"),
            ("1-0,2-0", "two places"),
            ("a=18446744073709551615-18446744073709551615", "last id"),
            ("a=1-0,", "not `<stream>"),
        ] {
            let error = Cursor::parse(text).expect_err(text);
            assert!(error.contains(why), "{text}: {error}");
        }
        assert_eq!(Cursor::parse("a=2-0,a=1-0").unwrap().to_string(), "a=2-0", "named twice: the later");
        let many: Vec<String> = (0..MAX_CHANNELS + 1).map(|n| format!("q{n}=1-0")).collect();
        assert!(Cursor::parse(&many.join(",")).unwrap_err().contains("more than"));
    }

    #[test]
    fn a_cursor_covers_another_at_or_before_it_in_every_stream() {
        let mut seen = Cursor::default();
        seen.set(&channel("a"), Position::entry(10, 0));
        seen.set(&channel("b"), Position::entry(5, 0));
        let mut asked = Cursor::default();
        asked.advance(&channel("a"), Position::entry(9, 0));
        assert!(seen.covers(&asked));
        asked.advance(&channel("b"), Position::entry(6, 0));
        assert!(!seen.covers(&asked));
        asked.advance(&channel("b"), Position::entry(4, 0));
        assert_eq!(asked.get("b"), Position::entry(6, 0), "advance never goes back");
        assert!(!seen.covers(&Cursor::from(Position::entry(1, 0))), "a base covers the streams it names not");
    }
}
