//! The arguments of `#[retryable_topic(...)]`, parsed with `lookahead1` and validated with
//! spans. Keys and meanings are those of `redrive::policy::RetryPolicy`'s serde config.

use std::time::Duration;

use redrive_policy_rules as rules;

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{bracketed, parenthesized, Ident, LitBool, LitFloat, LitInt, LitStr, Path, Token};

/// Every key `#[retryable_topic]` accepts.
pub(crate) const KEYS: &str = "topic, group, attempts, backoff, include, exclude, dlt_strategy, suffix, timeout, concurrency, auto_create_topics, group_scoped, partitions, headers, dlt_handler, circuit_breaker, handler_timeout, key_ordering, after_dead_letter";
/// Every key of `backoff(...)`.
pub(crate) const BACKOFF_KEYS: &str = "delay, multiplier, max, jitter";

/// Every key of `circuit_breaker(...)`.
pub(crate) const BREAKER_KEYS: &str = "consecutive_failures, open_for, max_open_for";

/// A validated duration with the literal it came from.
pub(crate) struct DurationLit {
    pub millis: u64,
    pub nanos: u32,
}

impl DurationLit {
    /// The duration written.
    fn duration(&self) -> Duration {
        Duration::from_millis(self.millis) + Duration::from_nanos(u64::from(self.nanos))
    }

    fn parse(lit: &LitStr) -> syn::Result<Self> {
        let d: Duration = humantime::parse_duration(lit.value().trim()).map_err(|e| {
            syn::Error::new(
                lit.span(),
                format!(
                    "invalid duration {:?}: {e}; write e.g. \"500ms\", \"2s\", \"1m\"",
                    lit.value()
                ),
            )
        })?;
        Ok(DurationLit {
            millis: d.as_secs() * 1000 + u64::from(d.subsec_millis()),
            nanos: d.subsec_nanos() % 1_000_000,
        })
    }
}

#[derive(Default)]
pub(crate) struct Backoff {
    pub delay: Option<DurationLit>,
    pub multiplier: Option<f64>,
    pub max: Option<DurationLit>,
    pub jitter: Option<f64>,
}

