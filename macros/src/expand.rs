//! Code generation for `#[retryable_topic]` and `#[dlt_handler]`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType};

use crate::args::{Args, Breaker, DurationLit};

/// Checks what can be checked syntactically: `async`, no receiver, no generics, a return type.
fn check_signature(f: &ItemFn, attr: &str) -> syn::Result<()> {
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            format!("`#[{attr}]` handlers must be `async fn`"),
        ));
    }
    if let Some(FnArg::Receiver(r)) = sig.inputs.first() {
        return Err(syn::Error::new(
            r.span(),
            format!("`#[{attr}]` handlers are free functions, not methods"),
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            format!("`#[{attr}]` handlers cannot be generic"),
        ));
    }
    if let ReturnType::Default = sig.output {
        return Err(syn::Error::new(
            sig.ident.span(),
            "a handler must return `Result<(), E>` with `E: std::error::Error + Send + Sync + 'static`",
        ));
    }
    Ok(())
}

/// `E` of a `Result<(), E>` return type, when written that way (not behind an alias).
fn error_type(output: &ReturnType) -> Option<&syn::Type> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    let syn::Type::Path(p) = &**ty else {
        return None;
    };
    let last = p.path.segments.last().filter(|s| s.ident == "Result")?;
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.iter().nth(1)? {
        syn::GenericArgument::Type(e) => Some(e),
        _ => None,
    }
}

/// The hidden struct named like the function, the function as its `handler` associated fn,
/// and the service adapter.
fn handler_parts(f: &ItemFn) -> (TokenStream, TokenStream) {
    let name = &f.sig.ident;
    let vis = &f.vis;
    let attrs = &f.attrs;
    let sig = &f.sig;
    let mut inner_sig = sig.clone();
    inner_sig.ident = format_ident!("handler");
    let block = &f.block;
    let item = quote! {
        #(#attrs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #name;

        impl #name {
            /// The annotated function itself, callable directly (e.g. in unit tests).
            #[allow(clippy::too_many_arguments)]
            #vis #inner_sig #block
        }
    };
    let mut extract = Vec::new();
    let mut args = Vec::new();
    for (i, input) in sig.inputs.iter().enumerate() {
        if let FnArg::Typed(pt) = input {
            let ty = &pt.ty;
            let var = format_ident!("__redrive_arg{}", i);
            extract.push(quote_spanned! {ty.span()=>
                let #var = <#ty as ::redrive::FromRecord>::from_record(&record)?;
            });
            args.push(var);
        }
    }
    let ret_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => sig.ident.span(),
    };
    let call = quote_spanned! {ret_span=>
        ::redrive::__private::HandlerResult::into_result(#name::handler(#(#args),*).await)
    };
    // Spanned at the signature: a future that is not Send is reported on the handler.
    let service = quote_spanned! {sig.span()=>
        ::redrive::__private::FnService::new(|record: ::redrive::Record| {
            ::std::boxed::Box::pin(async move {
                #(#extract)*
                #call
            }) as ::redrive::__private::HandlerFuture
        })
    };
    (item, service)
}

