//! The requesting side of one exchange: reading a peer's answer, and the
//! body that comes with it, into the store.
//!
//! The node's codec ([`crate::node::codec`]) hands each response stream
//! here with the request it answers ([`Outgoing`]: the books' [`Request`]
//! and the peer's link). For each action asked for (one, or a batch of
//! them; see [`crate::protocol::wire`]):
//!
//! 1. read the header by its deadline (the lookup's for the first; for each
//!    later one of a batch, a fresh one after the previous entry); "not
//!    found" and "found, not included" end there;
//! 2. refuse a body bigger than `max_body_size`, than the `max_inline` we
//!    asked for, or (replication) than the size the peer's catalog listed,
//!    before reading a byte of it;
//! 3. move the body into a sink from [`Bodies::begin`](crate::Bodies::begin):
//!    a small one whole, a bigger one in pieces through a blocking thread
//!    ([`body::receive`]), each piece at the pace the peer owes
//!    ([`crate::fetch::pace`]) and charged to the bytes in flight as it
//!    arrives ([`crate::fetch::in_flight`]);
//! 4. commit it: the sink stores it only if exactly `size` bytes arrived and
//!    their SHA-256 is the announced OutputID.
//!
//! A single request's outcome is its [`Answer`]. A batch reports each
//! entry's outcome to the books as soon as it is known
//! ([`Report::Entry`](crate::fetch::exchange::Report::Entry)), so a lookup
//! waiting for one entry of a batch is answered when that entry lands, not
//! when the batch ends; a batch stops at the first body that does not
//! verify. What the peer has promised so far is reported too, as it
//! changes ([`reports`]), for the books to judge a deadline by.
//!
//! A cancelled fetch (another peer won, or the lookup gave up) drops the
//! sink, which discards what it held. Failures of the stream are `io`
//! errors (a miss); a body that arrived but did not verify is an
//! [`Outcome::Rejected`] so the node can put that peer in cooldown. A
//! peer that fell behind on a body it owes fails the stream with an error
//! that says so ([`failure_of`]): it is put in cooldown too. A body we give
//! up on our side (no room in flight, our disk too slow) ends the stream
//! as well, since the rest of it is left unread, and blames nobody.

pub(crate) mod body;
pub(crate) mod reports;

use std::io;
use std::sync::Arc;

use futures::AsyncRead;
use tokio::time::Instant;

use self::body::{Body, Promises, Received, receive};
use self::reports::Reports;
use crate::fetch::agreement::{Agreeing, Claims};
use crate::fetch::exchange::{Answer, Failure, FetchId, Meta, Outcome, RejectReason, Request};
use crate::fetch::in_flight::InFlight;
use crate::fetch::link::LinkMeter;
use crate::fetch::pace::{Lateness, Pace};
use crate::fetch::promise::Promise;
use crate::ids::ActionId;
use crate::protocol::metered::{Metered, Traffic};
use crate::protocol::wire::{
    self, BATCH_VERSION, Encoding, FoundHeader, RequestHeader, ResponseHeader, WIRE_VERSION,
};
use crate::store::{Hint, Store};

/// One of our requests on its way: what the books asked for, and what
/// reading its answer takes besides. Only its [`header`](Self::header)
/// goes on the wire.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) request: Request,
    /// The peer's link: raw bodies' rates are recorded there.
    pub(crate) link: Arc<LinkMeter>,
    /// The answer's bytes are counted there as they arrive.
    pub(crate) traffic: Arc<Traffic>,
    /// Compressed bodies were asked for (see [`crate::fetch::link`]).
    pub(crate) compressed: bool,
}

impl Outgoing {
    /// The request's header, as it goes on the wire; an error for a
    /// request the books could not have made (no action, or a batch whose
    /// fetches or listed sizes do not match its actions).
    pub(crate) fn header(&self) -> io::Result<RequestHeader> {
        let request = &self.request;
        let Some((&action, also)) = request.actions.split_first() else {
            return Err(io::Error::other("a request for no action"));
        };
        let count = request.actions.len();
        if (request.batch.as_ref()).is_some_and(|batch| batch.len() != count) {
            return Err(io::Error::other("a batch needs one fetch per action"));
        }
        if (request.listed.as_ref()).is_some_and(|listed| listed.len() != count) {
            return Err(io::Error::other("one listed size per action, or none"));
        }
        Ok(RequestHeader {
            version: WIRE_VERSION,
            action,
            max_inline: request.max_inline,
            hints: request.hints,
            also: also.to_vec(),
            accept: if self.compressed {
                vec![Encoding::Zstd]
            } else {
                Vec::new()
            },
        })
    }
}