/// All keys of the attribute; `None` = not given (the policy default, Spring's).
#[derive(Default)]
pub(crate) struct Args {
    pub topic: Option<LitStr>,
    pub group: Option<LitStr>,
    pub attempts: Option<u32>,
    pub backoff: Option<Backoff>,
    pub include: Vec<Path>,
    pub exclude: Vec<Path>,
    pub dlt_strategy: Option<(Span, &'static str)>,
    pub suffix: Option<(Span, &'static str)>,
    pub headers: Option<(Span, &'static str)>,
    pub timeout: Option<DurationLit>,
    pub concurrency: Option<usize>,
    pub auto_create_topics: Option<bool>,
    pub group_scoped: Option<bool>,
    pub partitions: Option<u32>,
    pub dlt_handler: Option<Path>,
    pub circuit_breaker: Option<Breaker>,
    pub handler_timeout: Option<DurationLit>,
    pub key_ordering: Option<(Span, bool)>,
    pub after_dead_letter: Option<(Span, &'static str)>,
}

/// `circuit_breaker(...)`; `None` = the default of `redrive::policy::CircuitBreaker`.
#[derive(Default)]
pub(crate) struct Breaker {
    pub consecutive_failures: Option<u32>,
    pub open_for: Option<DurationLit>,
    pub max_open_for: Option<DurationLit>,
}

fn float(input: ParseStream<'_>) -> syn::Result<(f64, Span)> {
    let lookahead = input.lookahead1();
    if lookahead.peek(LitFloat) {
        let l: LitFloat = input.parse()?;
        Ok((l.base10_parse()?, l.span()))
    } else if lookahead.peek(LitInt) {
        let l: LitInt = input.parse()?;
        Ok((l.base10_parse::<u32>()? as f64, l.span()))
    } else {
        Err(lookahead.error())
    }
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(l: &LitInt, what: &str) -> syn::Result<T>
where
    T::Err: std::fmt::Display,
{
    let v: T = l.base10_parse()?;
    if v <= T::default() {
        return Err(syn::Error::new(
            l.span(),
            format!("{what} must be at least 1"),
        ));
    }
    Ok(v)
}

/// A value refused by one of the policy's rules, as a compile error on it: the same rule and
/// reason as `RetryPolicy::validate`, under the attribute's name for the key.
fn rule(span: Span, key: &str, checked: Result<(), String>) -> syn::Result<()> {
    checked.map_err(|reason| syn::Error::new(span, format!("{key} {reason}")))
}

fn one_of(lit: &LitStr, valid: &[&'static str], key: &str) -> syn::Result<(Span, &'static str)> {
    let v = lit.value();
    valid
        .iter()
        .find(|x| **x == v)
        .map(|x| (lit.span(), *x))
        .ok_or_else(|| {
            syn::Error::new(
                lit.span(),
                format!("unknown {key} {v:?}; expected one of: {}", valid.join(", ")),
            )
        })
}

fn paths(input: ParseStream<'_>) -> syn::Result<Vec<Path>> {
    let content;
    bracketed!(content in input);
    let list = Punctuated::<Path, Token![,]>::parse_terminated(&content)?;
    Ok(list.into_iter().collect())
}

fn duplicate(seen: &mut Vec<String>, key: &Ident) -> syn::Result<()> {
    let name = key.to_string();
    if seen.contains(&name) {
        return Err(syn::Error::new(
            key.span(),
            format!("duplicate key `{name}`"),
        ));
    }
    seen.push(name);
    Ok(())
}

impl Parse for Backoff {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut b = Backoff::default();
        let mut seen = Vec::new();
        let mut max_span = Span::call_site();
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            duplicate(&mut seen, &key)?;
            input.parse::<Token![=]>()?;
            match key.to_string().as_str() {
                "delay" => b.delay = Some(DurationLit::parse(&input.parse()?)?),
                "max" => {
                    let lit: LitStr = input.parse()?;
                    max_span = lit.span();
                    b.max = Some(DurationLit::parse(&lit)?);
                }
                "multiplier" => {
                    let (m, span) = float(input)?;
                    rule(span, "multiplier", rules::multiplier(m))?;
                    b.multiplier = Some(m);
                }
                "jitter" => {
                    let (j, span) = float(input)?;
                    rule(span, "jitter", rules::jitter(j))?;
                    b.jitter = Some(j);
                }
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown backoff key `{other}`; valid keys: {BACKOFF_KEYS}"),
                    ))
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        if let (Some(d), Some(m)) = (&b.delay, &b.max) {
            let max_delay = rules::max_delay(d.duration(), m.duration());
            rule(max_span, "max", max_delay)?;
        }
        Ok(b)
    }
}

impl Parse for Breaker {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut b = Breaker::default();
        let mut seen = Vec::new();
        let mut span = Span::call_site();
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            duplicate(&mut seen, &key)?;
            input.parse::<Token![=]>()?;
            match key.to_string().as_str() {
                "consecutive_failures" => {
                    b.consecutive_failures =
                        Some(positive(&input.parse()?, "consecutive_failures")?)
                }
                "open_for" | "max_open_for" => {
                    let lit: LitStr = input.parse()?;
                    let d = DurationLit::parse(&lit)?;
                    span = lit.span();
                    if d.duration().is_zero() {
                        return Err(syn::Error::new(
                            lit.span(),
                            format!("{key} must be above 0"),
                        ));
                    }
                    if key == "open_for" {
                        b.open_for = Some(d);
                    } else {
                        b.max_open_for = Some(d);
                    }
                }
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!(
                            "unknown circuit_breaker key `{other}`; valid keys: {BREAKER_KEYS}"
                        ),
                    ))
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        let open_for = b
            .open_for
            .as_ref()
            .map_or(Duration::from_secs(1), DurationLit::duration);
        let max = b
            .max_open_for
            .as_ref()
            .map_or(Duration::from_secs(60), DurationLit::duration);
        if max < open_for {
            return Err(syn::Error::new(
                span,
                format!("circuit_breaker: max_open_for ({max:?}) must be at least open_for ({open_for:?})"),
            ));
        }
        Ok(b)
    }
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut a = Args::default();
        let mut seen = Vec::new();
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if !lookahead.peek(Ident) {
                return Err(lookahead.error());
            }
            let key: Ident = input.parse()?;
            let name = key.to_string();
            if !KEYS.split(", ").any(|k| k == name) {
                return Err(syn::Error::new(
                    key.span(),
                    format!("unknown key `{name}`; valid keys: {KEYS}"),
                ));
            }
            duplicate(&mut seen, &key)?;
            if name == "backoff" {
                let content;
                parenthesized!(content in input);
                a.backoff = Some(content.parse()?);
            } else if name == "circuit_breaker" {
                // Bare `circuit_breaker` takes the defaults.
                a.circuit_breaker = Some(if input.peek(syn::token::Paren) {
                    let content;
                    parenthesized!(content in input);
                    content.parse()?
                } else {
                    Breaker::default()
                });
            } else {
                input.parse::<Token![=]>()?;
                match name.as_str() {
                    "topic" => {
                        let t: LitStr = input.parse()?;
                        if t.value().trim().is_empty() {
                            return Err(syn::Error::new(t.span(), "topic must not be empty"));
                        }
                        a.topic = Some(t);
                    }
                    "group" => a.group = Some(input.parse()?),
                    "attempts" => {
                        let l: LitInt = input.parse()?;
                        let n: u64 = l.base10_parse()?;
                        rule(l.span(), "attempts", rules::attempts(n))?;
                        a.attempts = Some(n as u32);
                    }
                    "include" => a.include = paths(input)?,
                    "exclude" => a.exclude = paths(input)?,
                    "dlt_strategy" => {
                        a.dlt_strategy = Some(one_of(
                            &input.parse()?,
                            &["always_retry_on_error", "fail_on_error", "no_dlt"],
                            "dlt_strategy",
                        )?)
                    }
                    "headers" => {
                        a.headers =
                            Some(one_of(&input.parse()?, &["spring", "compact"], "headers")?)
                    }
                    "suffix" => {
                        a.suffix = Some(one_of(&input.parse()?, &["delay", "index"], "suffix")?)
                    }
                    "timeout" => {
                        let lit: LitStr = input.parse()?;
                        let t = DurationLit::parse(&lit)?;
                        rule(lit.span(), "timeout", rules::timeout(t.duration()))?;
                        a.timeout = Some(t);
                    }
                    "concurrency" => {
                        a.concurrency = Some(positive(&input.parse()?, "concurrency")?)
                    }
                    "auto_create_topics" => {
                        a.auto_create_topics = Some(input.parse::<LitBool>()?.value)
                    }
                    "group_scoped" => a.group_scoped = Some(input.parse::<LitBool>()?.value),
                    "key_ordering" => {
                        let b = input.parse::<LitBool>()?;
                        a.key_ordering = Some((b.span(), b.value));
                    }
                    "after_dead_letter" => {
                        a.after_dead_letter = Some(one_of(
                            &input.parse()?,
                            &["continue", "follow"],
                            "after_dead_letter",
                        )?)
                    }
                    "partitions" => {
                        let l: LitInt = input.parse()?;
                        let n: u64 = l.base10_parse()?;
                        rule(l.span(), "partitions", rules::partitions(n))?;
                        a.partitions = Some(u32::try_from(n).map_err(|_| {
                            syn::Error::new(
                                l.span(),
                                format!("partitions must be at most {}", u32::MAX),
                            )
                        })?);
                    }
                    "dlt_handler" => a.dlt_handler = Some(input.parse()?),
                    "handler_timeout" => {
                        let lit: LitStr = input.parse()?;
                        let t = DurationLit::parse(&lit)?;
                        if t.duration().is_zero() {
                            return Err(syn::Error::new(
                                lit.span(),
                                "handler_timeout must be above 0 (every call would time out)",
                            ));
                        }
                        a.handler_timeout = Some(t);
                    }
                    _ => unreachable!("every key in KEYS is handled"),
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        key_ordering(&a)?;
        Ok(a)
    }
}

/// Keys that `key_ordering` rules out or that need it.
fn key_ordering(a: &Args) -> syn::Result<()> {
    let on = a.key_ordering.filter(|(_, on)| *on).map(|(span, _)| span);
    if let (Some((span, _)), None) = (a.after_dead_letter, on) {
        return Err(syn::Error::new(
            span,
            "after_dead_letter applies only with key_ordering = true",
        ));
    }
    let Some(span) = on else { return Ok(()) };
    if a.concurrency.is_some_and(|n| n > 1) {
        return Err(syn::Error::new(
            span,
            "key_ordering needs concurrency = 1: records of one key are handled one after the other",
        ));
    }
    if a.partitions.is_some() {
        return Err(syn::Error::new(
            span,
            "key_ordering needs each copy to keep its record's partition: remove `partitions`",
        ));
    }
    Ok(())
}
