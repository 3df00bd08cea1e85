//! Attribute macros for redrive: `#[retryable_topic]` and `#[dlt_handler]`, the Rust twins of
//! Spring Kafka's `@RetryableTopic` and `@DltHandler`. Use them through the `redrive` crate
//! (`redrive::retryable_topic`), which re-exports them behind its default `macros` feature.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod args;
mod expand;

use proc_macro::TokenStream;
use quote::ToTokens;
use syn::ItemFn;

/// Turns an `async fn` into a route whose failures go through retry topics with back-off to
/// a dead-letter topic.
///
/// ```rust,no_run
/// use redrive::{Json, RetryContext, Worker};
///
/// #[derive(serde::Deserialize)]
/// struct Order { id: u64, amount: i64 }
///
/// #[derive(Debug, thiserror::Error)]
/// enum BillingError {
///     #[error("payment gateway timed out")]
///     Timeout,
///     #[error("card declined")]
///     Declined,
/// }
///
/// #[redrive::retryable_topic(
///     topic = "orders",                  // required: the main topic
///     group = "billing",                 // the consumer group (must match the worker's)
///     attempts = 4,                      // deliveries in total, counting the first (default 3)
///     backoff(delay = "1s", multiplier = 2.0, max = "10s", jitter = 0.1),
///                                        // default: 1 s fixed; exponential max 30 s
///     include = [BillingError],          // retry only these error types (source chain)
///     exclude = [std::num::ParseIntError], // never retry these: straight to the DLT
///     dlt_strategy = "fail_on_error",    // always_retry_on_error (default) | fail_on_error | no_dlt
///     suffix = "delay",                  // delay (default): orders-retry-1000 | index: orders-retry-0
///     timeout = "5m",                    // give up (to the DLT) past this since the first delivery
///     concurrency = 4,                   // records of one partition handled at once (default 1)
///     auto_create_topics = true,         // create retry/DLT topics at start-up (default true)
///     group_scoped = false,              // orders-billing-retry-1000 instead of orders-retry-1000
///     partitions = 6,                    // partitions of created topics (default: the main's)
///     headers = "spring",                // spring (default) | compact: one redrive-compact header
///     dlt_handler = billing_dlt,         // a #[dlt_handler] fn consuming orders-dlt
///     handler_timeout = "30s",           // a call longer than this fails (and is retried)
///     key_ordering = false,              // true: a key's later records wait while one retries;
///                                        // then after_dead_letter = "continue" (default) | "follow"
///     circuit_breaker(consecutive_failures = 5, open_for = "1s", max_open_for = "60s"),
///                                        // pause on redrive::Unavailable failures (bare: defaults)
/// )]
/// async fn bill(order: Json<Order>, ctx: RetryContext) -> Result<(), BillingError> {
///     println!("order {} attempt {}", order.0.id, ctx.attempt);
///     Ok(())
/// }
///
/// #[redrive::dlt_handler]
/// async fn billing_dlt(record: redrive::Record, ctx: RetryContext) -> Result<(), std::io::Error> {
///     eprintln!("dead letter from {:?}: {:?}", ctx.original.topic, ctx.original.exception_message);
///     Ok(())
/// }
///
/// fn main() -> Result<(), redrive::Error> {
///     let _worker = Worker::builder().bootstrap_servers("127.0.0.1:9092").route(bill).build()?;
///     Ok(())
/// }
/// ```
///
/// Parameters, in any order: `redrive::Record`, `redrive::Json<T>` (the value decoded with
/// serde; a decode failure is fatal: the record goes to the DLT once) and
/// `redrive::RetryContext` (attempt, coordinates, original coordinates and last error).
/// The return type is `Result<(), E>` with `E: std::error::Error + Send + Sync + 'static`; the
/// future must be `Send`.
///
/// The function becomes a unit struct of the same name that implements
/// `redrive::IntoRoute`; the function itself stays callable as `bill::handler(..)`, its policy
/// as `bill::retry_policy()` (a `redrive::policy::RetryPolicy`, the type the builder and the sidecar
/// config use: every key here has the same name and meaning there).
#[proc_macro_attribute]
pub fn retryable_topic(attr: TokenStream, item: TokenStream) -> TokenStream {
    let f: ItemFn = match syn::parse(item.clone()) {
        Ok(f) => f,
        Err(e) => return with_item(e, item.into()),
    };
    let out = syn::parse::<args::Args>(attr).and_then(|a| expand::retryable_topic(a, &f));
    match out {
        Ok(ts) => ts.into(),
        Err(e) => with_item(e, f.into_token_stream()),
    }
}

/// Marks the handler of a route's dead-letter topic (Spring's `@DltHandler`); attach it with
/// `#[retryable_topic(..., dlt_handler = this_fn)]` or `Route::dlt_handler`. Same parameter
/// and return rules as `#[retryable_topic]`; its failures follow the route's `dlt_strategy`.
///
/// ```rust,no_run
/// #[redrive::dlt_handler]
/// async fn orders_dlt(record: redrive::Record) -> Result<(), std::io::Error> {
///     eprintln!("dead letter {}", record.coordinates());
///     Ok(())
/// }
/// # fn main() {}
/// ```
#[proc_macro_attribute]
pub fn dlt_handler(attr: TokenStream, item: TokenStream) -> TokenStream {
    let f: ItemFn = match syn::parse(item.clone()) {
        Ok(f) => f,
        Err(e) => return with_item(e, item.into()),
    };
    if !attr.is_empty() {
        let attr: proc_macro2::TokenStream = attr.into();
        let e = syn::Error::new_spanned(
            attr,
            "`#[dlt_handler]` takes no arguments; attach it with `#[retryable_topic(dlt_handler = ..)]`",
        );
        return with_item(e, f.into_token_stream());
    }
    match expand::dlt_handler(&f) {
        Ok(ts) => ts.into(),
        Err(e) => with_item(e, f.into_token_stream()),
    }
}

/// The error, followed by the item unchanged, so IDEs keep resolving the function.
fn with_item(e: syn::Error, item: proc_macro2::TokenStream) -> TokenStream {
    let mut out = e.to_compile_error();
    out.extend(item);
    out.into()
}
