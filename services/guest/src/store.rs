//! The guest service's tables. SQL here runs unchanged on SQLite and PostgreSQL.

use jack_runtime::db::Database;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use jack_proto::guest::v1 as pb;

/// What an identify reads first (see [`Store::lookup`]).
#[derive(Debug)]
pub struct Lookup {
    pub hotel: Option<HotelRecord>,
    pub registry_enabled: bool,
    pub guest: Option<StoredGuest>,
}

/// A guest record with what only this service sees: the epoch its visitor tokens must carry.
#[derive(Debug, Clone)]
pub struct StoredGuest {
    pub guest: pb::Guest,
    pub token_epoch: i64,
}

#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
}

/// A registered hotel, with its secret (never sent over the wire).
#[derive(Debug, Clone)]
pub struct HotelRecord {
    pub hotel_id: String,
    pub name: String,
    pub allowed_origins: Vec<String>,
    pub identity_secret: Option<String>,
}

fn hotel_from_row(hotel_id: String, row: &AnyRow) -> Result<HotelRecord, sqlx::Error> {
    let origins: String = row.try_get("allowed_origins")?;
    Ok(HotelRecord {
        hotel_id,
        name: row.try_get("hotel_name")?,
        allowed_origins: origins.split('\n').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        identity_secret: row.try_get("identity_secret")?,
    })
}

/// `SELECT` of every guest column; a macro so that queries stay `&'static str` literals.
macro_rules! select_guest {
    ($where:literal) => {
        concat!("SELECT guest_id, hotel_id, channel, visitor_id, name, email, verified, created_at_ms, engaged, token_epoch FROM guests WHERE ", $where)
    };
}

fn guest_from_row(row: &AnyRow) -> Result<StoredGuest, sqlx::Error> {
    let guest = pb::Guest {
        guest_id: row.try_get("guest_id")?,
        hotel_id: row.try_get("hotel_id")?,
        channel: row.try_get("channel")?,
        visitor_id: row.try_get("visitor_id")?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        verified: row.try_get::<i64, _>("verified")? != 0,
        created_at_ms: row.try_get("created_at_ms")?,
        engaged: row.try_get::<i64, _>("engaged")? != 0,
    };
    Ok(StoredGuest { guest, token_epoch: row.try_get("token_epoch")? })
}

/// Inserts a guest unless its visitor id is taken; whether it was inserted.
async fn insert_guest_on(conn: &mut sqlx::AnyConnection, guest: pb::Guest) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO guests (guest_id, hotel_id, channel, visitor_id, name, email, verified, created_at_ms, engaged)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (hotel_id, channel, visitor_id) DO NOTHING",
    )
    .bind(guest.guest_id)
    .bind(guest.hotel_id)
    .bind(guest.channel)
    .bind(guest.visitor_id)
    .bind(guest.name)
    .bind(guest.email)
    .bind(i64::from(guest.verified))
    .bind(guest.created_at_ms)
    .bind(i64::from(guest.engaged))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

impl Store {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub async fn find_guest(
        &self,
        hotel_id: &str,
        channel: &str,
        visitor_id: &str,
    ) -> Result<Option<StoredGuest>, sqlx::Error> {
        let sql = select_guest!("hotel_id = $1 AND channel = $2 AND visitor_id = $3");
        let row = sqlx::query(sql).bind(hotel_id).bind(channel).bind(visitor_id).fetch_optional(&self.db.read).await?;
        row.as_ref().map(guest_from_row).transpose()
    }

    pub async fn guest(&self, guest_id: &str) -> Result<Option<StoredGuest>, sqlx::Error> {
        let sql = select_guest!("guest_id = $1");
        let row = sqlx::query(sql).bind(guest_id).fetch_optional(&self.db.read).await?;
        row.as_ref().map(guest_from_row).transpose()
    }

    /// Inserts the guest unless its visitor id is taken; returns whether it was inserted.
    /// Committed together with the other writes of the moment (a storm of new visitors
    /// shares disk syncs).
    pub async fn insert_guest(&self, guest: &pb::Guest) -> Result<bool, sqlx::Error> {
        let guest = guest.clone();
        self.db.write_grouped(move |conn| Box::pin(insert_guest_on(conn, guest.clone()))).await
    }

