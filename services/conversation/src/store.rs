//! Conversations, messages and the outbox. SQL here runs unchanged on SQLite and PostgreSQL.
//!
//! Every write that others must hear about is durable before it is announced, and announced
//! until delivery accepts it: a message is its own announcement (the relay publishes messages
//! in `position` order from its stored cursor), and a read change adds an outbox row in the
//! same transaction.

use jack_proto::conversation::v1 as pb;
use jack_proto::delivery::v1 as events;
use jack_proto::prost::Message as _;
use jack_runtime::db::{Database, Engine};
use jack_runtime::{ids, time};
use sqlx::any::AnyRow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::{Any, AnyConnection, AssertSqlSafe, Connection as _, Row as _, Transaction};

use crate::error::ConversationError;

type Result<T, E = ConversationError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
    /// The conversations the message writer has written to; held for a whole batch, which
    /// also keeps batches one at a time.
    known: Arc<tokio::sync::Mutex<HashMap<String, Known>>>,
}

/// A conversation as the message writer sees it. Its owner never changes. Its last seq is
/// kept up to date by the writer on SQLite (the only one adding messages there) and read
/// again for every batch on PostgreSQL (replicas share the table).
#[derive(Debug, Clone)]
struct Known {
    guest_id: String,
    hotel_id: String,
    last_seq: i64,
}

/// The SQLite write connection as the message writer keeps it between batches that follow
/// each other: taking it from the pool and giving it back cost a round trip to SQLite's
/// thread each (the pool pings a connection it gets back), on the path of every batch.
#[derive(Debug)]
pub struct Held {
    conn: sqlx::pool::PoolConnection<Any>,
    since: std::time::Instant,
}

/// The longest the message writer keeps the write connection while batches keep coming:
/// the service's other writes wait for it meanwhile.
const HOLD_AT_MOST: std::time::Duration = std::time::Duration::from_millis(20);

/// Conversations the writer remembers; the map starts afresh beyond this.
const CONVERSATIONS_KNOWN: usize = 100_000;

/// How an item of a batch is answered.
enum Plan {
    Done(Box<Result<Added>>),
    New,
    SameAs(usize),
}

/// What a batch's plan reads before it numbers the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Stored messages with the batch's client ids (resends), and every conversation's last
    /// seq from the table.
    Stored,
    /// Neither: no client id is taken to be stored, and remembered conversations are not
    /// read again (the INSERT's constraints catch either being wrong).
    Remembered,
}

/// A batch decided and numbered, before its INSERT.
struct Planned {
    plans: Vec<Plan>,
    /// The new messages, numbered, at their items' places.
    finals: Vec<Option<pb::Message>>,
}

impl Planned {
    fn new_messages(&self) -> Vec<&pb::Message> {
        self.finals.iter().flatten().collect()
    }

    /// The batch's answers once its messages are stored with these positions; the stored
    /// seqs become their conversations' last.
    fn committed(
        self,
        known: &mut HashMap<String, Known>,
        (positions, span): (Vec<i64>, Option<(i64, i64)>),
    ) -> Committed {
        let mut messages: Vec<(i64, pb::Message)> =
            self.finals.iter().flatten().zip(positions).map(|(m, p)| (p, m.clone())).collect();
        messages.sort_by_key(|(p, _)| *p);
        for (_, m) in &messages {
            if let Some(k) = known.get_mut(&m.conversation_id) {
                k.last_seq = k.last_seq.max(m.seq);
            }
        }
        let finals = self.finals;
        let results = self
            .plans
            .into_iter()
            .enumerate()
            .map(|(i, plan)| match plan {
                Plan::Done(result) => *result,
                Plan::New => Ok(Added::New(finals[i].clone().expect("numbered"))),
                Plan::SameAs(first) => Ok(Added::Duplicate(finals[first].clone().expect("numbered"))),
            })
            .collect();
        Committed { results, messages, span }
    }
}

/// What a batch of [`Store::add_messages`] did: an answer per item, and the new messages
/// with their positions, in commit order (for the relay).
#[derive(Debug)]
pub struct Committed {
    pub results: Vec<Result<Added>>,
    pub messages: Vec<(i64, pb::Message)>,
    /// The positions the batch took, first and last (padding rows take positions too), when
    /// they follow each other; `None` when they do not or nothing was inserted.
    pub span: Option<(i64, i64)>,
}

/// What `add_guest_message` did.
#[derive(Debug)]
pub enum Added {
    New(pb::Message),
    Duplicate(pb::Message),
}

/// A conversation's last seq: the highest seq among its messages (0 before the first), one
/// index seek. `$conversations` names the conversations table in the query.
macro_rules! last_seq {
    ($conversations:literal) => {
        concat!(
            "COALESCE((SELECT MAX(m.seq) FROM messages m WHERE m.conversation_id = ",
            $conversations,
            ".conversation_id), 0)"
        )
    };
}

macro_rules! select_conversation {
    ($where:literal) => {
        concat!(
            "SELECT conversation_id, hotel_id, guest_id, channel, ",
            last_seq!("conversations"),
            " AS last_seq, guest_read_seq, butler_read_seq, created_at_ms FROM conversations WHERE ",
            $where
        )
    };
}

macro_rules! select_message {
    ($where:literal) => {
        concat!(
            "SELECT position, message_id, conversation_id, seq, role, kind, content, client_message_id, payload, reply_to_message_id, rich, hotel_id, guest_id, created_at_ms FROM messages WHERE ",
            $where
        )
    };
}

/// Placeholders for statements with many parameters. SQLite gets anonymous `?`: sqlx looks a
/// numbered name up by scanning all of them, which is quadratic in their count. PostgreSQL
/// gets `$1, $2, …`.
struct Params {
    engine: Engine,
    next: usize,
}

impl Params {
    fn new(engine: Engine) -> Self {
        Self { engine, next: 1 }
    }

    fn list(&mut self, count: usize) -> String {
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(match self.engine {
                Engine::Sqlite => "?".to_owned(),
                Engine::Postgres => format!("${}", self.next),
            });
            self.next += 1;
        }
        out.join(", ")
    }
}

