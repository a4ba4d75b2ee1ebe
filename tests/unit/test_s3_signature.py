"""AWS Signature Version 4 as kuva signs its multipart-upload requests
(storage.s3_uploads), checked against the worked examples of the S3 API reference
("Examples: Signature Calculations in AWS Signature Version 4", header
authentication: GET Bucket Lifecycle and GET Bucket (List Objects))."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kuva.storage.s3_uploads import Credentials, MultipartUploads, sign

EXAMPLE = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
WHEN = datetime(2013, 5, 24, tzinfo=UTC)
HOST = "examplebucket.s3.amazonaws.com"


@pytest.mark.parametrize(
    ("query", "signature"),
    [
        ({"lifecycle": ""}, "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
        (
            {"max-keys": "2", "prefix": "J"},
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        ),
    ],
)
def test_signature_of_the_reference_examples(query: dict[str, str], signature: str) -> None:
    headers = sign("GET", HOST, "/", query, EXAMPLE, "us-east-1", now=WHEN)
    assert headers["x-amz-date"] == "20130524T000000Z"
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        f"SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={signature}"
    )


def test_a_session_token_is_signed_and_sent() -> None:
    token = Credentials(EXAMPLE.access_key_id, EXAMPLE.secret_access_key, "token-1")
    headers = sign("GET", HOST, "/", {}, token, "us-east-1", now=WHEN)
    assert headers["x-amz-security-token"] == "token-1"
    assert (
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token"
        in (headers["authorization"])
    )


def test_settings_win_over_the_environment() -> None:
    environ = {
        "AWS_ACCESS_KEY_ID": "from-env",
        "AWS_SECRET_ACCESS_KEY": "env-secret",
        "AWS_SESSION_TOKEN": "env-token",
        "AWS_REGION": "eu-north-1",
    }
    from_env = MultipartUploads.from_settings("b", environ=environ)
    assert from_env is not None and from_env.region == "eu-north-1"
    assert from_env.credentials == Credentials("from-env", "env-secret", "env-token")
    configured = MultipartUploads.from_settings(
        "b", access_key_id="k", secret_access_key="s", region="eu-west-1", environ=environ
    )
    # A configured key pair does not take the environment's session token.
    assert configured is not None and configured.region == "eu-west-1"
    assert configured.credentials == Credentials("k", "s")
    assert MultipartUploads.from_settings("b", access_key_id="k", environ={}) is None
