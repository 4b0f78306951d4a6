"""Run grants: signed by the coordinator's Ed25519 key, verified by the site over the exact bytes."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from fedecho.deploy.signing import (
    GRANT_KEY,
    SIGNATURE_KEY,
    RunGrant,
    SignatureError,
    generate_signing_keys,
    load_private_key,
    load_public_key,
    signed_run_config,
    verify_run_config,
)


@pytest.fixture()
def keys(tmp_path):
    private_path, public_path = generate_signing_keys(tmp_path / "signing")
    return load_private_key(private_path), load_public_key(public_path), private_path


def test_key_files_private_mode_and_never_overwritten(tmp_path, keys):
    _, _, private_path = keys
    assert stat.S_IMODE(os.stat(private_path).st_mode) == 0o600
    assert b"PRIVATE" not in (private_path.parent / "run_signing.pub").read_bytes()
    with pytest.raises(FileExistsError, match="never overwritten"):
        generate_signing_keys(private_path.parent)


def test_signed_run_config_verifies_and_round_trips(keys):
    private, public, _ = keys
    grant = RunGrant(experiment="federated", overrides="train.lr=0.01", resume=False, app_version="0.1.0")
    config = signed_run_config(private, grant)
    assert verify_run_config(public, config) == grant


def test_tampered_grant_unsigned_and_foreign_key_refused(tmp_path, keys):
    private, public, _ = keys
    config = signed_run_config(private, RunGrant(experiment="federated", overrides="train.lr=0.01"))
    tampered = dict(config, **{GRANT_KEY: config[GRANT_KEY].replace("0.01", "0.02")})
    with pytest.raises(SignatureError, match="does not verify"):
        verify_run_config(public, tampered)
    with pytest.raises(SignatureError, match="not signed"):
        verify_run_config(public, {"experiment": "federated"})
    with pytest.raises(SignatureError, match="differs from the signed grant"):
        verify_run_config(public, dict(config, overrides="data.root=/etc"))
    with pytest.raises(SignatureError, match="base64"):
        verify_run_config(public, dict(config, **{SIGNATURE_KEY: "not base64!"}))
    other, _ = generate_signing_keys(tmp_path / "other")
    foreign = signed_run_config(load_private_key(other), RunGrant(experiment="federated"))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_run_config(public, foreign)
    # a valid signature over a non-canonical spelling of the same grant is refused too
    spaced = config[GRANT_KEY].replace(",", ", ")
    signature = base64.b64encode(private.sign(spaced.encode())).decode()
    with pytest.raises(SignatureError, match="canonical"):
        verify_run_config(public, dict(config, **{GRANT_KEY: spaced, SIGNATURE_KEY: signature}))
