//! What the bucket tier needs of an object store, and OpenDAL behind it.
//!
//! The tier speaks to a [`Bucket`]: list names after a key, get (streamed),
//! put if absent, delete, head. [`OpendalBucket`] is that over an OpenDAL
//! operator: S3 for users ([`OpendalBucket::s3`]), OpenDAL's in-memory
//! service for unit tests (`OpendalBucket::memory`). No opendal type
//! leaves this module, so the rest of the daemon never depends on it, and
//! tests can stand in a bucket that is down or slow.
//!
//! S3 requests are signed by OpenDAL's credential chain (reqsign), which
//! reads the standard AWS environment and files (`AWS_ACCESS_KEY_ID`, …,
//! `AWS_PROFILE`, `~/.aws/credentials`, web identity, ECS, IMDS, which
//! `AWS_EC2_METADATA_DISABLED=true` turns off); warren's config holds no
//! credential. Custom endpoints are addressed path-style (OpenDAL's
//! default), so `http://127.0.0.1:port` servers work.
//!
//! "Put if absent" is a HEAD, then a PUT when nothing is there: bodies are
//! named by their content and manifests by a random suffix, so two writers
//! racing write the same bytes or different names, and a server without
//! conditional writes works the same.

use std::io;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt as _, TryStreamExt as _};
use opendal::{ErrorKind, Operator};

use crate::config::BucketUrl;

/// One object as a listing or a head shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    /// Its name under the prefix (e.g. `v1/manifests/…`).
    pub name: String,
    pub size: u64,
    /// When the server last wrote it, if it says.
    pub modified: Option<SystemTime>,
}

/// Whether [`Bucket::put_if_absent`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    Created,
    Existed,
}

/// A body as it arrives, in chunks.
pub(crate) type Body = BoxStream<'static, io::Result<Vec<u8>>>;

/// A request the bucket did not carry out.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The server refused these credentials the operation (403).
    #[error("the bucket refused {op} {name} (permission denied)")]
    Denied {
        op: &'static str,
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Down, unreachable, slow or answering errors.
    #[error("{op} {name} failed")]
    Failed {
        op: &'static str,
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What the tier needs of an object store; names are under the url's
/// prefix.
pub(crate) trait Bucket: Send + Sync + 'static {
    /// Up to `max` names under `dir` that sort after `after`, in order.
    fn list<'a>(
        &'a self,
        dir: &'a str,
        after: Option<&'a str>,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Listed>, Error>>;
    /// The object `name`, streamed; `None` if there is none.
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Body>, Error>>;
    /// Writes `body` as `name` unless something is there already.
    fn put_if_absent<'a>(
        &'a self,
        name: &'a str,
        body: Vec<u8>,
    ) -> BoxFuture<'a, Result<Put, Error>>;
    /// Removes `name` (nothing there is not an error).
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Error>>;
    /// The object `name` if it exists.
    fn head<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Listed>, Error>>;
}

/// Where the S3 bucket is, from the `[bucket]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct S3Location {
    pub bucket: String,
    /// Without leading or trailing slashes; may be empty.
    pub prefix: String,
    /// `None`: AWS's endpoint for the region.
    pub endpoint: Option<String>,
    pub region: String,
}

impl S3Location {
    /// The bucket of `url` at `endpoint`; the region is `region`, else the
    /// AWS environment's (`AWS_REGION`, `AWS_DEFAULT_REGION`), else
    /// `us-east-1`.
    pub(crate) fn new(
        url: &BucketUrl,
        endpoint: Option<&str>,
        region: Option<&str>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let region = region
            .map(str::to_owned)
            .or_else(|| var("AWS_REGION"))
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .filter(|region| !region.is_empty())
            .unwrap_or_else(|| "us-east-1".to_owned());
        Self {
            bucket: url.bucket.clone(),
            prefix: url.prefix.clone(),
            endpoint: endpoint.map(str::to_owned),
            region,
        }
    }

