//! What Lago keeps (events, customers, subscriptions) and how it accepts a post of events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Error, Faults, Rejection};

/// A stored usage event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub lago_id: String,
    pub transaction_id: String,
    pub external_subscription_id: Option<String>,
    pub code: String,
    pub timestamp_ms: i64,
    /// Always a JSON object, as sent (an absent one is empty).
    pub properties: Value,
    pub precise_total_amount_cents: Option<String>,
    pub created_at_ms: i64,
}

/// A customer, known to clients by its external id.
#[derive(Debug)]
pub(super) struct Customer {
    pub(super) lago_id: String,
    pub(super) sequential_id: u64,
    pub(super) external_id: String,
    pub(super) name: String,
    pub(super) created_at_ms: i64,
}

/// A customer's subscription to a plan.
#[derive(Debug)]
pub(super) struct Subscription {
    pub(super) lago_id: String,
    pub(super) external_id: String,
    pub(super) external_customer_id: String,
    pub(super) plan_code: String,
    pub(super) started_at_ms: i64,
    /// When it ends or ended; it is `terminated` from then on.
    pub(super) terminated_at_ms: Option<i64>,
    pub(super) created_at_ms: i64,
}

/// A subscription's status at some time. Lago's `canceled` (a pending subscription that was
/// terminated) and `incomplete` (awaiting a payment) do not arise in the emulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SubscriptionStatus {
    /// It starts later.
    Pending,
    Active,
    Terminated,
}

impl SubscriptionStatus {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Pending => "pending",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::Terminated => "terminated",
        }
    }
}

impl Subscription {
    pub(super) fn status(&self, now_ms: i64) -> SubscriptionStatus {
        if self.terminated_at_ms.is_some_and(|at| at <= now_ms) {
            SubscriptionStatus::Terminated
        } else if self.started_at_ms > now_ms {
            SubscriptionStatus::Pending
        } else {
            SubscriptionStatus::Active
        }
    }
}

/// One event of a post, as sent. Lago's Rails parameters take numbers where text is expected,
/// hence the loose types.
#[derive(Debug, Default, Deserialize)]
pub(super) struct EventInput {
    transaction_id: Option<Value>,
    external_subscription_id: Option<Value>,
    code: Option<Value>,
    timestamp: Option<Value>,
    properties: Option<Value>,
    precise_total_amount_cents: Option<Value>,
}

/// Each field's error codes, Lago's `error_details` for one event:
/// `{"code": ["value_is_mandatory"]}`.
pub(super) type Details = BTreeMap<String, Vec<String>>;

/// The uniqueness key of an event: its subscription and its transaction id.
type EventKey = (Option<String>, String);

#[derive(Debug, Default)]
pub(super) struct State {
    events: Vec<Event>,
    event_keys: HashSet<EventKey>,
    first_by_transaction: HashMap<String, usize>,
    customers: HashMap<String, Customer>,
    subscriptions: Vec<Subscription>,
    subscription_index: HashMap<String, usize>,
    pub(super) faults: Faults,
    pub(super) rejections: HashMap<String, Rejection>,
    pub(super) event_posts: u64,
}

impl State {
    pub(super) fn events(&self) -> &[Event] {
        &self.events
    }

    /// Checks the events of one post together and stores all of them, or none when any is
    /// invalid; then the errors come back with each invalid event's index in the post.
    pub(super) fn accept(
        &mut self,
        inputs: Vec<EventInput>,
        now_ms: i64,
    ) -> Result<Range<usize>, Vec<(usize, Details)>> {
        let mut seen = HashSet::new();
        let mut valid = Vec::with_capacity(inputs.len());
        let mut invalid = Vec::new();
        for (index, input) in inputs.into_iter().enumerate() {
            let (event, mut details) = self.check(input, now_ms);
            let key = (
                event.external_subscription_id.clone(),
                event.transaction_id.clone(),
            );
            // A key met earlier in the same post makes this event the duplicate.
            if !event.transaction_id.is_empty()
                && (self.event_keys.contains(&key) || !seen.insert(key))
            {
                add_error(&mut details, "transaction_id", "value_already_exist");
            }
            if details.is_empty() {
                valid.push(event);
            } else {
                invalid.push((index, details));
            }
        }
        if !invalid.is_empty() {
            return Err(invalid);
        }
        let start = self.events.len();
        for event in valid {
            let key = (
                event.external_subscription_id.clone(),
                event.transaction_id.clone(),
            );
            self.event_keys.insert(key);
            let index = self.events.len();
            (self.first_by_transaction)
                .entry(event.transaction_id.clone())
                .or_insert(index);
            self.events.push(event);
        }
        Ok(start..self.events.len())
    }

