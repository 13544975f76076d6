"""The connection schemas' identity pools (``additional_identities``) against the models, and as builders render them.

A builder draws the connection form from ``schemas/connections/<kind>.json``: the pool must render (every field with a
title, a description and examples; its secrets write-only, like the connection's own), and the schema must take and
refuse what the models take and refuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connector import schemas
from connector.connection_config import KINDS, parse_config
from connector.connection_fields import MAX_IDENTITIES, CertificateIdentity, ClientSecretIdentity
from connector.contract import form_problems
from connector.errors import ConnectionConfigError

POOLED = {"client_credentials": ClientSecretIdentity, "certificate": CertificateIdentity}
BASE = {
    "organization_url": "https://contoso.crm.dynamics.com",
    "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47",
    "client_id": "11111111-2222-3333-4444-555555555555",
}
OTHER = "22222222-3333-4444-5555-666666666666"


def test_only_the_app_registration_kinds_have_a_pool() -> None:
    pooled = {kind for kind, model in KINDS.items() if "additional_identities" in model.model_fields}
    assert pooled == set(POOLED)
    for kind in KINDS:
        schema = schemas.builtin_store().get(f"connections/{kind}.json")
        assert ("additional_identities" in schema["properties"]) == (kind in POOLED)


@pytest.mark.parametrize("kind", sorted(POOLED))
def test_an_identity_of_the_schema_is_the_model_s(kind: str) -> None:
    schema = schemas.builtin_store().get(f"connections/{kind}.json")["properties"]["additional_identities"]
    model = POOLED[kind].model_json_schema()
    assert set(schema["items"]["properties"]) == set(model["properties"])
    assert set(schema["items"].get("required", [])) == set(model.get("required", []))
    assert schema["maxItems"] == MAX_IDENTITIES - 1
    secret = "client_secret" if kind == "client_credentials" else "private_key_password"
    assert schema["items"]["properties"][secret]["$ref"].endswith("#/$defs/secret")  # write-only, like the top one


@pytest.mark.parametrize("kind", sorted(POOLED))
def test_the_pool_renders_as_a_form(kind: str) -> None:
    bundle = schemas.builtin_store().bundled(f"connections/{kind}.json")
    problems = form_problems(bundle)
    pool = [p for p in problems if p.startswith("$.additional_identities")]
    # the shared secret definition's {"env"}/{"file"} branches lack examples at the top level too: not the pool's
    assert [p for p in pool if "/oneOf[" not in p] == []
    assert len(pool) == len([p for p in problems if p.startswith(("$.client_secret/", "$.private_key_password/"))])


def test_a_certificate_pool_takes_a_pem_pair_or_a_pfx_per_identity(tmp_path: Path) -> None:
    for name in ("a.pem", "a.key", "b.pfx"):
        (tmp_path / name).write_bytes(b"-")
    settings: dict[str, Any] = {
        "kind": "certificate",
        **BASE,
        "certificate_file": "a.pem",
        "private_key_file": "a.key",
        "additional_identities": [{"client_id": OTHER, "pfx_file": "b.pfx", "private_key_password": "pw"}],
    }
    config = parse_config(settings, base_dir=tmp_path)
    own, other = config.identities()
    assert (own.client_id, own.certificate_file, own.pfx_file) == (BASE["client_id"], tmp_path / "a.pem", None)
    assert (other.client_id, other.pfx_file, other.certificate_file) == (OTHER, tmp_path / "b.pfx", None)
    assert other.private_key_password is not None and other.private_key_password.reveal() == "pw"
    assert other.token_url == own.token_url and other.additional_identities == ()

    settings["additional_identities"] = [{"client_id": OTHER, "certificate_file": "a.pem"}]  # no key, no pfx
    with pytest.raises(ConnectionConfigError) as info:
        parse_config(settings, base_dir=tmp_path)
    assert info.value.field == "additional_identities"

    settings["additional_identities"] = [{"client_id": OTHER, "pfx_file": "missing.pfx"}]
    with pytest.raises(ConnectionConfigError) as info:
        parse_config(settings, base_dir=tmp_path)
    assert info.value.field == "additional_identities"
    assert info.value.message.startswith("additional_identities[0].pfx_file ")


def test_a_pool_holds_at_most_sixteen_application_users() -> None:
    many = [{"client_id": f"{n:08x}-3333-4444-5555-666666666666", "client_secret": "s"} for n in range(MAX_IDENTITIES)]
    settings = {"kind": "client_credentials", **BASE, "client_secret": "s"}
    assert len(parse_config({**settings, "additional_identities": many[1:]}).identities()) == MAX_IDENTITIES
    with pytest.raises(ConnectionConfigError) as info:
        parse_config({**settings, "additional_identities": many})
    assert info.value.field == "additional_identities"