    /// A proven login takes its visitor id from a record that was bound without proof: that
    /// record keeps its conversation under a fresh anonymous id (`vacated_as`), every token
    /// issued for it is revoked, and `guest` is inserted in its place. Nothing changes when the
    /// old record has meanwhile been verified; returns whether `guest` was inserted.
    pub async fn take_over(
        &self,
        unproven_guest_id: &str,
        vacated_as: &str,
        guest: &pb::Guest,
    ) -> Result<bool, sqlx::Error> {
        let (old, vacated_as, guest) = (unproven_guest_id.to_owned(), vacated_as.to_owned(), guest.clone());
        self.db
            .write_grouped(move |conn| {
                let (old, vacated_as, guest) = (old.clone(), vacated_as.clone(), guest.clone());
                Box::pin(async move {
                    sqlx::query("UPDATE guests SET visitor_id = $2, token_epoch = token_epoch + 1 WHERE guest_id = $1 AND verified = 0")
                        .bind(old)
                        .bind(vacated_as)
                        .execute(&mut *conn)
                        .await?;
                    insert_guest_on(conn, guest).await
                })
            })
            .await
    }

    /// The guest has sent something: it is kept. The guest after the change.
    pub async fn mark_engaged(&self, guest_id: &str) -> Result<Option<StoredGuest>, sqlx::Error> {
        let guest_id = guest_id.to_owned();
        self.db
            .write_grouped(move |conn| {
                let guest_id = guest_id.clone();
                Box::pin(async move {
                    sqlx::query("UPDATE guests SET engaged = 1 WHERE guest_id = $1 AND engaged = 0")
                        .bind(&guest_id)
                        .execute(&mut *conn)
                        .await?;
                    let row =
                        sqlx::query(select_guest!("guest_id = $1")).bind(guest_id).fetch_optional(&mut *conn).await?;
                    row.as_ref().map(guest_from_row).transpose()
                })
            })
            .await
    }