    /// From the `[bucket]` table and the process environment; `None` when
    /// no bucket is configured.
    pub(crate) fn from_config(bucket: &crate::config::Bucket) -> Option<Self> {
        let url = bucket.url.as_ref()?;
        Some(Self::new(
            url,
            bucket.endpoint.as_deref(),
            bucket.region.as_deref(),
            |name| std::env::var(name).ok(),
        ))
    }
}

/// A [`Bucket`] over an OpenDAL operator.
#[derive(Debug, Clone)]
pub(crate) struct OpendalBucket {
    operator: Operator,
}

/// How long one request's IO may stall before OpenDAL gives up on it;
/// the tier's own deadlines are shorter where a build waits.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

impl OpendalBucket {
    /// The S3 bucket at `location`, with credentials from the AWS
    /// environment and files.
    pub(crate) fn s3(location: &S3Location) -> Result<Self, Error> {
        opendal::install_default();
        let mut builder = opendal::services::S3::default()
            .bucket(&location.bucket)
            .root(&format!("/{}", location.prefix))
            .region(&location.region);
        if let Some(endpoint) = &location.endpoint {
            builder = builder.endpoint(endpoint);
        }
        let operator = Operator::new(builder)
            .map_err(|e| failed("opening", &location.bucket, e))?
            .layer(opendal::layers::TimeoutLayer::new().with_io_timeout(IO_TIMEOUT));
        Ok(Self { operator })
    }

    /// OpenDAL's in-memory service: a bucket for tests.
    #[cfg(test)]
    pub(crate) fn memory() -> Self {
        let operator = Operator::new(opendal::services::Memory::default())
            .expect("the memory service to need no configuration");
        Self { operator }
    }
}

fn failed(op: &'static str, name: &str, e: opendal::Error) -> Error {
    let name = name.to_owned();
    let source = Box::new(e);
    match source.kind() {
        ErrorKind::PermissionDenied => Error::Denied { op, name, source },
        _ => Error::Failed { op, name, source },
    }
}

fn to_system_time(time: opendal::raw::Timestamp) -> Option<SystemTime> {
    Some(SystemTime::from(time.into_inner()))
}

impl Bucket for OpendalBucket {
    fn list<'a>(
        &'a self,
        dir: &'a str,
        after: Option<&'a str>,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Listed>, Error>> {
        Box::pin(async move {
            let mut list = self.operator.lister_with(dir).recursive(true);
            if let Some(after) = after
                && self.operator.info().capability().list_with_start_after
            {
                list = list.start_after(after);
            }
            let lister = list.await.map_err(|e| failed("listing", dir, e))?;
            let mut found = Vec::new();
            let mut lister = lister.try_filter(|entry| {
                let keep =
                    entry.metadata().is_file() && after.is_none_or(|after| entry.path() > after);
                std::future::ready(keep)
            });
            while found.len() < max {
                match lister.next().await {
                    None => break,
                    Some(Err(e)) => return Err(failed("listing", dir, e)),
                    Some(Ok(entry)) => {
                        let metadata = entry.metadata();
                        found.push(Listed {
                            name: entry.path().to_owned(),
                            size: metadata.content_length(),
                            modified: metadata.last_modified().and_then(to_system_time),
                        });
                    }
                }
            }
            // Services that cannot start after a key list everything.
            found.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(found)
        })
    }

    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Body>, Error>> {
        Box::pin(async move {
            let reader = match self.operator.reader(name).await {
                Ok(reader) => reader,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(failed("reading", name, e)),
            };
            let stream = match reader.into_bytes_stream(..).await {
                Ok(stream) => stream,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(failed("reading", name, e)),
            };
            // Readers are lazy: a missing object shows on the first read.
            let mut stream = stream.map_ok(|bytes| bytes.to_vec());
            let first = match stream.next().await {
                None => return Ok(Some(futures::stream::empty().boxed())),
                Some(Err(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Some(Err(e)) => {
                    return Err(Error::Failed {
                        op: "reading",
                        name: name.to_owned(),
                        source: Box::new(e),
                    });
                }
                Some(Ok(first)) => first,
            };
            Ok(Some(
                futures::stream::once(std::future::ready(Ok(first)))
                    .chain(stream)
                    .boxed(),
            ))
        })
    }

    fn put_if_absent<'a>(
        &'a self,
        name: &'a str,
        body: Vec<u8>,
    ) -> BoxFuture<'a, Result<Put, Error>> {
        Box::pin(async move {
            if self.head(name).await?.is_some() {
                return Ok(Put::Existed);
            }
            self.operator
                .write(name, body)
                .await
                .map_err(|e| failed("writing", name, e))?;
            Ok(Put::Created)
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.operator
                .delete(name)
                .await
                .map_err(|e| failed("deleting", name, e))
        })
    }

    fn head<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Listed>, Error>> {
        Box::pin(async move {
            match self.operator.stat(name).await {
                Ok(metadata) => Ok(Some(Listed {
                    name: name.to_owned(),
                    size: metadata.content_length(),
                    modified: metadata.last_modified().and_then(to_system_time),
                })),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(failed("checking", name, e)),
            }
        })
    }
}

