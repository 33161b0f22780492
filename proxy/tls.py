"""TLS contexts built from the config (backend.tls and its files).

Built once at start and again on reload, so that a bad certificate file is a config error
named by its key, and each new link reuses the same context instead of reading the files.
"""

from __future__ import annotations

import ssl

from .config import BackendConfig, ConfigError


def backend_context(cfg: BackendConfig) -> ssl.SSLContext | None:
    """The context links to the server use, or None when TLS to it is disabled.

    Modes as the mysql client's --ssl-mode: 'preferred' and 'required' encrypt without checking
    who answers (a certificate file is only a client certificate then); 'verify_ca' checks the
    chain against ``tls_ca`` (or the system's CAs); 'verify_identity' also checks the host name.
    """
    mode = cfg.tls_mode
    if mode == "disabled":
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if mode in ("verify_ca", "verify_identity"):
        ctx.check_hostname = mode == "verify_identity"
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if cfg.tls_ca:
                ctx.load_verify_locations(cafile=cfg.tls_ca)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"backend.tls_ca: cannot load {cfg.tls_ca}: {_reason(e)}") from None
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.tls_cert and cfg.tls_key:
        try:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"backend.tls_cert: cannot load {cfg.tls_cert} with {cfg.tls_key}: {_reason(e)}") from None
    return ctx


def _reason(e: Exception) -> str:
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
