"""``s3://`` replica URLs, parsed the way Litestream v0.3.13 parses them.

``s3://BUCKET[.HOST-SUFFIX][:PORT]/PREFIX``: the host names the bucket and, for known
S3-compatible providers, the endpoint and region (Litestream's ``s3.ParseHost``):

=================================== ========================================== ==========
host                                endpoint                                   region
=================================== ========================================== ==========
``bucket``                          (AWS; region looked up later)              —
``bucket.localhost[:port]``         ``http://localhost[:port]``                us-east-1
``bucket.s3.REGION.backblazeb2.com`` ``https://s3.REGION.backblazeb2.com``      REGION
``bucket.s3.filebase.com``          ``https://s3.filebase.com``                —
``bucket.REGION.digitaloceanspaces.com`` ``https://REGION.digitaloceanspaces.com`` REGION
``bucket.s3.REGION.scw.cloud``      ``https://s3.REGION.scw.cloud``            REGION
``bucket.REGION.linodeobjects.com`` ``https://REGION.linodeobjects.com``       REGION
=================================== ========================================== ==========

Every non-AWS host means path-style addressing. Like Litestream v0.5, query parameters
``endpoint``, ``region``, ``forcePathStyle`` and ``skipVerify`` override what the host
implies (R2, MinIO, SeaweedFS and other servers on custom hosts); an ``endpoint`` implies
path style unless ``forcePathStyle=false``, and a scheme-less one gets ``http://`` for a
local or private host, ``https://`` otherwise. Unknown parameters are logged and ignored.
The region stays unset when the URL does not give one: the client then uses us-east-1
with an endpoint, or asks AWS where the bucket is (Litestream's rule).
"""

from __future__ import annotations

import ipaddress
import logging
import posixpath
import re
from urllib.parse import parse_qs, unquote, urlsplit

from litestream_fast.config import ReplicaConfig
from litestream_fast.errors import ConfigError

log = logging.getLogger("litestream_fast.config")

DEFAULT_REGION = "us-east-1"

# (regex, endpoint template, region group or None); the first group is the bucket.
_PROVIDERS: list[tuple[re.Pattern[str], str, bool]] = [
    (re.compile(r"^(?:(.+)\.)?s3\.([^.]+)\.backblazeb2\.com$"), "s3.{r}.backblazeb2.com", True),
    (re.compile(r"^(?:(.+)\.)?s3\.filebase\.com$"), "s3.filebase.com", False),
    (
        re.compile(r"^(?:(.+)\.)?([^.]+)\.digitaloceanspaces\.com$"),
        "{r}.digitaloceanspaces.com",
        True,
    ),
    (re.compile(r"^(?:(.+)\.)?s3\.([^.]+)\.scw\.cloud$"), "s3.{r}.scw.cloud", True),
    (re.compile(r"^(?:(.+)\.)?([^.]+)\.linodeobjects\.com$"), "{r}.linodeobjects.com", True),
]
_LOCALHOST_RE = re.compile(r"^(?:(.+)\.)?localhost$")

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def parse_host(host: str, port: str | None) -> tuple[str, str | None, str | None, bool]:
    """parse_host splits a URL host into (bucket, region, endpoint, force_path_style)."""
    m = _LOCALHOST_RE.match(host)
    if m:
        endpoint = "http://localhost" + (f":{port}" if port else "")
        return m.group(1) or "", DEFAULT_REGION, endpoint, True
    for regex, template, has_region in _PROVIDERS:
        m = regex.match(host)
        if m:
            region = m.group(2) if has_region else None
            endpoint = "https://" + template.format(r=region) + (f":{port}" if port else "")
            return m.group(1) or "", region, endpoint, True
    # AWS itself, virtual-hosted style; the port (if any) is dropped as Litestream does.
    return host, None, None, False


def is_local_host(host: str) -> bool:
    """is_local_host is true for loopback, private-network and ``.local(host)`` names."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith((".localhost", ".local")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_link_local


def ensure_endpoint_scheme(endpoint: str) -> str:
    """ensure_endpoint_scheme gives a scheme-less endpoint ``http://`` when it names a local
    or private host and ``https://`` otherwise (Litestream v0.5's EnsureEndpointScheme)."""
    endpoint = endpoint.strip()
    if not endpoint or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", endpoint):
        return endpoint
    host = urlsplit("//" + endpoint).hostname or ""
    return ("http://" if is_local_host(host) else "https://") + endpoint


def _bool_param(value: str, key: str, name: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"{key}: invalid boolean for {name}: {value!r}")


def parse_s3_url(url: str, key: str = "url") -> ReplicaConfig:
    """parse_s3_url turns ``s3://bucket/prefix[?endpoint=…&region=…]`` into a ReplicaConfig.

    ``path`` is the key prefix, cleaned, without leading or trailing slash ("" for the
    bucket root). Raises ConfigError naming ``key`` when the URL has no bucket or a bad
    query value.
    """
    try:
        u = urlsplit(url)
        port = u.port  # validates the port
    except ValueError as exc:
        raise ConfigError(f"{key}: invalid s3 URL {url!r}: {exc}") from None
    if u.scheme.lower() != "s3":
        raise ConfigError(f"{key}: not an s3 URL: {url}")
    # urlsplit lowercases .hostname; bucket names are lowercase anyway but keep them as given.
    netloc = u.netloc.rsplit("@", 1)[-1]
    host = netloc.rsplit(":", 1)[0] if port is not None else netloc
    bucket, region, endpoint, force_path_style = parse_host(host, str(port) if port else None)
    if not bucket:
        raise ConfigError(f"{key}: s3 URL has no bucket: {url}")

    prefix = posixpath.normpath("/" + unquote(u.path)).lstrip("/") if u.path else ""
    if prefix == ".":
        prefix = ""

    skip_verify = False
    params = parse_qs(u.query, keep_blank_values=True)
    for name, values in params.items():
        value = values[-1]
        if name == "endpoint":
            if value:
                endpoint = ensure_endpoint_scheme(value)
                force_path_style = True
        elif name == "region":
            region = value or region
        elif name == "forcePathStyle":
            force_path_style = _bool_param(value, key, name)
        elif name == "skipVerify":
            skip_verify = _bool_param(value, key, name)
        else:
            log.warning("%s: unknown s3 URL parameter %r (ignored)", key, name)
    # forcePathStyle=false must win over the endpoint's implied path style.
    if "forcePathStyle" in params:
        force_path_style = _bool_param(params["forcePathStyle"][-1], key, "forcePathStyle")

    return ReplicaConfig(
        type="s3",
        url=url,
        bucket=bucket,
        path=prefix,
        region=region,
        endpoint=endpoint,
        force_path_style=force_path_style,
        skip_verify=skip_verify,
    )
