"""Object storage as a project writes it: the URL schemes mlinfra reaches, the
datastore type each one is, and the credentials each cloud takes. Checked by
`validate`; reached by mlinfra.data.objects."""

from __future__ import annotations

# url scheme -> (datastore type, fsspec package, the extra that installs it)
SCHEMES: dict[str, tuple[str, str, str]] = {
    "s3": ("s3", "s3fs", "mlinfra[s3]"),
    "gs": ("gcs", "gcsfs", "mlinfra[gcs]"),
    "gcs": ("gcs", "gcsfs", "mlinfra[gcs]"),
    "az": ("azure_blob", "adlfs", "mlinfra[azure]"),
    "abfs": ("azure_blob", "adlfs", "mlinfra[azure]"),
}
SCHEME_OF_TYPE = {"s3": "s3", "gcs": "gs", "azure_blob": "az"}

# credentials: key -> the fsspec argument it becomes, per datastore type
CREDENTIALS: dict[str, dict[str, str]] = {
    "s3": {"access_key_id": "key", "secret_access_key": "secret", "session_token": "token"},
    "gcs": {"token": "token"},
    "azure_blob": {"account_name": "account_name", "account_key": "account_key",
                   "connection_string": "connection_string", "sas_token": "sas_token"},
}
OPTION_FIELDS = ("endpoint_url", "region", "profile", "credentials")


def is_object_url(location: str) -> bool:
    return location.split("://", 1)[0] in SCHEMES if "://" in location else False


def scheme_problem(location: str) -> str | None:
    """What is wrong with an object URL as written, or None."""
    if "://" not in location:
        return None
    scheme, rest = location.split("://", 1)
    if scheme not in SCHEMES:
        return (f"'{scheme}://' is not an object store mlinfra reaches: use s3://, gs:// or "
                "az:// (or a folder)")
    if not rest.split("/", 1)[0]:
        return f"{location} names no bucket: write {scheme}://BUCKET/PREFIX"
    return None


def whole_secret(value: object) -> bool:
    """Whether a credential is written as one `${secret.NAME}` and nothing else."""
    import re

    return isinstance(value, str) and re.fullmatch(r"\$\{secret\.[A-Za-z_][A-Za-z0-9_]*\}",
                                                   value.strip()) is not None