/// Lists are padded (by repeating their last value) to a power of two, so that a few
/// statement shapes serve every batch size and stay in the prepared-statement cache.
fn padded<T: Clone>(mut values: Vec<T>) -> Vec<T> {
    if let Some(last) = values.last().cloned() {
        values.resize(values.len().next_power_of_two().max(4), last);
    }
    values
}

/// A `LIMIT` is written into the SQL rather than bound: SQLite re-prepares a statement every
/// time a new value is bound to its `LIMIT` (its planner uses the value). Rounded up to a
/// power of two, so that a few shapes stay prepared; callers truncate to what they asked.
fn limit_shape(limit: u32) -> u32 {
    limit.max(1).next_power_of_two()
}

/// The most messages one INSERT statement carries (13 parameters each).
const INSERT_ROWS: usize = 128;

fn conversation_from_row(row: &AnyRow) -> Result<pb::Conversation> {
    Ok(pb::Conversation {
        conversation_id: row.try_get("conversation_id")?,
        hotel_id: row.try_get("hotel_id")?,
        guest_id: row.try_get("guest_id")?,
        channel: row.try_get("channel")?,
        last_seq: row.try_get("last_seq")?,
        guest_read_seq: row.try_get("guest_read_seq")?,
        butler_read_seq: row.try_get("butler_read_seq")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

/// A message row with its global position (the WatchMessages cursor).
pub fn message_from_row(row: &AnyRow) -> Result<(i64, pb::Message)> {
    let rich: Option<Vec<u8>> = row.try_get("rich")?;
    let mut message = match rich {
        Some(bytes) => pb::Message::decode(bytes.as_slice()).map_err(|e| ConversationError::Corrupt(e.to_string()))?,
        None => pb::Message::default(),
    };
    message.message_id = row.try_get("message_id")?;
    message.conversation_id = row.try_get("conversation_id")?;
    message.seq = row.try_get("seq")?;
    message.role = i32::try_from(row.try_get::<i64, _>("role")?).unwrap_or_default();
    message.kind = i32::try_from(row.try_get::<i64, _>("kind")?).unwrap_or_default();
    message.content = row.try_get("content")?;
    message.client_message_id = row.try_get("client_message_id")?;
    message.payload = row.try_get("payload")?;
    message.reply_to_message_id = row.try_get("reply_to_message_id")?;
    message.hotel_id = row.try_get("hotel_id")?;
    message.guest_id = row.try_get("guest_id")?;
    message.created_at_ms = row.try_get("created_at_ms")?;
    Ok((row.try_get("position")?, message))
}

/// The rich parts of a message, stored as one protobuf blob (NULL for plain text).
fn rich_blob(message: &pb::Message) -> Option<Vec<u8>> {
    let rich = pb::Message {
        quick_replies: message.quick_replies.clone(),
        buttons: message.buttons.clone(),
        cards: message.cards.clone(),
        attachments: message.attachments.clone(),
        ..Default::default()
    };
    (rich != pb::Message::default()).then(|| rich.encode_to_vec())
}

/// A page of a conversation's messages (see [`Store::page`]).
#[derive(Debug)]
pub struct Page {
    /// The conversation's guest.
    pub guest_id: String,
    pub last_seq: i64,
    pub messages: Vec<pb::Message>,
    /// Whether more messages lie beyond the page, in its direction.
    pub has_more: bool,
}

/// On PostgreSQL, the lock every transaction that takes message or outbox positions holds
/// (see [`Store::begin`]).
const MESSAGE_LOCK: &str = "SELECT pg_advisory_xact_lock(7143001)";

pub fn event_for(conversation: &str, hotel_id: &str, guest_id: &str, kind: events::event::Kind) -> events::Event {
    events::Event {
        conversation_id: conversation.to_owned(),
        hotel_id: hotel_id.to_owned(),
        guest_id: guest_id.to_owned(),
        at_ms: time::now_ms(),
        position: 0,
        kind: Some(kind),
    }
}

impl Store {
    /// Whether the database answers (readiness).
    pub async fn answers(&self) -> bool {
        self.db.answers().await
    }

    pub fn new(db: Database) -> Self {
        Self { db, known: Arc::default() }
    }

    pub async fn conversation(&self, conversation_id: &str) -> Result<Option<pb::Conversation>> {
        let row = sqlx::query(select_conversation!("conversation_id = $1"))
            .bind(conversation_id)
            .fetch_optional(&self.db.read)
            .await?;
        row.as_ref().map(conversation_from_row).transpose()
    }

    /// The guest's active conversation on the channel, created when asked and missing.
    pub async fn active_conversation(
        &self,
        hotel_id: &str,
        guest_id: &str,
        channel: &str,
        create: bool,
    ) -> Result<Option<pb::Conversation>> {
        let find = select_conversation!("guest_id = $1 AND channel = $2 AND status = 'active'");
        let row = sqlx::query(find).bind(guest_id).bind(channel).fetch_optional(&self.db.read).await?;
        if let Some(row) = row {
            return conversation_from_row(&row).map(Some);
        }
        if !create {
            return Ok(None);
        }
        // Committed together with the other writes of the moment: new guests share disk syncs.
        let (hotel_id, guest_id, channel) = (hotel_id.to_owned(), guest_id.to_owned(), channel.to_owned());
        let row = self
            .db
            .write_grouped(move |conn| {
                let (hotel_id, guest_id, channel) = (hotel_id.clone(), guest_id.clone(), channel.clone());
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO conversations (conversation_id, hotel_id, guest_id, channel, status, created_at_ms)
                         VALUES ($1, $2, $3, $4, 'active', $5) ON CONFLICT DO NOTHING",
                    )
                    .bind(ids::new_id("cnv"))
                    .bind(hotel_id)
                    .bind(&guest_id)
                    .bind(&channel)
                    .bind(time::now_ms())
                    .execute(&mut *conn)
                    .await?;
                    sqlx::query(find).bind(guest_id).bind(channel).fetch_optional(&mut *conn).await
                })
            })
            .await?;
        row.as_ref().map(conversation_from_row).transpose()
    }

    async fn begin(&self) -> Result<Transaction<'static, Any>> {
        let mut tx = self.db.write.begin().await?;
        if self.db.engine == Engine::Postgres {
            // Message and outbox positions must become visible in order, or a watcher (or
            // the relay, which deletes up to what it published) could pass over a row
            // committed late with a smaller position: serialize these writes.
            sqlx::query(MESSAGE_LOCK).execute(&mut *tx).await?;
        }
        Ok(tx)
    }

    /// Commits messages: each gets the next seq of its conversation and a `position` after
    /// every committed message, which is how the relay and WatchMessages find it. Each item
    /// is `(message, owner)`: `message` carries everything but ids, seq, owner and time,
    /// which are filled in here; when `owner` is given the conversation must belong to that
    /// guest. An item refused for its own reasons (a reused client id, a conversation not
    /// found) writes nothing and does not affect the others; a storage failure fails the
    /// whole batch.
    ///
    /// The batch costs a fixed number of statements, not a few per message: one lookup of
    /// resends, one of the conversations, one insert of the messages (on SQLite usually the
    /// insert alone, see below). A conversation's last seq is the highest seq among its
    /// messages, so nothing else is written.
    ///
    /// On PostgreSQL this runs in one transaction under the message lock (replicas share the
    /// table). On SQLite this store's writer is the only one adding messages, so it
    /// remembers each conversation's last seq, and it first writes a batch as if none of its
    /// client ids were stored: a batch that fits one INSERT is then committed by that
    /// statement alone — one round trip to SQLite's thread instead of a lookup, BEGIN,
    /// INSERT and COMMIT, and no statement journal. A resend (its client id is stored) or a
    /// remembered seq that is wrong (another process writing the same file) makes the INSERT
    /// fail whole on a unique constraint; the batch is then planned again with the resend
    /// lookup and the seqs read from the table.
    pub async fn add_messages(&self, items: Vec<(pb::Message, Option<String>)>) -> Result<Committed> {
        self.add_messages_holding(items, &mut None).await
    }

    /// [`Store::add_messages`] for the message writer, which keeps the SQLite write
    /// connection in `held` between batches that follow each other (see [`Held`]).
    pub async fn add_messages_holding(
        &self,
        items: Vec<(pb::Message, Option<String>)>,
        held: &mut Option<Held>,
    ) -> Result<Committed> {
        // Held for the whole batch: batches are written one at a time.
        let mut known = self.known.lock().await;
        let outcome = match self.db.engine {
            Engine::Postgres => self.add_in_transaction(&mut known, items).await,
            Engine::Sqlite => self.add_as_only_writer(&mut known, items, held).await,
        };
        if outcome.is_err() {
            // What a failed write did is not certain: read the seqs from the table again.
            known.clear();
            *held = None;
        }
        outcome
    }

    async fn add_in_transaction(
        &self,
        known: &mut HashMap<String, Known>,
        items: Vec<(pb::Message, Option<String>)>,
    ) -> Result<Committed> {
        let mut tx = self.begin().await?;
        let planned = Self::plan(Engine::Postgres, &mut tx, known, &items, Lookup::Stored).await?;
        let inserted = Self::insert_messages(Engine::Postgres, &mut tx, &planned.new_messages()).await?;
        tx.commit().await?;
        Ok(planned.committed(known, inserted))
    }

    async fn add_as_only_writer(
        &self,
        known: &mut HashMap<String, Known>,
        items: Vec<(pb::Message, Option<String>)>,
        held: &mut Option<Held>,
    ) -> Result<Committed> {
        if held.as_ref().is_some_and(|h| h.since.elapsed() >= HOLD_AT_MOST) {
            // Let the service's other writes (new conversations, read marks) in.
            *held = None;
        }
        let conn = match held {
            Some(h) => &mut h.conn,
            None => {
                &mut held.insert(Held { conn: self.db.write.acquire().await?, since: std::time::Instant::now() }).conn
            }
        };
        // Resends are rare and remembered seqs are right: first write the batch as if no
        // client id were stored, which costs the INSERT alone. A stored client id (or a seq
        // another writer took) makes that statement fail whole, writing nothing; then the
        // batch is planned again with the resend lookup and its conversations' seqs read.
        let planned = Self::plan(Engine::Sqlite, conn, known, &items, Lookup::Remembered).await?;
        match Self::insert_alone(conn, &planned.new_messages()).await {
            Ok(inserted) => return Ok(planned.committed(known, inserted)),
            Err(ConversationError::Storage(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                tracing::debug!(error = %e, "a batch met a stored client id or seq; planning it again");
            }
            Err(e) => return Err(e),
        }
        let planned = Self::plan(Engine::Sqlite, conn, known, &items, Lookup::Stored).await?;
        let inserted = Self::insert_alone(conn, &planned.new_messages()).await?;
        Ok(planned.committed(known, inserted))
    }

    /// The SQLite writer's INSERT: one statement commits itself (no BEGIN/COMMIT, no
    /// statement journal); several must commit together.
    async fn insert_alone(conn: &mut AnyConnection, new: &[&pb::Message]) -> Result<(Vec<i64>, Option<(i64, i64)>)> {
        if new.len() <= INSERT_ROWS {
            return Self::insert_messages(Engine::Sqlite, conn, new).await;
        }
        let mut tx = conn.begin().await?;
        let inserted = Self::insert_messages(Engine::Sqlite, &mut tx, new).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// Decides each item of a batch — a resend, a refusal, or a new message — and numbers
    /// the new ones in batch order (see [`Lookup`] for what is read first).
    async fn plan(
        engine: Engine,
        conn: &mut AnyConnection,
        known: &mut HashMap<String, Known>,
        items: &[(pb::Message, Option<String>)],
        lookup: Lookup,
    ) -> Result<Planned> {
        let existing = match lookup {
            Lookup::Stored => Self::stored_by_client_id(engine, conn, items).await?,
            Lookup::Remembered => HashMap::new(),
        };
        Self::learn_conversations(engine, conn, known, items, lookup == Lookup::Stored).await?;

        let mut plans = Vec::with_capacity(items.len());
        let mut new_in_batch: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, (message, owner)) in items.iter().enumerate() {
            let conversation = message.conversation_id.as_str();
            let key = message.client_message_id.as_deref().map(|c| (conversation, c));
            let resend = |stored: &pb::Message| {
                let same = crate::domain::same_message(stored, message);
                if same { Ok(()) } else { Err(ConversationError::ClientMessageIdReused) }
            };
            let plan = match (
                key.and_then(|k| existing.get(&(k.0.to_owned(), k.1.to_owned()))),
                key.and_then(|k| new_in_batch.get(&k)),
            ) {
                (Some(stored), _) => Plan::Done(Box::new(resend(stored).map(|()| Added::Duplicate(stored.clone())))),
                (None, Some(&first)) => match resend(&items[first].0) {
                    Ok(()) => Plan::SameAs(first),
                    Err(e) => Plan::Done(Box::new(Err(e))),
                },
                (None, None) => match known.get(conversation) {
                    Some(k) if owner.as_deref().is_none_or(|o| o == k.guest_id) => {
                        if let Some(key) = key {
                            new_in_batch.insert(key, i);
                        }
                        Plan::New
                    }
                    _ => Plan::Done(Box::new(Err(ConversationError::ConversationNotFound))),
                },
            };
            plans.push(plan);
        }
        drop(new_in_batch);

        let now = time::now_ms();
        let mut next_seq: HashMap<String, i64> = HashMap::new();
        let mut finals: Vec<Option<pb::Message>> = vec![None; items.len()];
        for (i, (message, _)) in items.iter().enumerate() {
            if let Plan::New = plans[i] {
                let mut message = message.clone();
                let k = &known[message.conversation_id.as_str()];
                let seq = next_seq.entry(message.conversation_id.clone()).or_insert(k.last_seq);
                *seq += 1;
                message.seq = *seq;
                message.guest_id = k.guest_id.clone();
                message.hotel_id = k.hotel_id.clone();
                message.message_id = ids::new_id("msg");
                message.created_at_ms = now;
                finals[i] = Some(message);
            }
        }
        Ok(Planned { plans, finals })
    }

    /// Stored messages whose (conversation, client id) matches an item's.
    async fn stored_by_client_id(
        engine: Engine,
        conn: &mut AnyConnection,
        items: &[(pb::Message, Option<String>)],
    ) -> Result<HashMap<(String, String), pb::Message>> {
        let keyed: Vec<(&str, &str)> = items
            .iter()
            .filter_map(|(m, _)| Some((m.conversation_id.as_str(), m.client_message_id.as_deref()?)))
            .collect();
        if keyed.is_empty() {
            return Ok(HashMap::new());
        }
        // Row values, so each pair is one index seek (two IN lists would seek their product).
        let pairs = padded(keyed.into_iter().collect::<HashSet<_>>().into_iter().collect::<Vec<_>>());
        let mut params = Params::new(engine);
        let rows: Vec<String> = (0..pairs.len()).map(|_| format!("({})", params.list(2))).collect();
        let sql = format!(select_message!("(conversation_id, client_message_id) IN (VALUES {})"), rows.join(", "));
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (conversation, client_id) in &pairs {
            query = query.bind(*conversation).bind(*client_id);
        }
        let mut found = HashMap::new();
        for row in query.fetch_all(&mut *conn).await? {
            let (_, message) = message_from_row(&row)?;
            if let Some(client_id) = message.client_message_id.clone() {
                found.insert((message.conversation_id.clone(), client_id), message);
            }
        }
        Ok(found)
    }

    /// Makes `known` hold every item's conversation that exists: one query for those it
    /// lacks (or, with `fresh`, for all of them).
    async fn learn_conversations(
        engine: Engine,
        conn: &mut AnyConnection,
        known: &mut HashMap<String, Known>,
        items: &[(pb::Message, Option<String>)],
        fresh: bool,
    ) -> Result<()> {
        let wanted: HashSet<&str> = items
            .iter()
            .map(|(m, _)| m.conversation_id.as_str())
            .filter(|id| fresh || !known.contains_key(*id))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let ids = padded(wanted.into_iter().collect::<Vec<_>>());
        let sql = format!(
            concat!(
                "SELECT c.conversation_id, c.guest_id, c.hotel_id, ",
                last_seq!("c"),
                " AS last_seq FROM conversations c WHERE c.conversation_id IN ({})"
            ),
            Params::new(engine).list(ids.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in &ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&mut *conn).await?;
        if known.len() + rows.len() > CONVERSATIONS_KNOWN {
            known.clear();
        }
        for row in rows {
            let k = Known {
                guest_id: row.try_get("guest_id")?,
                hotel_id: row.try_get("hotel_id")?,
                last_seq: row.try_get("last_seq")?,
            };
            known.insert(row.try_get("conversation_id")?, k);
        }
        Ok(())
    }

    /// Inserts the messages, a statement per [`INSERT_ROWS`] of them. (The messages are their
    /// own outbox: the relay publishes them from its cursor.) Every statement is a round trip
    /// to the database's thread, and a new statement shape is a new prepared statement, so
    /// each statement's row list is padded to a multiple of eight by repeating its last row:
    /// a repeat collides with the row it copies and `ON CONFLICT (message_id) DO NOTHING`
    /// skips it (any other collision — a seq or a client id taken — fails the statement).
    /// Every real row must then be inserted, or the batch fails. (A `WHERE` that filtered padding
    /// out would make SQLite re-prepare the statement on every use: the planner looks at bound
    /// values in it.)
    ///
    /// Returns each message's position (the relay's cursor), in the order of `messages`, and
    /// the span of positions the statements took when it has no holes: each padding row
    /// takes the position after the rows before it (SQLite's AUTOINCREMENT and PostgreSQL's
    /// sequence both count it), so a chunk's span runs from its first row to its last row
    /// plus its padding.
    async fn insert_messages(
        engine: Engine,
        conn: &mut AnyConnection,
        messages: &[&pb::Message],
    ) -> Result<(Vec<i64>, Option<(i64, i64)>)> {
        const COLUMNS: usize = 13;
        let mut positions = Vec::with_capacity(messages.len());
        let mut span: Option<Option<(i64, i64)>> = None;
        for chunk in messages.chunks(INSERT_ROWS) {
            let rows = chunk.len().next_multiple_of(8);
            let mut params = Params::new(engine);
            let values: Vec<String> = (0..rows).map(|_| format!("({})", params.list(COLUMNS))).collect();
            // PostgreSQL says which position each row took. On SQLite, `RETURNING` would send
            // every row back through sqlx's row channel (a wake-up of the writer each); there
            // the rows of one statement take consecutive positions in VALUES order (the
            // padding after them too), so the last one and the count of rows written say
            // it all, in one row.
            let returning = match engine {
                Engine::Postgres => " RETURNING position, message_id",
                Engine::Sqlite => "; SELECT last_insert_rowid() AS last, changes() AS inserted",
            };
            let sql = format!(
                "INSERT INTO messages (message_id, conversation_id, seq, role, kind, content, client_message_id, payload,
                     reply_to_message_id, rich, hotel_id, guest_id, created_at_ms)
                 VALUES {} ON CONFLICT (message_id) DO NOTHING{returning}",
                values.join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            let last = chunk.last().expect("chunks are not empty");
            for m in chunk.iter().chain(std::iter::repeat_n(last, rows - chunk.len())) {
                query = query
                    .bind(m.message_id.as_str())
                    .bind(m.conversation_id.as_str())
                    .bind(m.seq)
                    .bind(i64::from(m.role))
                    .bind(i64::from(m.kind))
                    .bind(m.content.as_str())
                    .bind(m.client_message_id.as_deref())
                    .bind(m.payload.as_deref())
                    .bind(m.reply_to_message_id.as_deref())
                    .bind(rich_blob(m))
                    .bind(m.hotel_id.as_str())
                    .bind(m.guest_id.as_str())
                    .bind(m.created_at_ms);
            }
            let returned = query.fetch_all(&mut *conn).await?;
            let collided = |inserted: usize| {
                ConversationError::Corrupt(format!("{inserted} of {} messages inserted: an id collided", chunk.len()))
            };
            let start = positions.len();
            match engine {
                Engine::Postgres => {
                    if returned.len() != chunk.len() {
                        return Err(collided(returned.len()));
                    }
                    let mut by_id = HashMap::with_capacity(returned.len());
                    for row in &returned {
                        by_id.insert(row.try_get::<String, _>("message_id")?, row.try_get::<i64, _>("position")?);
                    }
                    for m in chunk {
                        positions.push(
                            by_id.get(&m.message_id).copied().ok_or_else(|| {
                                ConversationError::Corrupt(format!("no position for {}", m.message_id))
                            })?,
                        );
                    }
                }
                Engine::Sqlite => {
                    let row = returned
                        .first()
                        .ok_or_else(|| ConversationError::Corrupt("no position after an insert".into()))?;
                    let (last, inserted): (i64, i64) = (row.try_get("last")?, row.try_get("inserted")?);
                    if inserted != chunk.len() as i64 {
                        return Err(collided(inserted as usize));
                    }
                    positions.extend(last - inserted + 1..=last);
                }
            }
            let taken = &positions[start..];
            let in_order = taken.windows(2).all(|w| w[1] == w[0] + 1);
            let (first, end) = (taken[0], taken[taken.len() - 1] + (rows - chunk.len()) as i64);
            span = Some(match span {
                None if in_order => Some((first, end)),
                Some(Some((from, to))) if in_order && first == to + 1 => Some((from, end)),
                _ => None,
            });
        }
        Ok((positions, span.flatten()))
    }

    /// Up to `limit` conversations opened after `after` (when, id) and before `cutoff_ms`,
    /// oldest first, each with when it was opened and whether it has a message. Read from the
    /// read pool: the writer never waits for it.
    pub async fn opened_between(
        &self,
        after: &(i64, String),
        cutoff_ms: i64,
        limit: u64,
    ) -> Result<Vec<(i64, String, bool)>> {
        let rows = sqlx::query(
            "SELECT c.created_at_ms, c.conversation_id,
                    CASE WHEN EXISTS (SELECT 1 FROM messages AS m WHERE m.conversation_id = c.conversation_id) THEN 1 ELSE 0 END AS used
             FROM conversations AS c
             WHERE (c.created_at_ms, c.conversation_id) > ($1, $2) AND c.created_at_ms < $3
             ORDER BY c.created_at_ms, c.conversation_id LIMIT $4",
        )
        .bind(after.0)
        .bind(&after.1)
        .bind(cutoff_ms)
        .bind(limit as i64)
        .fetch_all(&self.db.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("created_at_ms")?,
                    row.try_get("conversation_id")?,
                    row.try_get::<i64, _>("used")? != 0,
                ))
            })
            .collect()
    }

    /// Forgets those of `ids` that still have no message, in one transaction; how many. (One
    /// that got its first message meanwhile is kept.)
    pub async fn forget_if_empty(&self, ids: &[String]) -> Result<u64> {
        let mut tx = self.db.write.begin().await?;
        let mut forgotten = 0;
        for id in ids {
            let done = sqlx::query(
                "DELETE FROM conversations WHERE conversation_id = $1
                   AND NOT EXISTS (SELECT 1 FROM messages AS m WHERE m.conversation_id = $1)",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            forgotten += done.rows_affected();
        }
        tx.commit().await?;
        Ok(forgotten)
    }

    /// Messages after `after_seq` (oldest first) or the page before `before_seq`; none for a
    /// conversation that does not exist.
    pub async fn list_messages(
        &self,
        conversation_id: &str,
        after_seq: Option<i64>,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<(Vec<pb::Message>, bool)> {
        let page = self.page(conversation_id, after_seq, before_seq, limit, None).await?;
        Ok(page.map(|p| (p.messages, p.has_more)).unwrap_or_default())
    }

    /// [`Store::list_messages`] with the conversation's owner and last seq, in one read (a
    /// history request needs all three): `None` when the conversation does not exist. With
    /// `max_bytes`, the page ends before the message that would take it past that many bytes
    /// (it holds one at least): rows are read one by one and the rest are never read, so a page
    /// of long messages costs the service no more than what it returns.
    pub async fn page(
        &self,
        conversation_id: &str,
        after_seq: Option<i64>,
        before_seq: Option<i64>,
        limit: u32,
        max_bytes: Option<usize>,
    ) -> Result<Option<Page>> {
        use futures_util::TryStreamExt as _;
        // The page is joined onto the conversation's row, so that a conversation without
        // (such) messages still answers, with one row of NULL message columns.
        macro_rules! page_of {
            ($messages:literal, $order:literal) => {
                concat!(
                    "SELECT c.guest_id AS owner, ",
                    last_seq!("c"),
                    " AS conversation_last_seq, page.* FROM conversations AS c LEFT JOIN (",
                    select_message!($messages),
                    ") AS page ON TRUE WHERE c.conversation_id = $1 ORDER BY page.seq ",
                    $order
                )
            };
        }
        let fetch = limit_shape(limit + 1);
        let (sql, bound) = match after_seq {
            Some(after) => {
                (format!(page_of!("conversation_id = $1 AND seq > $2 ORDER BY seq ASC LIMIT {}", "ASC"), fetch), after)
            }
            None => (
                format!(page_of!("conversation_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT {}", "DESC"), fetch),
                before_seq.unwrap_or(i64::MAX),
            ),
        };
        let mut rows = sqlx::query(AssertSqlSafe(sql)).bind(conversation_id).bind(bound).fetch(&self.db.read);
        let Some(first) = rows.try_next().await? else { return Ok(None) };
        let (guest_id, last_seq) = (first.try_get("owner")?, first.try_get("conversation_last_seq")?);
        let (mut messages, mut bytes, mut has_more) = (Vec::new(), 0, false);
        let mut row = Some(first);
        while let Some(current) = row.take() {
            if current.try_get::<Option<i64>, _>("position")?.is_none() {
                break;
            }
            let message = message_from_row(&current)?.1;
            bytes += message.encoded_len();
            if messages.len() == limit as usize || (!messages.is_empty() && max_bytes.is_some_and(|max| bytes > max)) {
                has_more = true;
                break;
            }
            messages.push(message);
            row = rows.try_next().await?;
        }
        if after_seq.is_none() {
            messages.reverse();
        }
        Ok(Some(Page { guest_id, last_seq, messages, has_more }))
    }

    /// Messages after a global position, for WatchMessages, and the last position scanned
    /// (which moves past messages the filter left out). `roles` is empty for all roles.
    pub async fn messages_after_position(
        &self,
        after: i64,
        roles: &[i32],
        hotel_id: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<(i64, pb::Message)>, Option<i64>)> {
        let sql = format!(select_message!("position > $1 ORDER BY position ASC LIMIT {}"), limit_shape(limit));
        let mut rows = sqlx::query(AssertSqlSafe(sql)).bind(after).fetch_all(&self.db.read).await?;
        rows.truncate(limit as usize);
        let mut out = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in &rows {
            let (position, message) = message_from_row(row)?;
            last = Some(position);
            let role_ok = roles.is_empty() || roles.contains(&message.role);
            let hotel_ok = hotel_id.is_none_or(|h| h == message.hotel_id);
            if role_ok && hotel_ok {
                out.push((position, message));
            }
        }
        Ok((out, last))
    }

    /// The position of the newest message (0 when there is none): the end of the log that
    /// WatchMessages cursors point into.
    pub async fn last_position(&self) -> Result<i64> {
        let row =
            sqlx::query("SELECT COALESCE(MAX(position), 0) AS last FROM messages").fetch_one(&self.db.read).await?;
        Ok(row.try_get::<i64, _>("last")?)
    }

    /// Moves a side's read position forward (never back, never past the last message) and
    /// announces the change. Returns the position after the call.
    pub async fn mark_read(&self, conversation: &pb::Conversation, reader: pb::Role, up_to_seq: i64) -> Result<i64> {
        let guest_side = reader == pb::Role::Guest;
        let sql = if guest_side {
            concat!(
                "UPDATE conversations SET guest_read_seq = $2 WHERE conversation_id = $1 AND guest_read_seq < $2 AND ",
                last_seq!("conversations"),
                " >= $2"
            )
        } else {
            concat!(
                "UPDATE conversations SET butler_read_seq = $2 WHERE conversation_id = $1 AND butler_read_seq < $2 AND ",
                last_seq!("conversations"),
                " >= $2"
            )
        };
        let engine = self.db.engine;
        let (conversation_id, hotel_id, guest_id) =
            (conversation.conversation_id.clone(), conversation.hotel_id.clone(), conversation.guest_id.clone());
        // Committed together with the other writes of the moment: read receipts share disk syncs.
        let row = self
            .db
            .write_grouped(move |conn| {
                let (conversation_id, hotel_id, guest_id) =
                    (conversation_id.clone(), hotel_id.clone(), guest_id.clone());
                Box::pin(async move {
                    if engine == Engine::Postgres {
                        sqlx::query(MESSAGE_LOCK).execute(&mut *conn).await?;
                    }
                    let changed = sqlx::query(sql)
                        .bind(&conversation_id)
                        .bind(up_to_seq)
                        .execute(&mut *conn)
                        .await?
                        .rows_affected()
                        == 1;
                    if changed {
                        let read = events::Read { role: reader as i32, up_to_seq };
                        let event = event_for(&conversation_id, &hotel_id, &guest_id, events::event::Kind::Read(read));
                        sqlx::query("INSERT INTO outbox (event) VALUES ($1)")
                            .bind(event.encode_to_vec())
                            .execute(&mut *conn)
                            .await?;
                    }
                    sqlx::query(select_conversation!("conversation_id = $1"))
                        .bind(conversation_id)
                        .fetch_one(&mut *conn)
                        .await
                })
            })
            .await?;
        let now = conversation_from_row(&row)?;
        Ok(if guest_side { now.guest_read_seq } else { now.butler_read_seq })
    }

    /// The oldest outbox rows, in order.
    pub async fn outbox(&self, limit: u32) -> Result<Vec<(i64, events::Event)>> {
        let sql = format!("SELECT position, event FROM outbox ORDER BY position ASC LIMIT {}", limit_shape(limit));
        let mut rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(&self.db.read).await?;
        rows.truncate(limit as usize);
        rows.iter()
            .map(|row| {
                let bytes: Vec<u8> = row.try_get("event")?;
                let event =
                    events::Event::decode(bytes.as_slice()).map_err(|e| ConversationError::Corrupt(e.to_string()))?;
                Ok((row.try_get("position")?, event))
            })
            .collect()
    }

    /// How far the relay has published messages (0 at first).
    /// Tells the publishing replica's relay (on PostgreSQL, `NOTIFY jack_relay`) that rows it
    /// was not handed are waiting: this replica's writer committed them.
    pub async fn notify_relay(&self) {
        if self.db.engine == Engine::Postgres
            && let Err(err) = sqlx::query("SELECT pg_notify('jack_relay', '')").execute(&self.db.write).await
        {
            tracing::debug!(error = %err, "relay not notified; it finds the rows within a second");
        }
    }

    pub async fn relay_cursor(&self) -> Result<i64> {
        let row = sqlx::query("SELECT position FROM relay_cursor WHERE name = 'delivery'")
            .fetch_optional(&self.db.read)
            .await?;
        Ok(row.map(|r| r.try_get("position")).transpose()?.unwrap_or(0))
    }

    pub async fn set_relay_cursor(&self, position: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO relay_cursor (name, position) VALUES ('delivery', $1)
             ON CONFLICT (name) DO UPDATE SET position = excluded.position WHERE relay_cursor.position < excluded.position",
        )
        .bind(position)
        .execute(&self.db.write)
        .await?;
        Ok(())
    }

    /// Forgets outbox rows that delivery accepted.
    pub async fn outbox_done(&self, up_to_position: i64) -> Result<()> {
        sqlx::query("DELETE FROM outbox WHERE position <= $1").bind(up_to_position).execute(&self.db.write).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.db.close().await;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    impl Store {
        /// The one SQLite write connection, taken from the store's pool and kept (as the
        /// message writer keeps it while batches follow each other).
        pub(crate) async fn take_write_connection(&self) -> sqlx::pool::PoolConnection<sqlx::Any> {
            self.db.write.acquire().await.unwrap()
        }
    }

    /// A store on a SQLite file in a fresh folder (kept while the folder lives).
    pub(crate) async fn sqlite_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("c.db").display());
        (Store::new(Database::open(&url, &crate::startup::SQLITE, &crate::startup::POSTGRES).await.unwrap()), dir)
    }

    pub(crate) fn guest_message(conversation: &str, client_id: &str, content: &str) -> (pb::Message, Option<String>) {
        let m = pb::Message {
            conversation_id: conversation.into(),
            role: pb::Role::Guest as i32,
            kind: pb::MessageKind::Text as i32,
            content: content.into(),
            client_message_id: Some(client_id.into()),
            ..Default::default()
        };
        (m, None)
    }

    #[test]
    fn shapes_are_few() {
        assert_eq!(padded(vec![1, 2, 3, 4, 5]), [1, 2, 3, 4, 5, 5, 5, 5]);
        assert_eq!(Params::new(Engine::Postgres).list(3), "$1, $2, $3");
        assert_eq!(Params::new(Engine::Sqlite).list(2), "?, ?");
    }

    #[tokio::test]
    async fn padding_rows_take_positions_and_the_span_says_so() {
        let (store, _dir) = sqlite_store().await;
        let c = store.active_conversation("h", "g", "webchat", true).await.unwrap().unwrap().conversation_id;
        // Two new messages padded to eight rows: the padding takes positions too, so the
        // batch's span ends six after its last message, and the next batch starts after it
        // (the relay relies on this to follow the writer's batches without reading).
        let first = store.add_messages(vec![guest_message(&c, "p1", "x"), guest_message(&c, "p2", "y")]).await.unwrap();
        let (from, end) = first.span.expect("a span");
        assert_eq!((from, end), (first.messages[0].0, first.messages[1].0 + 6));
        let next = store.add_messages(vec![guest_message(&c, "p3", "z")]).await.unwrap();
        assert_eq!(next.span, Some((end + 1, end + 8)));
        assert_eq!(next.messages[0].0, end + 1);
        // Only resends: nothing inserted, no span.
        let resend = store.add_messages(vec![guest_message(&c, "p3", "z")]).await.unwrap();
        assert_eq!((resend.span, resend.messages.len()), (None, 0));
    }

    #[tokio::test]
    async fn the_last_seq_is_the_highest_stored_and_read_marks_stop_there() {
        let (store, _dir) = sqlite_store().await;
        let c = store.active_conversation("h", "g", "webchat", true).await.unwrap().unwrap();
        assert_eq!(c.last_seq, 0);
        store
            .add_messages(vec![
                guest_message(&c.conversation_id, "a", "x"),
                guest_message(&c.conversation_id, "b", "y"),
            ])
            .await
            .unwrap();
        let now = store.conversation(&c.conversation_id).await.unwrap().unwrap();
        assert_eq!(now.last_seq, 2);
        // Not past the last message; then up to it.
        assert_eq!(store.mark_read(&now, pb::Role::Guest, 3).await.unwrap(), 0);
        assert_eq!(store.mark_read(&now, pb::Role::Guest, 2).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_writer_whose_remembered_seq_is_stale_reads_it_again_and_leaves_no_gap() {
        let (store, dir) = sqlite_store().await;
        let c = store.active_conversation("h", "g", "webchat", true).await.unwrap().unwrap().conversation_id;
        store.add_messages(vec![guest_message(&c, "a", "first")]).await.unwrap();
        // Another writer on the same file (not a supported setup, but it must not corrupt):
        let url = format!("sqlite:{}", dir.path().join("c.db").display());
        let other = Store::new(Database::open(&url, &crate::startup::SQLITE, &crate::startup::POSTGRES).await.unwrap());
        let theirs = other.add_messages(vec![guest_message(&c, "b", "second")]).await.unwrap();
        assert!(matches!(&theirs.results[0], Ok(Added::New(m)) if m.seq == 2));
        // This writer still believes seq 1 is the last: its first INSERT meets seq 2 and
        // writes nothing, and the batch is numbered again from the table.
        let batch =
            store.add_messages(vec![guest_message(&c, "c", "third"), guest_message(&c, "d", "fourth")]).await.unwrap();
        assert!(batch.results.iter().all(|r| matches!(r, Ok(Added::New(_)))));
        let (all, _) = store.list_messages(&c, Some(0), None, 10).await.unwrap();
        assert_eq!(
            all.iter().map(|m| (m.seq, m.content.as_str())).collect::<Vec<_>>(),
            [(1, "first"), (2, "second"), (3, "third"), (4, "fourth")]
        );
        // The relay is handed positions that follow each other.
        assert_eq!(
            batch.messages.iter().map(|(p, _)| *p).collect::<Vec<_>>().windows(2).filter(|w| w[1] != w[0] + 1).count(),
            0
        );
        other.close().await;
    }

    #[tokio::test]
    async fn a_big_batch_is_stored_whole_and_in_order() {
        let (store, _dir) = sqlite_store().await;
        let a = store.active_conversation("h", "ga", "webchat", true).await.unwrap().unwrap().conversation_id;
        let b = store.active_conversation("h", "gb", "webchat", true).await.unwrap().unwrap().conversation_id;
        // More than one INSERT statement's worth, and not a multiple of the padding.
        let items: Vec<_> = (0..INSERT_ROWS + 11)
            .map(|i| guest_message(if i % 3 == 0 { &b } else { &a }, &format!("m{i}"), &format!("text {i}")))
            .collect();
        let committed = store.add_messages(items).await.unwrap();
        assert!(committed.results.iter().all(|r| matches!(r, Ok(Added::New(_)))));
        let (in_a, _) = store.list_messages(&a, Some(0), None, 500).await.unwrap();
        let (in_b, _) = store.list_messages(&b, Some(0), None, 500).await.unwrap();
        assert_eq!(in_a.len() + in_b.len(), INSERT_ROWS + 11);
        assert!(in_a.iter().enumerate().all(|(i, m)| m.seq == i as i64 + 1));
        let expected_b: Vec<String> =
            (0..INSERT_ROWS + 11).filter(|i| i % 3 == 0).map(|i| format!("text {i}")).collect();
        assert_eq!(in_b.iter().map(|m| m.content.clone()).collect::<Vec<_>>(), expected_b);
        // Commit order: positions follow the batch.
        let (all, _) = store.messages_after_position(0, &[], None, 500).await.unwrap();
        let contents: Vec<String> = all.iter().map(|(_, m)| m.content.clone()).collect();
        assert_eq!(contents, (0..INSERT_ROWS + 11).map(|i| format!("text {i}")).collect::<Vec<_>>());
        // The positions handed to the relay are the ones stored, message by message.
        let stored: Vec<(i64, String)> = all.iter().map(|(p, m)| (*p, m.message_id.clone())).collect();
        let handed: Vec<(i64, String)> = committed.messages.iter().map(|(p, m)| (*p, m.message_id.clone())).collect();
        assert_eq!(handed, stored);
        // A page smaller than what is there says there is more.
        let (page, more) = store.list_messages(&a, Some(0), None, 5).await.unwrap();
        assert_eq!((page.len(), more), (5, true));
    }

    #[tokio::test]
    async fn a_page_ends_at_its_byte_budget_but_holds_one_message() {
        let (store, _dir) = sqlite_store().await;
        let c = store.active_conversation("h", "g", "webchat", true).await.unwrap().unwrap().conversation_id;
        store
            .add_messages((1..=5).map(|i| guest_message(&c, &format!("m{i}"), &"x".repeat(1000))).collect())
            .await
            .unwrap();
        let seqs = |page: &Page| page.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
        let later = store.page(&c, Some(0), None, 500, Some(2500)).await.unwrap().unwrap();
        assert_eq!((seqs(&later), later.has_more), (vec![1, 2], true));
        let older = store.page(&c, None, None, 500, Some(2500)).await.unwrap().unwrap();
        assert_eq!((seqs(&older), older.has_more), (vec![4, 5], true), "an older page keeps the newest");
        let one = store.page(&c, Some(0), None, 500, Some(10)).await.unwrap().unwrap();
        assert_eq!((seqs(&one), one.has_more), (vec![1], true));
        let all = store.page(&c, Some(0), None, 500, Some(1 << 20)).await.unwrap().unwrap();
        assert_eq!((seqs(&all), all.has_more), (vec![1, 2, 3, 4, 5], false));
        let counted = store.page(&c, Some(3), None, 2, None).await.unwrap().unwrap();
        assert_eq!((seqs(&counted), counted.has_more), (vec![4, 5], false));
    }

    #[tokio::test]
    async fn a_batch_numbers_new_messages_and_answers_resends_and_refusals_one_by_one() {
        let (store, _dir) = sqlite_store().await;
        let c = store.active_conversation("h", "g", "webchat", true).await.unwrap().unwrap().conversation_id;
        let results = store
            .add_messages(vec![
                guest_message(&c, "a", "hello"),
                guest_message(&c, "b", "second"),
                guest_message(&c, "a", "hello"),
                guest_message(&c, "a", "changed"),
                guest_message("cnv_missing", "x", "lost?"),
            ])
            .await
            .unwrap()
            .results;
        let seq = |r: &Result<Added>| match r {
            Ok(Added::New(m)) => ("new", m.seq),
            Ok(Added::Duplicate(m)) => ("dup", m.seq),
            Err(ConversationError::ClientMessageIdReused) => ("reused", 0),
            Err(ConversationError::ConversationNotFound) => ("missing", 0),
            Err(_) => ("error", 0),
        };
        let got: Vec<_> = results.iter().map(seq).collect();
        assert_eq!(got, [("new", 1), ("new", 2), ("dup", 1), ("reused", 0), ("missing", 0)]);
        // A later batch sees the stored message as a resend; others get the next seq.
        let again =
            store.add_messages(vec![guest_message(&c, "a", "hello"), guest_message(&c, "c", "third")]).await.unwrap();
        // The relay is handed the new message with its position.
        let (after_first, _) = store.messages_after_position(0, &[], None, 10).await.unwrap();
        assert_eq!(
            again.messages.iter().map(|(p, m)| (*p, m.content.as_str())).collect::<Vec<_>>(),
            [(after_first[2].0, "third")]
        );
        let again = again.results;
        assert_eq!(again.iter().map(seq).collect::<Vec<_>>(), [("dup", 1), ("new", 3)]);
        // A stored client id sent with other content is refused; the rest of its batch is not.
        let reused = store
            .add_messages(vec![guest_message(&c, "d", "fourth"), guest_message(&c, "b", "not second")])
            .await
            .unwrap()
            .results;
        assert_eq!(reused.iter().map(seq).collect::<Vec<_>>(), [("new", 4), ("reused", 0)]);
        let (messages, _) = store.list_messages(&c, Some(0), None, 10).await.unwrap();
        assert_eq!(
            messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
            ["hello", "second", "third", "fourth"]
        );
        // Messages are their own outbox: nothing extra is written for them.
        assert_eq!(store.outbox(10).await.unwrap().len(), 0);
        let (after_cursor, _) = store.messages_after_position(0, &[], None, 10).await.unwrap();
        assert_eq!(after_cursor.len(), 4);
    }
}