    /// Forgets up to `limit` guests without a proof who never sent anything and arrived before
    /// `cutoff_ms` (a name or an email given at identify does not keep them: anyone can give
    /// one); how many.
    pub async fn forget_silent(&self, cutoff_ms: i64, limit: u64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM guests WHERE guest_id IN (
                 SELECT guest_id FROM guests
                 WHERE engaged = 0 AND created_at_ms < $1 AND verified = 0
                 LIMIT $2)",
        )
        .bind(cutoff_ms)
        .bind(limit as i64)
        .execute(&self.db.write)
        .await?;
        Ok(done.rows_affected())
    }

    /// Revokes every visitor token issued for the guest so far; the guest after the change.
    pub async fn revoke_tokens(&self, guest_id: &str) -> Result<Option<StoredGuest>, sqlx::Error> {
        let guest_id = guest_id.to_owned();
        self.db
            .write_grouped(move |conn| {
                let guest_id = guest_id.clone();
                Box::pin(async move {
                    sqlx::query("UPDATE guests SET token_epoch = token_epoch + 1 WHERE guest_id = $1")
                        .bind(&guest_id)
                        .execute(&mut *conn)
                        .await?;
                    let row =
                        sqlx::query(select_guest!("guest_id = $1")).bind(guest_id).fetch_optional(&mut *conn).await?;
                    row.as_ref().map(guest_from_row).transpose()
                })
            })
            .await
    }

    /// Sets name, email and/or verified where given; returns the guest after the change.
    pub async fn update_guest(
        &self,
        guest_id: &str,
        name: Option<&str>,
        email: Option<&str>,
        verified: bool,
    ) -> Result<Option<StoredGuest>, sqlx::Error> {
        let (guest_id, name, email) = (guest_id.to_owned(), name.map(str::to_owned), email.map(str::to_owned));
        self.db
            .write_grouped(move |conn| {
                let (guest_id, name, email) = (guest_id.clone(), name.clone(), email.clone());
                Box::pin(async move {
                    // Verifying moves the token epoch on: tokens issued before the proof stop
                    // working, whoever holds them.
                    sqlx::query(
                        "UPDATE guests SET name = COALESCE($2, name), email = COALESCE($3, email),
                             verified = CASE WHEN $4 = 1 THEN 1 ELSE verified END,
                             token_epoch = CASE WHEN $4 = 1 AND verified = 0 THEN token_epoch + 1 ELSE token_epoch END
                         WHERE guest_id = $1",
                    )
                    .bind(&guest_id)
                    .bind(name)
                    .bind(email)
                    .bind(i64::from(verified))
                    .execute(&mut *conn)
                    .await?;
                    let row =
                        sqlx::query(select_guest!("guest_id = $1")).bind(guest_id).fetch_optional(&mut *conn).await?;
                    row.as_ref().map(guest_from_row).transpose()
                })
            })
            .await
    }

    /// A hotel, whether the registry is in use (any hotel registered), and — given a channel
    /// and visitor id — that visitor's guest, in one read: an identify needs all three, and for
    /// the unregistered hotels of an open deployment the first two answers are "no". The
    /// registry check stops at its first row, however many hotels there are.
    pub async fn lookup(&self, hotel_id: &str, visitor: Option<(&str, &str)>) -> Result<Lookup, sqlx::Error> {
        let row = sqlx::query(
            "SELECT h.hotel_id AS registered_hotel_id, h.name AS hotel_name, h.allowed_origins, h.identity_secret,
                    (SELECT COUNT(*) FROM (SELECT 1 FROM hotels LIMIT 1) AS first_hotel) AS registry,
                    g.guest_id, g.hotel_id, g.channel, g.visitor_id, g.name, g.email, g.verified, g.created_at_ms, g.engaged, g.token_epoch
             FROM (SELECT 1 AS one) AS lookup
             LEFT JOIN hotels AS h ON h.hotel_id = $1
             LEFT JOIN guests AS g ON g.hotel_id = $1 AND g.channel = $2 AND g.visitor_id = $3",
        )
        .bind(hotel_id)
        .bind(visitor.map(|(channel, _)| channel))
        .bind(visitor.map(|(_, visitor_id)| visitor_id))
        .fetch_one(&self.db.read)
        .await?;
        let hotel = match row.try_get::<Option<String>, _>("registered_hotel_id")? {
            Some(hotel_id) => Some(hotel_from_row(hotel_id, &row)?),
            None => None,
        };
        let guest =
            if row.try_get::<Option<String>, _>("guest_id")?.is_some() { Some(guest_from_row(&row)?) } else { None };
        Ok(Lookup { hotel, registry_enabled: row.try_get::<i64, _>("registry")? > 0, guest })
    }

    pub async fn hotel(&self, hotel_id: &str) -> Result<Option<HotelRecord>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT hotel_id, name AS hotel_name, allowed_origins, identity_secret FROM hotels WHERE hotel_id = $1",
        )
        .bind(hotel_id)
        .fetch_optional(&self.db.read)
        .await?;
        row.map(|row| hotel_from_row(row.try_get("hotel_id")?, &row)).transpose()
    }

    pub async fn upsert_hotel(&self, hotel: &HotelRecord, now_ms: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO hotels (hotel_id, name, allowed_origins, identity_secret, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (hotel_id) DO UPDATE SET name = excluded.name, allowed_origins = excluded.allowed_origins,
                 identity_secret = COALESCE(excluded.identity_secret, hotels.identity_secret), updated_at_ms = excluded.updated_at_ms",
        )
        .bind(&hotel.hotel_id)
        .bind(&hotel.name)
        .bind(hotel.allowed_origins.join("\n"))
        .bind(&hotel.identity_secret)
        .bind(now_ms)
        .execute(&self.db.write)
        .await?;
        Ok(())
    }

    /// The named secret (see `Database::secret`).
    pub async fn secret(&self, name: &str) -> Result<String, sqlx::Error> {
        self.db.secret(name).await
    }
}