    /// The event an input describes (with empty texts where they are missing) and what is wrong
    /// with it, duplicates aside.
    fn check(&self, input: EventInput, now_ms: i64) -> (Event, Details) {
        let mut details = Details::new();
        let transaction_id = text(input.transaction_id).unwrap_or_default();
        let code = text(input.code).unwrap_or_default();
        for (field, value) in [("transaction_id", &transaction_id), ("code", &code)] {
            if value.is_empty() {
                add_error(&mut details, field, "value_is_mandatory");
            }
        }
        let timestamp_ms = match input.timestamp {
            None | Some(Value::Null) => now_ms,
            Some(sent) => timestamp_ms(&sent).unwrap_or_else(|| {
                add_error(&mut details, "timestamp", "invalid_format");
                now_ms
            }),
        };
        if let Some(rejection) = self.rejections.get(&transaction_id) {
            add_error(&mut details, &rejection.field, &rejection.code);
        }
        let properties = match input.properties {
            Some(object @ Value::Object(_)) => object,
            _ => Value::Object(Map::new()),
        };
        let event = Event {
            lago_id: super::lago_id(),
            transaction_id,
            external_subscription_id: text(input.external_subscription_id),
            code,
            timestamp_ms,
            properties,
            precise_total_amount_cents: text(input.precise_total_amount_cents),
            created_at_ms: now_ms,
        };
        (event, details)
    }

    pub(super) fn reject(&mut self, rejection: Rejection) {
        self.rejections
            .insert(rejection.transaction_id.clone(), rejection);
    }

    /// The first event stored with this transaction id, whatever its subscription.
    pub(super) fn event(&self, transaction_id: &str) -> Option<&Event> {
        let index = *self.first_by_transaction.get(transaction_id)?;
        self.events.get(index)
    }

    /// Adds a customer, or renames one that exists (Lago's create is an upsert).
    pub(super) fn upsert_customer(&mut self, external_id: &str, name: &str, now_ms: i64) {
        let sequential_id = self.customers.len() as u64 + 1;
        let customer = (self.customers)
            .entry(external_id.to_owned())
            .or_insert_with(|| Customer {
                lago_id: super::lago_id(),
                sequential_id,
                external_id: external_id.to_owned(),
                name: String::new(),
                created_at_ms: now_ms,
            });
        customer.name = name.to_owned();
    }

    pub(super) fn customer(&self, external_id: &str) -> Option<&Customer> {
        self.customers.get(external_id)
    }

    pub(super) fn add_subscription(&mut self, subscription: Subscription) -> Result<(), Error> {
        if !self
            .customers
            .contains_key(&subscription.external_customer_id)
        {
            return Err(Error::UnknownCustomer(subscription.external_customer_id));
        }
        if self
            .subscription_index
            .contains_key(&subscription.external_id)
        {
            return Err(Error::SubscriptionExists(subscription.external_id));
        }
        (self.subscription_index)
            .insert(subscription.external_id.clone(), self.subscriptions.len());
        self.subscriptions.push(subscription);
        Ok(())
    }

    pub(super) fn subscription_mut(
        &mut self,
        external_id: &str,
    ) -> Result<&mut Subscription, Error> {
        let index = self.subscription_index.get(external_id).copied();
        index
            .and_then(|index| self.subscriptions.get_mut(index))
            .ok_or_else(|| Error::UnknownSubscription(external_id.to_owned()))
    }

    /// Every subscription, the newest first.
    pub(super) fn subscriptions(&self) -> impl Iterator<Item = &Subscription> {
        self.subscriptions.iter().rev()
    }
}

fn add_error(details: &mut Details, field: &str, code: &str) {
    details
        .entry(field.to_owned())
        .or_default()
        .push(code.to_owned());
}

/// A text parameter, empty counting as absent.
fn text(value: Option<Value>) -> Option<String> {
    let text = match value? {
        Value::String(text) => text,
        Value::Number(number) => number.to_string(),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// Unix seconds, sent as a number or as text with optional decimals (`"1651240791.123"`), in
/// milliseconds.
fn timestamp_ms(sent: &Value) -> Option<i64> {
    let seconds = match sent {
        Value::Number(number) => number.as_f64()?,
        Value::String(text) => text.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    // A float to integer cast saturates, which clamps absurd times.
    seconds
        .is_finite()
        .then(|| (seconds * 1000.0).round() as i64)
}
