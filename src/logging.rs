//! Log context for client sessions at no cost per statement.
//!
//! Every line a session logs carries its span, `session{id, client, user}`. Entering that
//! span on each poll of the session's task (`tracing::Instrument`) costs about 500
//! instructions per statement with the default subscriber (the registry's span stack, a
//! reference count, and the `EnvFilter`'s read lock, a line both threads write), while a
//! session logs almost never. So the span is entered only when it is needed:
//! [`in_session`] marks, for the duration of each poll (and of the drop), which span is the
//! session's in a thread-local cell; [`SessionSpans`], which wraps the process's subscriber,
//! enters that span around each event, each span created inside the session and each
//! "is this enabled" question that depends on the context, and answers `Span::current()`
//! with it. A poll costs two writes of a thread-local cell.
//!
//! What a line carries is the same as with `Instrument`: the JSON format's `span` object,
//! the text format's `session{id=… client=… user=…}` prefix, and filters on the span
//! (`SLUICE_LOG='[session{user=app}]=debug'`).
//!
//! A process that runs Sluice's server in-process with a subscriber of its own wraps it in
//! [`SessionSpans`] to get the same (tests/common does); without the wrapper a session's
//! lines carry no span.

use std::any::TypeId;
use std::cell::Cell;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::task::{Context, Poll};

use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Span, Subscriber};
use tracing_core::span::Current;

type Marked = Option<(NonZeroU64, &'static Metadata<'static>)>;

thread_local! {
    /// The span of the session being polled on this thread, if any.
    static SESSION: Cell<Marked> = const { Cell::new(None) };
}

/// Marks `span` as the session's span while `mark` lives; restores the previous mark.
struct Mark(Marked);

impl Mark {
    #[inline]
    fn set(to: Marked) -> Mark {
        Mark(SESSION.with(|c| c.replace(to)))
    }
}

impl Drop for Mark {
    #[inline]
    fn drop(&mut self) {
        SESSION.with(|c| c.set(self.0));
    }
}

/// The marked session span, if one is marked on this thread.
fn marked() -> Marked {
    SESSION.with(|c| c.get())
}

/// Runs `fut` as a session whose log lines carry `span` (see the module's comment).
pub fn in_session<F: Future>(fut: F, span: Span) -> InSession<F> {
    let mark = match (span.id(), span.metadata()) {
        (Some(id), Some(meta)) => Some((id.into_non_zero_u64(), meta)),
        _ => None,
    };
    InSession {
        inner: ManuallyDrop::new(fut),
        mark,
        _span: span,
    }
}

/// The future [`in_session`] returns.
pub struct InSession<F> {
    inner: ManuallyDrop<F>,
    mark: Marked,
    /// Keeps the span open as long as the session.
    _span: Span,
}

impl<F: Future> Future for InSession<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned: it is never moved out of `self` (only
        // polled in place here and dropped in place in `drop`); the other fields are not.
        let this = unsafe { self.get_unchecked_mut() };
        let _mark = Mark::set(this.mark);
        unsafe { Pin::new_unchecked(&mut *this.inner) }.poll(cx)
    }
}

impl<F> Drop for InSession<F> {
    fn drop(&mut self) {
        // What the session logs while it is torn down (an abort included) is in its span.
        let _mark = Mark::set(self.mark);
        // SAFETY: dropped once, in place, and never used again.
        unsafe { ManuallyDrop::drop(&mut self.inner) }
    }
}

/// The process's subscriber, with the marked session span entered where it matters.
pub struct SessionSpans<S> {
    inner: S,
}

impl<S: Subscriber> SessionSpans<S> {
    pub fn new(inner: S) -> Self {
        SessionSpans { inner }
    }

    /// Runs `f` with the marked session span entered, if one is marked and no span is
    /// entered already (a span entered inside the session descends from it: its context is
    /// the right one).
    #[inline]
    fn within<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        match marked() {
            Some(_) if self.inner.current_span().id().is_some() => f(&self.inner),
            None => f(&self.inner),
            Some((id, _)) => {
                let id = Id::from_non_zero_u64(id);
                self.inner.enter(&id);
                let r = f(&self.inner);
                self.inner.exit(&id);
                r
            }
        }
    }
}

