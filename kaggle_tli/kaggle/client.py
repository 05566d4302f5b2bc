"""The one door to the official `kaggle` client: lazy import, authentication, errors, retries.

Why a door: `import kaggle` authenticates and prints a page of help to stdout when it finds no
credentials, creates a config directory, and (2.2.5) needs `six` without declaring it. So it is
imported only here, only when something is published, with its output captured. The client
signals failure in several ways (requests' HTTPError, ConnectionError, ValueError for a failed
upload, `exit(1)` during authentication, a response whose `status` is "error"); `call` turns each
into one of the exceptions below, whose message names the problem and the fix, and retries the
transient ones (5xx, 429, failed uploads) with exponential backoff.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# seconds before the first retry; doubled each time (2, 4, 8 s for retries=3)
BACKOFF_S = 2.0
_sleep = time.sleep  # tests replace it to record the delays instead of waiting

_CREDENTIALS_FIX = (
    "set KAGGLE_USERNAME and KAGGLE_KEY (in a Kaggle notebook, read them from Add-ons > Secrets with "
    "kaggle_secrets.UserSecretsClient().get_secret(...) into os.environ first), or save the kaggle.json "
    "from https://www.kaggle.com/settings (API > Create New Token) as ~/.kaggle/kaggle.json or "
    "$KAGGLE_CONFIG_DIR/kaggle.json"
)


class KaggleError(RuntimeError):
    """Talking to Kaggle failed; the message says why and what to do. `.output` holds what the
    client printed meanwhile (it is captured, not shown)."""

    output: str = ""


class KaggleAuthError(KaggleError):
    """Missing, rejected (401) or insufficient (403) credentials."""


class KaggleConflictError(KaggleError):
    """The slug is taken (409, or the client's "already in use")."""


class KaggleServerError(KaggleError):
    """Kaggle kept failing (5xx, 429, failed uploads) after every retry."""


class KaggleNetworkError(KaggleError):
    """Kaggle's API could not be reached at all."""


class KaggleNotFoundError(KaggleError):
    """404: no such dataset or notebook (or one you cannot see)."""


def find_credentials(*, kaggle_secrets: bool = True) -> str | None:
    """Where the client would find Kaggle credentials (a short description), or None when it would find none.

    Only variables and files are looked at (no `import kaggle`, no network), so a notebook can skip
    publishing cleanly, and say why, instead of failing inside an upload. In a Kaggle notebook, with
    `kaggle_secrets`, KAGGLE_USERNAME and KAGGLE_KEY stored under Add-ons > Secrets are first copied
    into the environment, where the client reads them.
    """
    if kaggle_secrets:
        _secrets_to_environ()
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "$KAGGLE_API_TOKEN"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "$KAGGLE_USERNAME and $KAGGLE_KEY"
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    for name in ("access_token", "kaggle.json"):
        if (config_dir / name).is_file():
            return str(config_dir / name)
    return None


def _secrets_to_environ() -> None:
    """Copy KAGGLE_USERNAME / KAGGLE_KEY from Kaggle's notebook secrets into os.environ (Kaggle only)."""
    names = [n for n in ("KAGGLE_USERNAME", "KAGGLE_KEY") if not os.environ.get(n)]
    if not names:
        return
    try:
        from kaggle_secrets import UserSecretsClient  # exists only inside Kaggle notebooks
    except ImportError:
        return
    secrets = UserSecretsClient()
    for name in names:
        try:
            value = secrets.get_secret(name)
        except Exception as e:  # kaggle_secrets documents no error type; a missing secret just means "none here"
            log.info("Kaggle secret %s is not available: %s", name, e)
            continue
        if value:
            os.environ[name] = value


def import_client() -> Any:
    """`kaggle.api.kaggle_api_extended.KaggleApi`, imported with its output captured."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as e:
        raise KaggleError(
            f"the official Kaggle client cannot be imported ({e}): pip install 'kaggle-tli[kaggle]' "
            "(it installs `kaggle` and `six`, which kaggle 2.2.5 needs but does not declare)"
        ) from e
    return KaggleApi


def authenticate() -> Any:
    """A fresh, authenticated `KaggleApi` (fresh: credentials set after `import kaggle` still count)."""
    KaggleApi = import_client()
    api = KaggleApi()
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            api.authenticate()
    except SystemExit as e:  # the client calls exit(1) when it finds no credentials at all
        raise _with_output(KaggleAuthError(f"no Kaggle credentials found: {_CREDENTIALS_FIX}"), buf) from e
    except Exception as e:  # an access token is checked over the network: that can fail too
        err = translate(e, "checking the Kaggle credentials")
        if err is None:
            raise
        raise _with_output(err, buf) from e
    return api


def call(what: str, fn: Callable[..., T], *args: Any, retries: int = 3, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` with the client's output captured and its errors translated.

    Transient failures are retried `retries` times, waiting BACKOFF_S * 2**attempt in between.
    `what` ("creating dataset alice/weights") goes into the messages.
    """
    for attempt in range(retries + 1):
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                return fn(*args, **kwargs)
        except Exception as e:
            err = translate(e, what)
            if err is None:  # not a Kaggle failure we know: a bug, let it surface as is
                raise
            _with_output(err, buf)
            if isinstance(err, KaggleServerError) and attempt < retries:
                delay = BACKOFF_S * 2**attempt
                log.warning("%s failed (%s); retry %d/%d in %.0f s", what, err, attempt + 1, retries, delay)
                _sleep(delay)
                continue
            if isinstance(err, KaggleServerError) and retries:
                err = KaggleServerError(f"{err} (gave up after {retries} retries with exponential backoff)")
                _with_output(err, buf)
            raise err from e
    raise AssertionError("unreachable")  # the loop either returns or raises


def translate(e: BaseException, what: str) -> KaggleError | None:
    """The KaggleError that explains `e`, or None when `e` is not a client/network failure."""
    import requests  # a dependency of the kaggle client, so present whenever it is

    if isinstance(e, requests.HTTPError):
        return _from_http_error(e, what)
    if isinstance(e, requests.ConnectionError | requests.Timeout):
        return KaggleNetworkError(
            f"cannot reach Kaggle's API while {what} ({type(e).__name__}): check the network; in a "
            "Kaggle notebook turn Internet on (Settings > Internet), or publish from a machine that "
            "has network access"
        )
    if isinstance(e, ValueError) and str(e).startswith("Upload unsuccessful"):
        # the client gives up on a file upload after its own retries; worth another round
        return KaggleServerError(f"{e} while {what}: Kaggle's upload storage refused the file")
    if isinstance(e, ValueError | KeyError):  # the client's own validation of the metadata
        return KaggleError(f"the Kaggle client refused the request while {what}: {e}")
    return None


def check_response(result: Any, what: str) -> None:
    """Raise when a create/version/push response reports an error in its body (not as HTTP)."""
    status = (getattr(result, "status", None) or "").lower()
    error = getattr(result, "error", None) or ""
    if status not in ("", "ok") or error:
        message = error or f"status {status!r}"
        if "already in use" in message.lower():
            raise KaggleConflictError(f"{message} (while {what}): {_CONFLICT_FIX}")
        raise KaggleError(f"Kaggle refused {what}: {message}")


_CONFLICT_FIX = (
    "choose another slug (dataset='you/another-slug' or model='you/another-model'), or, if it is yours, publish "
    "again to add a new version (a deleted dataset or model keeps its slug reserved for a while)"
)


def _from_http_error(e: Any, what: str) -> KaggleError:
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    body_code = None
    with contextlib.suppress(ValueError, AttributeError):
        body_code = response.json().get("code")  # the client also raises on a 200 whose body has code>=400
    code = body_code if isinstance(body_code, int) and body_code >= 400 else status
    detail = str(e)
    if code == 401:
        return KaggleAuthError(f"Kaggle rejected the credentials (401) while {what}: {_CREDENTIALS_FIX}")
    if code == 403:
        return KaggleAuthError(
            f"Kaggle refused access (403) while {what}: you can only write datasets and notebooks you own "
            "(or collaborate on); use an id under your own user name"
        )
    if code == 409:
        return KaggleConflictError(f"conflict (409) while {what}: {detail}; {_CONFLICT_FIX}")
    if code == 404:
        return KaggleNotFoundError(f"not found (404) while {what}: {detail}")
    if code == 429 or (isinstance(code, int) and code >= 500):
        return KaggleServerError(f"Kaggle answered {code} while {what}: {detail}; try again later")
    return KaggleError(f"Kaggle answered {code} while {what}: {detail}")


def _with_output(err: KaggleError, buf: io.StringIO) -> KaggleError:
    err.output = buf.getvalue()
    return err