/// Reads a whole body of at most `max` bytes (a manifest): more is an
/// error, not an allocation.
pub(crate) async fn read_at_most(mut body: Body, max: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if bytes.len() + chunk.len() > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {max} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_is_given_else_the_environment_s_else_us_east_1() {
        let url = crate::config::value::parse_bucket_url("s3://team-gocache/warren/").unwrap();
        assert_eq!(
            (url.bucket.as_str(), url.prefix.as_str()),
            ("team-gocache", "warren")
        );
        let none = |_: &str| None;
        assert_eq!(S3Location::new(&url, None, None, none).region, "us-east-1");
        let env = |name: &str| (name == "AWS_REGION").then(|| "eu-west-3".to_owned());
        let location = S3Location::new(&url, Some("http://127.0.0.1:1"), None, env);
        assert_eq!(location.region, "eu-west-3");
        assert_eq!(location.endpoint.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(
            S3Location::new(&url, None, Some("ap-south-1"), env).region,
            "ap-south-1"
        );
        for bad in [
            "https://b/p",
            "s3://",
            "s3:///p",
            "s3://a b/p",
            "s3://UPPER",
        ] {
            assert!(
                crate::config::value::parse_bucket_url(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn memory_bucket_lists_after_a_key_and_puts_only_when_absent() {
        let bucket = OpendalBucket::memory();
        for name in [
            "v1/manifests/a",
            "v1/manifests/b",
            "v1/manifests/c",
            "v1/objects/x",
        ] {
            assert_eq!(
                bucket
                    .put_if_absent(name, name.as_bytes().to_vec())
                    .await
                    .unwrap(),
                Put::Created
            );
        }
        assert_eq!(
            bucket
                .put_if_absent("v1/objects/x", b"other".to_vec())
                .await
                .unwrap(),
            Put::Existed
        );
        let body = bucket.get("v1/objects/x").await.unwrap().unwrap();
        assert_eq!(read_at_most(body, 100).await.unwrap(), b"v1/objects/x");
        let body = bucket.get("v1/objects/x").await.unwrap().unwrap();
        assert!(read_at_most(body, 5).await.is_err());
        assert!(bucket.get("v1/objects/y").await.unwrap().is_none());

        let names = |listed: Vec<Listed>| listed.into_iter().map(|l| l.name).collect::<Vec<_>>();
        let all = bucket.list("v1/manifests/", None, 10).await.unwrap();
        assert_eq!(
            names(all),
            ["v1/manifests/a", "v1/manifests/b", "v1/manifests/c"]
        );
        let after = bucket
            .list("v1/manifests/", Some("v1/manifests/a"), 10)
            .await
            .unwrap();
        assert_eq!(names(after), ["v1/manifests/b", "v1/manifests/c"]);
        let one = bucket.list("v1/manifests/", None, 1).await.unwrap();
        assert_eq!(one.len(), 1);

        assert_eq!(bucket.head("v1/objects/x").await.unwrap().unwrap().size, 12);
        bucket.delete("v1/objects/x").await.unwrap();
        bucket.delete("v1/objects/x").await.unwrap();
        assert!(bucket.head("v1/objects/x").await.unwrap().is_none());
    }
}