impl<S: Subscriber> Subscriber for SessionSpans<S> {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber)
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.within(|s| s.enabled(metadata))
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.inner.max_level_hint()
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        if span.is_contextual() {
            self.within(|s| s.new_span(span))
        } else {
            self.inner.new_span(span)
        }
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        self.inner.record(span, values)
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.inner.record_follows_from(span, follows)
    }

    fn event_enabled(&self, _event: &Event<'_>) -> bool {
        // Asked in `event`, inside the session's span.
        true
    }

    fn event(&self, event: &Event<'_>) {
        if event.is_contextual() {
            self.within(|s| {
                if s.event_enabled(event) {
                    s.event(event)
                }
            })
        } else if self.inner.event_enabled(event) {
            self.inner.event(event)
        }
    }

    fn enter(&self, span: &Id) {
        self.inner.enter(span)
    }

    fn exit(&self, span: &Id) {
        self.inner.exit(span)
    }

    fn clone_span(&self, id: &Id) -> Id {
        self.inner.clone_span(id)
    }

    #[allow(deprecated)]
    fn drop_span(&self, id: Id) {
        self.inner.drop_span(id)
    }

    fn try_close(&self, id: Id) -> bool {
        self.inner.try_close(id)
    }

    fn current_span(&self) -> Current {
        let entered = self.inner.current_span();
        match marked() {
            Some((id, meta)) if entered.id().is_none() => {
                Current::new(Id::from_non_zero_u64(id), meta)
            }
            _ => entered,
        }
    }

    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            return Some(self as *const Self as *const ());
        }
        // SAFETY: forwarded as the caller asked; the inner subscriber upholds the contract.
        unsafe { self.inner.downcast_raw(id) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn subscriber(buf: &Buf, filter: &str) -> SessionSpans<impl Subscriber> {
        SessionSpans::new(
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_target(false)
                .with_ansi(false)
                .with_writer(buf.clone())
                .finish(),
        )
    }

    fn lines(buf: &Buf) -> Vec<String> {
        String::from_utf8(buf.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// A future that logs at each poll and is pending once.
    struct Logs(u32);

    impl Future for Logs {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.0 += 1;
            tracing::info!(poll = self.0, "polled");
            if self.0 == 1 {
                tracing::Span::current().record("user", tracing::field::display("app"));
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(())
        }
    }

    impl Drop for Logs {
        fn drop(&mut self) {
            tracing::info!("dropped");
        }
    }

    fn poll_twice<F: Future>(fut: F) {
        let mut fut = std::pin::pin!(fut);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(fut.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn a_sessions_lines_carry_its_span_and_others_do_not() {
        let buf = Buf::default();
        tracing::subscriber::with_default(subscriber(&buf, "info"), || {
            let span = tracing::info_span!("session", id = 7u64, user = tracing::field::Empty);
            poll_twice(in_session(Logs(0), span));
            tracing::info!("outside");
        });
        let lines = lines(&buf);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(
            lines[0].contains("session{id=7}: polled poll=1"),
            "{lines:?}"
        );
        // `Span::current().record` inside the session reached the session's span.
        assert!(
            lines[1].contains("session{id=7 user=app}: polled poll=2"),
            "{lines:?}"
        );
        assert!(
            lines[2].contains("session{id=7 user=app}: dropped"),
            "{lines:?}"
        );
        assert!(!lines[3].contains("session{"), "{lines:?}");
        assert!(lines[3].contains("outside"), "{lines:?}");
    }

    /// Logs from inside a span of its own, entered while the session runs.
    struct Nested;

    impl Future for Nested {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            let child = tracing::info_span!("child", step = 1u64);
            let _entered = child.enter();
            tracing::info!("inside");
            assert_eq!(
                tracing::Span::current().metadata().map(|m| m.name()),
                Some("child")
            );
            Poll::Ready(())
        }
    }

    #[test]
    fn a_span_entered_inside_the_session_is_its_child() {
        let buf = Buf::default();
        tracing::subscriber::with_default(subscriber(&buf, "info"), || {
            let span = tracing::info_span!("session", id = 3u64);
            let mut fut = std::pin::pin!(in_session(Nested, span));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(fut.as_mut().poll(&mut cx).is_ready());
        });
        let lines = lines(&buf);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("session{id=3}:child{step=1}: inside"),
            "{lines:?}"
        );
    }

    #[test]
    fn filters_on_the_sessions_span_see_it() {
        let buf = Buf::default();
        tracing::subscriber::with_default(subscriber(&buf, "warn,[session{id=7}]=info"), || {
            for id in [7u64, 8] {
                let span = tracing::info_span!("session", id, user = tracing::field::Empty);
                poll_twice(in_session(Logs(0), span));
            }
        });
        let lines = lines(&buf);
        // Session 7's three lines pass the span filter; session 8's are below `warn`.
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines.iter().all(|l| l.contains("session{id=7")),
            "{lines:?}"
        );
    }

    #[test]
    fn a_disabled_span_marks_nothing() {
        let buf = Buf::default();
        tracing::subscriber::with_default(subscriber(&buf, "info"), || {
            let span = tracing::debug_span!("session", id = 9u64);
            assert!(span.is_disabled());
            poll_twice(in_session(Logs(0), span));
        });
        let lines = lines(&buf);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines.iter().all(|l| !l.contains("session{")), "{lines:?}");
    }
}
