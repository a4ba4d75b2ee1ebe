"""Rendered resources and thumbnails over HTTP (PS3.18 10.4.1.1.5-6), SQLite and
PostgreSQL: instances stored with dcmtk's storescu come back as JPEG and PNG images
that Pillow reads; the window and viewport parameters change them as asked;
thumbnails are cached by content; every read is access-checked and a disclosure is
logged; bad parameters are JSON problems; CORS lets a viewer's origin in."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, func, select

from kuva.index.schema import disclosure
from tests.support.peers import LOOPBACK, dcmtk_available, storescu
from tests.support.server import KuvaServer
from tests.support.synthetic import make_ct_series, write_series

pytestmark = pytest.mark.skipif(not dcmtk_available(), reason="dcmtk not installed")

HOLDER = "1.2.246.10.12345678.10"
READER = "1.2.246.10.87654321.10"


def _stored(server: KuvaServer, tmp_path: Path, n: int = 3) -> list[Any]:
    datasets = make_ct_series(n, rows=64, cols=48)
    paths = write_series(datasets, tmp_path / "ct")
    result = storescu(paths, LOOPBACK, server.dicom_port, aet="STORESCU", aec="KUVA")
    assert result.returncode == 0, result.stdout + result.stderr
    return datasets


def _path(ds: Any) -> str:
    return (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def _image(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def test_rendered_instances_frames_and_thumbnails(
    kuva_server: Callable[..., KuvaServer], tmp_path: Path
) -> None:
    server = kuva_server()  # the embedded default: local clients read everything
    datasets = _stored(server, tmp_path)
    ds = datasets[1]
    with httpx.Client(base_url=server.http, timeout=30) as http:
        jpeg = http.get(f"{_path(ds)}/rendered")
        assert jpeg.headers["content-type"] == "image/jpeg"
        assert _image(jpeg).format == "JPEG" and _image(jpeg).size == (48, 64)
        png = http.get(f"{_path(ds)}/rendered", headers={"Accept": "image/png"})
        assert _image(png).format == "PNG"
        soft = np.asarray(
            _image(http.get(f"{_path(ds)}/rendered?window=40,400", headers={"Accept": "image/png"}))
        )
        bone = np.asarray(
            _image(
                http.get(f"{_path(ds)}/rendered?window=500,2000", headers={"Accept": "image/png"})
            )
        )
        assert soft.shape == (64, 48) and not np.array_equal(soft, bone)
        frame = http.get(f"{_path(ds)}/frames/1/rendered", headers={"Accept": "image/png"})
        assert _image(frame).tobytes() == _image(png).tobytes()
        fitted = _image(http.get(f"{_path(ds)}/rendered?viewport=24,24&quality=50"))
        assert fitted.size == (18, 24)
        study = f"/dicom-web/studies/{ds.StudyInstanceUID}"
        for thumbnail in (
            f"{study}/thumbnail",
            f"{study}/series/{ds.SeriesInstanceUID}/thumbnail",
            f"{_path(ds)}/thumbnail",
        ):
            image = _image(http.get(thumbnail))
            assert max(image.size) == 128 and image.format == "JPEG"
        # The study's thumbnail is its middle instance's, cached by content.
        assert (
            _image(http.get(f"{study}/thumbnail")).tobytes()
            == _image(http.get(f"{_path(ds)}/thumbnail")).tobytes()
        )
        assert list((server.data_dir / "cache" / "thumbnails").rglob("*"))

        problems = {
            f"{_path(ds)}/rendered?window=40": ("window", 400),
            f"{_path(ds)}/rendered?viewport=0,10": ("viewport", 400),
            f"{_path(ds)}/rendered?quality=0": ("quality", 400),
            f"{_path(ds)}/frames/1,2/rendered": ("frames", 400),
            f"{_path(ds)}/frames/2/rendered": (None, 404),
            f"{study}/series/1.2.3/thumbnail": (None, 404),
        }
        for url, (parameter, status) in problems.items():
            answer = http.get(url)
            assert answer.status_code == status, (url, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            if parameter:
                assert answer.json()["parameter"] == parameter
        refused = http.get(f"{_path(ds)}/rendered", headers={"Accept": "application/json"})
        assert refused.status_code == 406


def _organisations(
    kuva_server: Callable[..., KuvaServer], rules: list[dict[str, Any]]
) -> KuvaServer:
    """HTTP clients read for READER; STORESCU archives for HOLDER."""
    return kuva_server(
        organizations=[{"oid": HOLDER, "name": "Holder"}, {"oid": READER, "name": "Reader"}],
        nodes=[{"ae_title": "STORESCU", "organization": HOLDER}],
        extra={"http": {"organization": READER}},
        arrays={"access.rules": rules} if rules else {},
    )


def test_a_rendered_read_is_access_checked_and_disclosed(
    kuva_server: Callable[..., KuvaServer], database_url: str, tmp_path: Path
) -> None:
    closed = _organisations(kuva_server, [])
    ds = _stored(closed, tmp_path / "closed")[0]
    assert httpx.get(f"{closed.http}{_path(ds)}/rendered", timeout=30).status_code == 404
    assert (
        httpx.get(
            f"{closed.http}/dicom-web/studies/{ds.StudyInstanceUID}/thumbnail", timeout=30
        ).status_code
        == 404
    )

    open_ = _organisations(
        kuva_server, [{"register_holder": HOLDER, "recipient": READER, "basis": "hoitosuhde"}]
    )
    ds = _stored(open_, tmp_path / "open")[0]
    _image(httpx.get(f"{open_.http}{_path(ds)}/rendered", timeout=30))
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            logged = conn.execute(
                select(func.count())
                .select_from(disclosure)
                .where(
                    disclosure.c.study_instance_uid == str(ds.StudyInstanceUID),
                    disclosure.c.recipient_organization == READER,
                    disclosure.c.basis == "hoitosuhde",
                )
            ).scalar_one()
    finally:
        engine.dispose()
    assert logged >= 1


def test_cors_lets_a_viewer_origin_in(kuva_server: Callable[..., KuvaServer]) -> None:
    viewer = "https://viewer.example.fi"
    server = kuva_server(extra={"http": {"cors_origins": [viewer]}})
    preflight = httpx.options(
        f"{server.http}/dicom-web/studies",
        headers={"Origin": viewer, "Access-Control-Request-Method": "GET"},
        timeout=10,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == viewer
    other = httpx.get(
        f"{server.http}/dicom-web/studies", headers={"Origin": "https://other.example"}, timeout=10
    )
    assert "access-control-allow-origin" not in other.headers