fn duration(d: &DurationLit) -> TokenStream {
    let secs = d.millis / 1000;
    let nanos = (d.millis % 1000) as u32 * 1_000_000 + d.nanos;
    quote!(::std::time::Duration::new(#secs, #nanos))
}

pub(crate) fn retryable_topic(args: Args, f: &ItemFn) -> syn::Result<TokenStream> {
    check_signature(f, "retryable_topic")?;
    let topic = args.topic.clone().ok_or_else(|| {
        syn::Error::new(
            Span::call_site(),
            "missing required key `topic`, e.g. `#[retryable_topic(topic = \"orders\")]`",
        )
    })?;
    let name = &f.sig.ident;
    let vis = &f.vis;
    let name_str = name.to_string();
    let (item, service) = handler_parts(f);

    let mut policy = Vec::new();
    if let Some(n) = args.attempts {
        policy.push(quote!(p.attempts = #n;));
    }
    if let Some(b) = &args.backoff {
        if let Some(d) = &b.delay {
            let d = duration(d);
            policy.push(quote!(p.backoff.delay = #d;));
        }
        if let Some(m) = b.multiplier {
            policy.push(quote!(p.backoff.multiplier = #m;));
        }
        if let Some(d) = &b.max {
            let d = duration(d);
            policy.push(quote!(p.backoff.max = #d;));
        }
        if let Some(j) = b.jitter {
            policy.push(quote!(p.backoff.jitter = #j;));
        }
    }
    for path in &args.include {
        policy.push(quote_spanned! {path.span()=>
            p.include.push(::redrive::policy::ErrorMatcher::of::<#path>());
        });
    }
    for path in &args.exclude {
        policy.push(quote_spanned! {path.span()=>
            p.exclude.push(::redrive::policy::ErrorMatcher::of::<#path>());
        });
    }
    if let Some((_, s)) = args.dlt_strategy {
        let v = match s {
            "fail_on_error" => quote!(FailOnError),
            "no_dlt" => quote!(NoDlt),
            _ => quote!(AlwaysRetryOnError),
        };
        policy.push(quote!(p.dlt_strategy = ::redrive::policy::DltStrategy::#v;));
    }
    if let Some((_, s)) = args.suffix {
        let v = if s == "index" {
            quote!(Index)
        } else {
            quote!(Delay)
        };
        policy.push(quote!(p.suffix = ::redrive::policy::TopicSuffix::#v;));
    }
    if let Some(t) = &args.timeout {
        let d = duration(t);
        policy.push(quote!(p.timeout = ::std::option::Option::Some(#d);));
    }
    if let Some(b) = args.auto_create_topics {
        policy.push(quote!(p.auto_create_topics = #b;));
    }
    if let Some((_, h)) = args.headers {
        let v = if h == "compact" {
            quote!(Compact)
        } else {
            quote!(Spring)
        };
        policy.push(quote!(p.headers = ::redrive::headers::HeaderProfile::#v;));
    }
    if let Some(b) = args.group_scoped {
        policy.push(quote!(p.group_scoped = #b;));
    }
    if let Some(n) = args.partitions {
        policy.push(quote!(p.partitions = ::std::option::Option::Some(#n);));
    }

    let mut route = quote! {
        ::redrive::Route::new(#topic, #service)
            .name(#name_str)
            .retry(Self::retry_policy())
    };
    if let Some(e) = error_type(&f.sig.output) {
        route = quote!(#route.error_type_name(::std::any::type_name::<#e>()));
    }
    if let Some(n) = args.concurrency {
        route = quote!(#route.concurrency(#n));
    }
    if let Some(g) = &args.group {
        route = quote!(#route.group(#g));
    }
    match (args.key_ordering, args.after_dead_letter) {
        (Some((_, true)), Some((_, "follow"))) => {
            route =
                quote!(#route.key_ordering_after_dead_letter(::redrive::AfterDeadLetter::Follow));
        }
        (Some((_, true)), _) => route = quote!(#route.key_ordering(true)),
        _ => {}
    }
    if let Some(d) = &args.dlt_handler {
        route = quote_spanned! {d.span()=>
            #route.dlt_handler(::redrive::__private::DltHandlerFn::into_service(#d))
        };
    }
    let mut service_type = quote!(::redrive::__private::FnService);
    if let Some(t) = &args.handler_timeout {
        let d = duration(t);
        route = quote!(#route.handler_timeout(#d));
        service_type = quote!(::redrive::tower::timeout::Timeout<#service_type>);
    }
    if let Some(b) = &args.circuit_breaker {
        let settings = breaker_settings(b);
        route = quote!(#route.circuit_breaker({
            #[allow(unused_mut)]
            let mut b = ::redrive::policy::CircuitBreaker::new();
            #(#settings)*
            b
        }));
        service_type = quote!(::redrive::layer::breaker::CircuitBreakerService<#service_type>);
    }
    Ok(quote! {
        #item

        impl #name {
            /// The topic this route reads.
            #vis const TOPIC: &'static str = #topic;

            /// The retry policy the attribute declares (the same type the builder and the
            /// sidecar config use).
            #vis fn retry_policy() -> ::redrive::policy::RetryPolicy {
                #[allow(unused_mut)]
                let mut p = ::redrive::policy::RetryPolicy::new();
                #(#policy)*
                p
            }
        }

        impl ::redrive::IntoRoute for #name {
            type Service = #service_type;

            fn into_route(self) -> ::redrive::Route<Self::Service> {
                #route
            }
        }
    })
}

/// Assignments to `b`, a `CircuitBreaker`, for the keys given.
fn breaker_settings(b: &Breaker) -> Vec<TokenStream> {
    let mut out = Vec::new();
    if let Some(n) = b.consecutive_failures {
        out.push(quote!(b.consecutive_failures = #n;));
    }
    if let Some(d) = &b.open_for {
        let d = duration(d);
        out.push(quote!(b.open_for = #d;));
    }
    if let Some(d) = &b.max_open_for {
        let d = duration(d);
        out.push(quote!(b.max_open_for = #d;));
    }
    out
}

pub(crate) fn dlt_handler(f: &ItemFn) -> syn::Result<TokenStream> {
    check_signature(f, "dlt_handler")?;
    let name = &f.sig.ident;
    let (item, service) = handler_parts(f);
    Ok(quote! {
        #item

        impl ::redrive::__private::DltHandlerFn for #name {
            fn into_service(self) -> ::redrive::__private::FnService {
                #service
            }
        }
    })
}