/// Reads answers into the store, within this node's limits.
#[derive(Clone)]
pub(crate) struct Requester {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) max_body_size: u64,
    pub(crate) transfer_rate: u64,
    /// The bytes of bodies on their way, shared by every stream.
    pub(crate) in_flight: Arc<InFlight>,
    /// With agreement on: what peers that built an entry said of it, and a
    /// body is committed only if its mapping is agreed.
    pub(crate) agreement: Option<Arc<Claims>>,
    /// Where the books are told how requests go.
    pub(crate) reports: Reports,
}

impl Requester {
    /// Reads the answer to `outgoing` from `io`, counting its bytes on the
    /// peer's link, until it ends or the request is cancelled.
    pub(crate) async fn read_response<T>(
        &self,
        io: &mut T,
        outgoing: &Outgoing,
    ) -> io::Result<Answer>
    where
        T: AsyncRead + Unpin + Send,
    {
        let cancel = outgoing.request.cancel.clone();
        let io = &mut Metered::new(io, &outgoing.traffic.received);
        let receive = async {
            match &outgoing.request.batch {
                None => self.receive(io, outgoing).await,
                Some(fetches) => self.receive_batch(io, outgoing, fetches).await,
            }
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(cancelled()),
            answer = receive => answer,
        }
    }

