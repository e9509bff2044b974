//! What StEvE keeps in its database (OCPP tags, charge boxes, transactions) and the lookups its
//! REST API makes.

use std::collections::{BTreeMap, HashMap};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use super::{Error, Faults};
use crate::time::timestamp;

/// An OCPP tag (an RFID card or app token that authorizes charging).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tag {
    pub pk: i32,
    pub id_tag: String,
    /// The tag this one belongs to, e.g. a fleet's card for one of its drivers.
    pub parent_id_tag: Option<String>,
    pub note: Option<String>,
    pub max_active_transaction_count: i32,
}

/// A charging session, which StEvE calls a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Session {
    pub id: i32,
    pub charge_box_pk: i32,
    pub charge_box_id: String,
    pub connector_id: i32,
    pub ocpp_tag_pk: i32,
    pub id_tag: String,
    pub start_ms: i64,
    /// The meter reading at the start in Wh, as the station sent it.
    pub start_value: Option<String>,
    /// `None` while the session is active.
    pub stop: Option<SessionStop>,
    /// Readings the station sent during the session; the REST API does not show them.
    pub meter_values: Vec<MeterValue>,
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionStop {
    pub at_ms: i64,
    /// The meter reading at the stop in Wh.
    pub value: String,
    pub reason: Option<String>,
    pub actor: StopActor,
}

/// Who ended a session: the station's own StopTransaction, or an operator in StEvE's web UI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StopActor {
    Station,
    Manual,
}

/// A meter reading sent during a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MeterValue {
    pub at_ms: i64,
    pub value: String,
}

/// Everything the emulator holds, for tests and `/_emulator/state`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// In key order.
    pub tags: Vec<Tag>,
    /// In id order, which is start order.
    pub sessions: Vec<Session>,
}

/// Which transactions a query wants; the REST layer builds it from the query string.
#[derive(Debug)]
pub(super) struct TransactionFilter {
    pub(super) charge_box_id: Option<String>,
    pub(super) id_tag: Option<String>,
    pub(super) transaction_pk: Option<i32>,
    pub(super) active_only: bool,
    pub(super) period: Period,
}

/// Which starts a query wants.
#[derive(Debug)]
pub(super) enum Period {
    All,
    /// Starts between two instants, both included.
    Between {
        from_ms: i64,
        to_ms: i64,
    },
    /// Starts whose calendar date in StEvE's zone lies between two dates, both included.
    Days {
        first: Date,
        last: Date,
    },
}

/// A tag with what StEvE derives for its overview.
pub(super) struct TagView<'a> {
    pub(super) tag: &'a Tag,
    pub(super) parent_pk: Option<i32>,
    pub(super) active_sessions: i64,
}

#[derive(Debug, Default)]
pub(super) struct State {
    tags: BTreeMap<i32, Tag>,
    tag_pks: HashMap<String, i32>,
    charge_box_pks: HashMap<String, i32>,
    sessions: BTreeMap<i32, Session>,
    last_tag_pk: i32,
    last_session_id: i32,
    pub(super) faults: Faults,
    pub(super) requests_served: u64,
}

impl State {
    /// Adds a tag. Its parent must exist: StEvE keeps the link as a foreign key.
    pub(super) fn add_tag(
        &mut self,
        id_tag: &str,
        parent_id_tag: Option<&str>,
        note: Option<String>,
        max_active_transaction_count: i32,
    ) -> Result<i32, Error> {
        if self.tag_pks.contains_key(id_tag) {
            return Err(Error::TagExists(id_tag.to_owned()));
        }
        if let Some(parent) = parent_id_tag.filter(|parent| !self.tag_pks.contains_key(*parent)) {
            return Err(Error::UnknownTag(parent.to_owned()));
        }
        Ok(self.insert_tag(id_tag, parent_id_tag, note, max_active_transaction_count))
    }

    /// Stores a tag that passed the checks under the next key, and returns the key.
    fn insert_tag(
        &mut self,
        id_tag: &str,
        parent_id_tag: Option<&str>,
        note: Option<String>,
        max_active_transaction_count: i32,
    ) -> i32 {
        self.last_tag_pk += 1;
        let tag = Tag {
            pk: self.last_tag_pk,
            id_tag: id_tag.to_owned(),
            parent_id_tag: parent_id_tag.map(str::to_owned),
            note,
            max_active_transaction_count,
        };
        self.tag_pks.insert(tag.id_tag.clone(), tag.pk);
        self.tags.insert(tag.pk, tag);
        self.last_tag_pk
    }

