"""Object storage (S3, GCS, Azure Blob) through fsspec: where a datastore or a stack's
`artifacts:` lives when it is not a folder of this machine.

An `ObjectLocation` is a URL (`s3://bucket/prefix`) with the options of its cloud
(`endpoint_url`, `region`, `profile`, `credentials`). Credentials come from the options
(each one a `${secret.X}`, resolved when the location is opened) or, without them, from
the cloud's own chain (environment variables, profiles, workload identity). Every
failure of the storage service is turned into a `StorageError` that says what to do,
names the credential concerned and never shows its value.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from mlinfra.errors import MlinfraError
from mlinfra.spec.storage import CREDENTIALS, SCHEMES, scheme_problem

T = TypeVar("T")

class StorageError(MlinfraError):
    """Object storage refused or could not be reached; the message says which and what
    to do."""


class ObjectLocation:
    """A bucket and prefix on object storage, and how to reach it.

    Invariant: `url` has no trailing slash; `options` are as written (secrets still
    `${secret.X}` references), resolved only by `filesystem()`."""

    def __init__(self, url: str, options: Mapping[str, Any] | None = None,
                 owner: str = "") -> None:
        self.url = url.rstrip("/")
        self.scheme = self.url.split("://", 1)[0]
        self.kind = SCHEMES[self.scheme][0]
        self.options = dict(options or {})
        self.owner = owner  # how messages name who declared it: "datastore/main"
        self._fs: Any = None

    @property
    def path(self) -> str:
        """bucket/prefix, as fsspec names it."""
        return self.url.split("://", 1)[1]

    @property
    def bucket(self) -> str:
        return self.path.split("/", 1)[0]

    def key(self, *parts: str) -> str:
        """The fsspec path of a key under the prefix."""
        return "/".join([self.path, *(p.strip("/") for p in parts if p)])

    def url_of(self, key: str) -> str:
        return f"{self.scheme}://{key}"

    def filesystem(self) -> Any:
        """The fsspec filesystem, opened once; its package missing, or a secret unset,
        is a StorageError naming the extra or the secret."""
        if self._fs is None:
            self._fs = _open(self)
        return self._fs

    def call(self, what: str, fn: Callable[[], T],
             passing: tuple[type[BaseException], ...] = ()) -> T:
        """Run one storage operation; its failure becomes a StorageError that says
        `what` failed, where, and why in the user's terms. Errors of the `passing`
        types (a key not found, a key that exists) are the caller's to handle; a
        missing bucket is never passed."""
        try:
            return fn()
        except MlinfraError:
            raise
        except passing as err:
            if isinstance(err, FileNotFoundError) and "bucket" in str(err).lower():
                raise StorageError(explain(self, what, err)) from None
            raise
        except Exception as err:  # the clouds' SDKs raise many kinds; each is mapped
            raise StorageError(explain(self, what, err)) from None


def _open(loc: ObjectLocation) -> Any:
    _, package, extra = SCHEMES[loc.scheme]
    try:
        import fsspec
        fsspec.get_filesystem_class(loc.scheme)
    except ImportError:
        raise StorageError(f"{loc.url}: {package} is not installed: pip install "
                           f"'{extra}'") from None
    except ValueError as err:
        raise StorageError(f"{loc.url}: {err}") from None
    fs = fsspec.filesystem(loc.scheme, **fsspec_options(loc))
    if loc.kind == "s3":
        fs.retries = 2  # s3fs' own retries, around botocore's: together a few seconds
    return fs


def fsspec_options(loc: ObjectLocation) -> dict[str, Any]:
    """The keyword arguments of the fsspec filesystem: credentials resolved from the
    environment, retries and timeouts set so a dropped connection is retried."""
    from mlinfra.spec import sensitive

    creds = {}
    names = CREDENTIALS[loc.kind]
    for field, value in (loc.options.get("credentials") or {}).items():
        if field not in names:
            raise StorageError(f"{loc.owner or loc.url}: credentials.{field} is not a "
                               f"{loc.kind} credential: use {', '.join(names)}")
        creds[names[field]] = str(sensitive.resolve(value, {}))
    options: dict[str, Any] = {}
    endpoint = loc.options.get("endpoint_url")
    if loc.kind == "s3":
        options.update(creds)
        client: dict[str, Any] = {}
        if loc.options.get("region"):
            client["region_name"] = str(loc.options["region"])
        if endpoint:
            options["endpoint_url"] = str(endpoint)
        if loc.options.get("profile"):
            options["profile"] = str(loc.options["profile"])
        options["client_kwargs"] = client
        # NOTE: botocore's "standard" mode retries dropped connections and 5xx answers
        # with backoff; a PUT that failed half way never becomes an object on S3.
        # SigV4 also for pre-signed URLs (a run's transfer): only the host is signed.
        options["config_kwargs"] = {"retries": {"max_attempts": 4, "mode": "standard"},
                                    "connect_timeout": 5, "read_timeout": 60,
                                    "signature_version": "s3v4"}
    elif loc.kind == "gcs":
        options.update(creds)
        if endpoint:
            options["endpoint_url"] = str(endpoint)
        if loc.options.get("profile"):
            options["project"] = str(loc.options["profile"])
    else:
        options.update(creds)
        if endpoint:
            options["account_host"] = str(endpoint).split("://", 1)[-1]
    return options


def credential_names(loc: ObjectLocation) -> str:
    """How a message names where credentials came from, never their values."""
    from mlinfra.spec import sensitive

    written = loc.options.get("credentials") or {}
    if written:
        return ", ".join(
            f"credentials.{field}" + "".join(f" (${{secret.{name}}})" for ns, name in
                                             sensitive.all_references(value) if ns == "secret")
            for field, value in written.items())
    chain = {"s3": "the AWS chain: AWS_ACCESS_KEY_ID / AWS_PROFILE, ~/.aws, instance role",
             "gcs": "Google's default credentials: GOOGLE_APPLICATION_CREDENTIALS, "
                    "gcloud, workload identity",
             "azure_blob": "Azure's chain: AZURE_STORAGE_* variables, managed identity"}
    profile = loc.options.get("profile")
    return chain[loc.kind] + (f" (profile {profile})" if profile else "")


_AUTH_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden",
               "AuthorizationFailed", "AuthenticationFailed", "InvalidClientTokenId",
               "ExpiredToken", "403", "401")


def explain(loc: ObjectLocation, what: str, err: BaseException) -> str:
    """A storage failure in the user's terms: which location, which of missing bucket,
    credentials, unreachable; secret values never appear (only their names)."""
    where = f"{what} {loc.url}" + (f" ({loc.owner})" if loc.owner else "")
    name = type(err).__name__
    text = str(err)
    endpoint = loc.options.get("endpoint_url")
    if name in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError",
                "ClientAuthenticationError", "CredentialRetrievalError",
                "ProfileNotFound"):
        return (f"{where}: no usable credentials ({name}): mlinfra looked at "
                f"{credential_names(loc)}")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionError",
                "ClientConnectorError", "ServerDisconnectedError", "ReadTimeoutError",
                "ServerTimeoutError", "ConnectionRefusedError", "TimeoutError",
                "ServiceRequestError", "ClientOSError") or isinstance(err, ConnectionError):
        return (f"{where}: the object store cannot be reached"
                f"{f' at {endpoint}' if endpoint else ''} ({_first_line(text)}): check the "
                "network and `endpoint_url`, then try again")
    if isinstance(err, FileNotFoundError) and "bucket" in text.lower():
        return (f"{where}: bucket '{loc.bucket}' does not exist: create it, or point "
                f"{loc.owner or 'the location'} at one that does")
    if isinstance(err, PermissionError) or any(code in text for code in _AUTH_CODES):
        return (f"{where}: refused, the credentials are wrong or not allowed to "
                f"({_first_line(text)}); credentials used: {credential_names(loc)}")
    if isinstance(err, FileNotFoundError):
        return f"{where}: not found ({_first_line(text)})"
    return f"{where}: {_first_line(text) or name}"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:300]


def location_of(url: str, options: Mapping[str, Any] | None, owner: str) -> ObjectLocation:
    """An ObjectLocation, or a StorageError for a URL mlinfra cannot reach."""
    problem = scheme_problem(url)
    if problem:
        raise StorageError(f"{owner}: {problem}")
    return ObjectLocation(url, options, owner)


def environment_credentials(loc: ObjectLocation) -> dict[str, str]:
    """The variables a container needs to reach `loc` as this machine does: the
    credentials the options name (values resolved) as the SDK's own variables, and the
    endpoint. A container on the cloud's chain (instance role, workload identity) needs
    none."""
    from mlinfra.spec import sensitive

    env: dict[str, str] = {}
    creds = loc.options.get("credentials") or {}
    if loc.kind == "s3":
        names = {"access_key_id": "AWS_ACCESS_KEY_ID",
                 "secret_access_key": "AWS_SECRET_ACCESS_KEY",
                 "session_token": "AWS_SESSION_TOKEN"}
        for field, var in names.items():
            if field in creds:
                env[var] = str(sensitive.resolve(creds[field], {}))
            elif var in os.environ:
                env[var] = os.environ[var]
        if loc.options.get("region"):
            env["AWS_DEFAULT_REGION"] = str(loc.options["region"])
        if loc.options.get("endpoint_url"):
            env["AWS_ENDPOINT_URL"] = str(loc.options["endpoint_url"])
    return env