    /// Reads one header by `deadline`; keeps its hints (as many as asked).
    async fn read_header<T>(
        io: &mut T,
        request: &Request,
        deadline: Instant,
        next: &mut Vec<Hint>,
    ) -> io::Result<ResponseHeader>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut header: ResponseHeader = tokio::time::timeout_at(deadline, wire::read_frame(io))
            .await
            .map_err(|_| Lateness::Header.error())??;
        if !header.next.is_empty() {
            let actions = std::mem::take(&mut header.next);
            *next = wire::joined_hints(actions, &header.next_executables);
            next.truncate(request.hints.min(wire::MAX_HINTS) as usize);
        }
        Ok(header)
    }

    /// A single request's response.
    async fn receive<T>(&self, io: &mut T, outgoing: &Outgoing) -> io::Result<Answer>
    where
        T: AsyncRead + Unpin + Send,
    {
        let request = &outgoing.request;
        let mut next = Vec::new();
        let header = Self::read_header(io, request, request.header_deadline, &mut next).await?;
        let version = header.version;
        let outcome = match header.found {
            None => {
                next.clear(); // Hints only come with a hit.
                Outcome::NotFound
            }
            Some(found) => self.receive_found(io, outgoing, 0, found).await?,
        };
        Ok(Answer {
            outcome: Some(outcome),
            next,
            version,
        })
    }

    /// A batch's response: each entry in turn, each reported at once.
    async fn receive_batch<T>(
        &self,
        io: &mut T,
        outgoing: &Outgoing,
        fetches: &[FetchId],
    ) -> io::Result<Answer>
    where
        T: AsyncRead + Unpin + Send,
    {
        let request = &outgoing.request;
        let mut next = Vec::new();
        let mut version = WIRE_VERSION;
        let mut deadline = request.header_deadline;
        for (index, &fetch) in fetches.iter().enumerate() {
            let header = Self::read_header(io, request, deadline, &mut next).await?;
            if index == 0 {
                version = header.version;
            }
            let outcome = match header.found {
                None => Outcome::NotFound,
                Some(found) => self.receive_found(io, outgoing, index, found).await?,
            };
            let rejected = matches!(outcome, Outcome::Rejected { .. });
            if !self.reports.entry(fetch, outcome).await {
                return Err(cancelled()); // The node is stopping.
            }
            // A version-1 server answers the first action only; a peer that
            // sent a bad body is not read from any further.
            if rejected || version < BATCH_VERSION {
                break;
            }
            deadline = Instant::now() + request.header_timeout;
            // With the next entry already buffered, nothing here would wait,
            // and on the daemon's one thread a batch would hold up helpers'
            // lookups until it ended: let them in between entries.
            tokio::task::yield_now().await;
        }
        Ok(Answer {
            outcome: None,
            next,
            version,
        })
    }

    /// The rest of a "found" answer for the action at `index` of those
    /// asked for.
    async fn receive_found<T>(
        &self,
        io: &mut T,
        outgoing: &Outgoing,
        index: usize,
        found: FoundHeader,
    ) -> io::Result<Outcome>
    where
        T: AsyncRead + Unpin + Send,
    {
        let request = &outgoing.request;
        let Some(&action) = request.actions.get(index) else {
            return Err(io::Error::other("an answer for an action not asked for"));
        };
        let meta = Meta::from(&found);
        // Before a claim counts or a byte of the body is read: the peer's
        // own catalog said it is no bigger.
        let listed = (request.listed.as_ref()).and_then(|listed| listed.get(index));
        if let Some(&listed) = listed
            && found.size > listed
        {
            return Ok(Outcome::Rejected {
                reason: RejectReason::LargerThanListed {
                    size: found.size,
                    listed,
                },
                bytes: 0,
            });
        }
        if let Some(claims) = &self.agreement
            && found.built_here
        {
            claims.claim(
                action,
                request.peer,
                found.output,
                std::time::Instant::now(),
            );
        }
        if !found.body_included {
            if found.size > self.max_body_size {
                tracing::debug!(size = found.size, "peer holds a body over our size limit");
                return Ok(Outcome::NotFound);
            }
            self.reports.promise(request.key, Promise::Kept).await;
            return Ok(Outcome::Announced(meta));
        }
        if found.size > self.max_body_size {
            return Ok(Outcome::Rejected {
                reason: RejectReason::TooLarge {
                    size: found.size,
                    limit: self.max_body_size,
                },
                bytes: 0,
            });
        }
        if found.size > request.max_inline {
            return Ok(Outcome::Rejected {
                reason: RejectReason::Unrequested {
                    size: found.size,
                    max_inline: request.max_inline,
                },
                bytes: 0,
            });
        }
        let compressed = match found.encoding {
            Encoding::Raw => false,
            Encoding::Zstd if outgoing.compressed => true,
            // Nothing of it can be read: the stream is out of step.
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("body sent as {other:?}, which was not asked for"),
                ));
            }
        };
        let receiving = outgoing.link.receiving(compressed);
        let outcome = self
            .receive_body(io, request, action, meta, compressed)
            .await?;
        if let Outcome::Committed(_) = outcome {
            receiving.arrived(found.size);
        }
        Ok(outcome)
    }

    /// Streams `meta.size` body bytes into a store sink; see
    /// [`body::receive`].
    async fn receive_body<T>(
        &self,
        io: &mut T,
        request: &Request,
        action: ActionId,
        meta: Meta,
        compressed: bool,
    ) -> io::Result<Outcome>
    where
        T: AsyncRead + Unpin + Send,
    {
        let peer = request.peer;
        let store = self.store.clone();
        let agreement = self.agreement.clone();
        let begin = move || {
            let sink = store.begin(&action, &meta.output, meta.size, &peer)?;
            Ok(match agreement {
                None => sink,
                Some(claims) => Box::new(Agreeing {
                    sink,
                    claims,
                    store,
                    action,
                    output: meta.output,
                }),
            })
        };
        let body = Body {
            size: meta.size,
            compressed,
            pace: Pace::new(meta.size, self.transfer_rate),
            holding: self.in_flight.open(),
            promises: Promises {
                reports: &self.reports,
                request: request.key,
            },
        };
        let received = match receive(io, body, begin).await {
            // A chunk that is not its piece: a bad body, like one that
            // does not hash to its OutputID.
            Err(error) if compressed && error.kind() == io::ErrorKind::InvalidData => {
                return Ok(Outcome::Rejected {
                    reason: RejectReason::Undecodable(error.to_string()),
                    bytes: meta.size,
                });
            }
            received => received?,
        };
        Ok(match received {
            Received::Committed => Outcome::Committed(meta),
            Received::Refused(why) => Outcome::Rejected {
                reason: RejectReason::Refused(why),
                bytes: meta.size,
            },
            Received::Mismatch { actual } => Outcome::Rejected {
                reason: RejectReason::HashMismatch {
                    expected: meta.output,
                    actual,
                },
                bytes: meta.size,
            },
            Received::NotStored(error) => {
                // The store reports its own faults (warren's: once in a
                // while, with a count); a full store fails every body.
                tracing::debug!("cannot store a fetched body: {error}");
                Outcome::NotStored(meta)
            }
            Received::Unconfirmed => {
                tracing::debug!(%peer, %action, "fetched body not stored: no second source agrees");
                Outcome::NotStored(meta)
            }
        })
    }
}

/// What a failed fetch request's `error` means for the books.
pub(crate) fn failure_of(error: &io::Error) -> Failure {
    match Lateness::of(error) {
        Some(Lateness::Body) => Failure::Stalled,
        Some(Lateness::Header) => Failure::TimedOut,
        None => Failure::Ended,
    }
}

pub(crate) fn cancelled() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "fetch cancelled")
}

#[cfg(test)]
pub(crate) mod tests;