    pub(super) fn tag_pk(&self, id_tag: &str) -> Option<i32> {
        self.tag_pks.get(id_tag).copied()
    }

    /// Deletes a tag with its sessions, as StEvE's foreign keys cascade; its child tags lose
    /// their parent.
    pub(super) fn delete_tag(&mut self, pk: i32) -> Option<Tag> {
        let tag = self.tags.remove(&pk)?;
        self.tag_pks.remove(&tag.id_tag);
        self.sessions.retain(|_, session| session.ocpp_tag_pk != pk);
        for child in self.tags.values_mut() {
            if child.parent_id_tag.as_ref() == Some(&tag.id_tag) {
                child.parent_id_tag = None;
            }
        }
        Some(tag)
    }

    /// Starts a session, creating its tag and charge box when they are new; returns its id.
    pub(super) fn start_session(
        &mut self,
        charge_box_id: &str,
        connector_id: i32,
        id_tag: &str,
        start_ms: i64,
        start_value: Option<&str>,
    ) -> i32 {
        let ocpp_tag_pk = match self.tag_pk(id_tag) {
            Some(pk) => pk,
            None => self.insert_tag(id_tag, None, None, 1),
        };
        let next_charge_box_pk = i32::try_from(self.charge_box_pks.len() + 1).unwrap_or(i32::MAX);
        let charge_box_pk = *self
            .charge_box_pks
            .entry(charge_box_id.to_owned())
            .or_insert(next_charge_box_pk);
        self.last_session_id += 1;
        let session = Session {
            id: self.last_session_id,
            charge_box_pk,
            charge_box_id: charge_box_id.to_owned(),
            connector_id,
            ocpp_tag_pk,
            id_tag: id_tag.to_owned(),
            start_ms,
            start_value: start_value.map(str::to_owned),
            stop: None,
            meter_values: Vec::new(),
        };
        self.sessions.insert(session.id, session);
        self.last_session_id
    }

    pub(super) fn session_mut(&mut self, id: i32) -> Result<&mut Session, Error> {
        self.sessions
            .get_mut(&id)
            .ok_or(Error::UnknownTransaction(id))
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            tags: self.tags.values().cloned().collect(),
            sessions: self.sessions.values().cloned().collect(),
        }
    }

    /// The sessions `filter` selects, newest first.
    pub(super) fn transactions<'a>(
        &'a self,
        filter: &'a TransactionFilter,
        zone: &'a TimeZone,
    ) -> impl Iterator<Item = &'a Session> {
        self.sessions.values().rev().filter(move |session| {
            filter
                .charge_box_id
                .as_ref()
                .is_none_or(|id| *id == session.charge_box_id)
                && filter
                    .id_tag
                    .as_ref()
                    .is_none_or(|tag| *tag == session.id_tag)
                && filter.transaction_pk.is_none_or(|pk| pk == session.id)
                && (!filter.active_only || session.stop.is_none())
                && match filter.period {
                    Period::All => true,
                    Period::Between { from_ms, to_ms } => {
                        (from_ms..=to_ms).contains(&session.start_ms)
                    }
                    Period::Days { first, last } => {
                        let day = zone.to_datetime(timestamp(session.start_ms)).date();
                        (first..=last).contains(&day)
                    }
                }
        })
    }

    pub(super) fn tag(&self, pk: i32) -> Option<TagView<'_>> {
        let tag = self.tags.get(&pk)?;
        let active_sessions = self
            .sessions
            .values()
            .filter(|session| session.ocpp_tag_pk == pk && session.stop.is_none())
            .count();
        Some(self.view(tag, active_sessions))
    }

    /// Every tag, in key order.
    pub(super) fn tags(&self) -> impl Iterator<Item = TagView<'_>> {
        let mut active: HashMap<i32, usize> = HashMap::new();
        for session in self
            .sessions
            .values()
            .filter(|session| session.stop.is_none())
        {
            *active.entry(session.ocpp_tag_pk).or_default() += 1;
        }
        self.tags
            .values()
            .map(move |tag| self.view(tag, active.get(&tag.pk).copied().unwrap_or(0)))
    }

    fn view<'a>(&'a self, tag: &'a Tag, active_sessions: usize) -> TagView<'a> {
        TagView {
            tag,
            parent_pk: tag
                .parent_id_tag
                .as_deref()
                .and_then(|parent| self.tag_pk(parent)),
            active_sessions: i64::try_from(active_sessions).unwrap_or(i64::MAX),
        }
    }
}
