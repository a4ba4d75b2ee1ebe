"""Incomplete multipart uploads in an S3 bucket: listed and aborted.

A process killed while it streamed a large blob into a multipart upload leaves the
upload open: its parts take space and no object shows them. obstore, kuva's S3
client (``storage.s3``), starts and completes uploads but has no call to list or
abort one it did not start, so this module owns those two requests:
ListMultipartUploads (``GET /?uploads&prefix=…``) and AbortMultipartUpload
(``DELETE /key?uploadId=…``), signed with AWS Signature Version 4 (the AWS S3 API
reference, "Authenticating Requests (AWS Signature Version 4)": header
authentication, signed payload). Both are rare (at start, per store), so the
standard library's HTTP client does.

The credentials are the same as the store's: ``[s3]`` settings, else
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``) from
the environment. Without static keys (credentials from an instance role, which
obstore fetches itself) the sweep is not done and says so: the bucket's lifecycle
rule (AbortIncompleteMultipartUpload, docs/deployment.md) does it instead.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

from lxml import etree

S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
TIMEOUT_SECONDS = 15.0


class S3RequestError(OSError):
    """The store refused a request or could not be reached."""


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str = ""


@dataclass(frozen=True)
class MultipartUpload:
    key: str
    upload_id: str
    initiated: datetime


def _signing_key(secret: str, date: str, region: str) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _encode(value: str, *, safe: str = "") -> str:
    """URI-encode as SigV4 asks: every byte but the unreserved characters."""
    return quote(value, safe="-_.~" + safe)


def sign(
    method: str,
    host: str,
    path: str,
    query: Mapping[str, str],
    credentials: Credentials,
    region: str,
    *,
    now: datetime | None = None,
    payload_sha256: str = EMPTY_SHA256,
) -> dict[str, str]:
    """The headers that authenticate ``method host path?query`` (SigV4): Host,
    X-Amz-Date, X-Amz-Content-Sha256, X-Amz-Security-Token when a session token is
    given, and Authorization. ``path`` is already URI-encoded."""
    when = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    date = when[:8]
    headers = {"host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": when}
    if credentials.session_token:
        headers["x-amz-security-token"] = credentials.session_token
    names = sorted(headers)
    canonical = "\n".join(
        (
            method,
            path,
            "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(query.items())),
            "".join(f"{name}:{headers[name].strip()}\n" for name in names),
            ";".join(names),
            payload_sha256,
        )
    )
    scope = f"{date}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ("AWS4-HMAC-SHA256", when, scope, hashlib.sha256(canonical.encode()).hexdigest())
    )
    signature = hmac.new(
        _signing_key(credentials.secret_access_key, date, region), to_sign.encode(), hashlib.sha256
    ).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return headers


class MultipartUploads:
    """The multipart uploads of one bucket: list and abort (``request`` signs and
    sends any other request of the S3 API on the bucket)."""

    def __init__(
        self,
        bucket: str,
        credentials: Credentials,
        *,
        endpoint_url: str = "",
        region: str = "",
        virtual_hosted: bool = False,
    ) -> None:
        self.region = region or "us-east-1"
        endpoint = endpoint_url or f"https://s3.{self.region}.amazonaws.com"
        parts = urlsplit(endpoint)
        self._https = parts.scheme == "https"
        self._host = parts.netloc
        self._base = parts.path.rstrip("/")
        if virtual_hosted:
            self._host = f"{bucket}.{self._host}"
        else:
            self._base += f"/{_encode(bucket)}"
        self.bucket = bucket
        self.credentials = credentials

    @classmethod
    def from_settings(
        cls,
        bucket: str,
        *,
        endpoint_url: str = "",
        region: str = "",
        access_key_id: str = "",
        secret_access_key: str = "",
        virtual_hosted: bool = False,
        environ: Mapping[str, str] = os.environ,
    ) -> MultipartUploads | None:
        """From the store's settings, the environment filling what they leave out
        (as obstore does); None without static credentials."""
        key = access_key_id or environ.get("AWS_ACCESS_KEY_ID", "")
        secret = secret_access_key or environ.get("AWS_SECRET_ACCESS_KEY", "")
        if not key or not secret:
            return None
        token = "" if access_key_id else environ.get("AWS_SESSION_TOKEN", "")
        return cls(
            bucket,
            Credentials(key, secret, token),
            endpoint_url=endpoint_url or environ.get("AWS_ENDPOINT_URL", ""),
            region=region or environ.get("AWS_REGION", "") or environ.get("AWS_DEFAULT_REGION", ""),
            virtual_hosted=virtual_hosted,
        )

    def request(self, method: str, key: str, query: Mapping[str, str], body: bytes = b"") -> bytes:
        path = f"{self._base}/{_encode(key, safe='/')}" if key else f"{self._base}/"
        headers = sign(
            method,
            self._host,
            path,
            query,
            self.credentials,
            self.region,
            payload_sha256=hashlib.sha256(body).hexdigest(),
        )
        target = path + (
            "?" + "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(query.items()))
            if query
            else ""
        )
        connection_class = (
            http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        )
        connection = connection_class(self._host, timeout=TIMEOUT_SECONDS)
        try:
            connection.request(method, target, body=body or None, headers=headers)
            response = connection.getresponse()
            content = response.read()
        except OSError as exc:
            raise S3RequestError(f"{method} s3://{self.bucket}/{key}: {exc}") from None
        finally:
            connection.close()
        if response.status >= 300:
            raise S3RequestError(
                f"{method} s3://{self.bucket}/{key}: HTTP {response.status} {_s3_error(content)}"
            )
        return content

    def list(self, prefix: str) -> Iterator[MultipartUpload]:
        """Every open upload of a key under ``prefix`` (page by page)."""
        markers: dict[str, str] = {}
        while True:
            root = etree.fromstring(
                self.request("GET", "", {"uploads": "", "prefix": prefix, **markers})
            )
            for upload in root.iter(f"{S3_NS}Upload"):
                yield MultipartUpload(
                    key=upload.findtext(f"{S3_NS}Key") or "",
                    upload_id=upload.findtext(f"{S3_NS}UploadId") or "",
                    initiated=_timestamp(upload.findtext(f"{S3_NS}Initiated") or ""),
                )
            if (root.findtext(f"{S3_NS}IsTruncated") or "").lower() != "true":
                return
            markers = {
                "key-marker": root.findtext(f"{S3_NS}NextKeyMarker") or "",
                "upload-id-marker": root.findtext(f"{S3_NS}NextUploadIdMarker") or "",
            }

    def abort(self, upload: MultipartUpload) -> None:
        """AbortMultipartUpload: its parts are freed."""
        self.request("DELETE", upload.key, {"uploadId": upload.upload_id})

    def sweep(self, prefix: str, *, older_than: float, now: datetime | None = None) -> int:
        """Abort the uploads under ``prefix`` started more than ``older_than``
        seconds ago (a younger one may be another node's, in progress); how many."""
        now = now or datetime.now(UTC)
        aborted = 0
        for upload in list(self.list(prefix)):
            if (now - upload.initiated).total_seconds() > older_than:
                self.abort(upload)
                aborted += 1
        return aborted


def _timestamp(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _s3_error(content: bytes) -> str:
    """The S3 error's code and message (never the request's credentials)."""
    try:
        root = etree.fromstring(content)
    except etree.XMLSyntaxError:
        return ""
    return " ".join(text for text in (root.findtext("Code"), root.findtext("Message")) if text)[
        :200
    ]
